/*
 * flash_attention.cu — fused multi-head self-attention on packed qkv
 * (B,T,3C) = [q|k|v], forward and backward, in the flash-attention manner:
 * keys and values go through shared memory a tile at a time, the softmax is
 * taken online (a running maximum and sum per query), and no (T,T) matrix
 * ever exists. The forward saves each query's log-sum-exp lse (B,NH,T); the
 * backward recomputes the probabilities from it.
 *
 * This is the fp32 version, one thread per query (forward, dq) or per key
 * (dk, dv) on CUDA cores: the reference the tensor-core kernels will be held
 * to, with memory linear in T. Head sizes 16, 32, 48 and 64 (a template
 * parameter, so a row lives in registers); other sizes are refused.
 * Shared memory stays under the 48 KiB of a static allocation at hs 64:
 * the forward 16 KiB (a K and a V tile), dq and dk/dv about 33 KiB (their
 * own q/do or k/v rows, padded to hs + 1 floats, and a tile of the other).
 *
 * Math, per batch row b and head h (q, k, v, o, do: (T,hs) slices):
 *   x_ts = (q_t . k_s) * scale over the visible keys s of query t (s <= t
 *   when causal, key_mask[b][s] != 0 when a mask is given), scale 1/sqrt(hs)
 *   lse_t = log sum_s exp(x_ts),  p_ts = exp(x_ts - lse_t),  o_t = sum_s p_ts v_s
 * Backward, with D_t = do_t . o_t (= sum_s p_ts (do_t . v_s)):
 *   dv_s = sum_t p_ts do_t,   ds_ts = p_ts (do_t . v_s - D_t) * scale
 *   dq_t = sum_s ds_ts k_s,   dk_s = sum_t ds_ts q_t
 * A query that sees no key has o = 0 and lse = -inf (and gives and gets no
 * gradient); a NaN score makes its query's o and lse NaN, as on the CPU.
 *
 * Determinism: every sum runs in a fixed order (over d within a dot product,
 * over the keys or queries in increasing order); dq and dk/dv come from
 * separate kernels, so nothing is accumulated by atomics: the same bits run
 * to run. Work: the forward and dq read K and V once per 64-query block, dk
 * and dv read Q and dO once per 32-key block.
 */
#include <cmath>

#include "heads.cuh"

namespace {

enum { FWD_Q = 64,    // queries (threads) per forward block
       DQ_Q = 32,     // queries (threads) per dq block: their q and do rows are in shared memory
       TILE = 32,     // keys or queries per shared-memory tile
       BWD_K = 32 };  // keys (threads) per dk/dv block

__device__ __forceinline__ bool visible(int t, int s, int T, int causal, const int32_t* mask) {
    return s < T && (!causal || s <= t) && (mask == nullptr || mask[s] != 0);
}

// Rows r0..r0+n-1 of one head's slice (rows ld floats apart, hs used) into
// shared rows of `pitch` floats; rows past T are zero.
template <int HS>
__device__ void load_rows(float* dst, int pitch, const float* src, size_t ld, int r0, int n, int T) {
    for (int i = threadIdx.x; i < n * HS; i += blockDim.x) {
        const int r = i / HS, d = i - r * HS;
        dst[r * pitch + d] = r0 + r < T ? src[(size_t)(r0 + r) * ld + d] : 0.0f;
    }
}

// ================================================================ forward

// grid (ceil(T/FWD_Q), B*NH), FWD_Q threads: thread = query t.
template <int HS>
__global__ void __launch_bounds__(FWD_Q) flash_forward_kernel(
        float* out, float* lse, const float* qkv, const int32_t* key_mask,
        int T, int C, int NH, int causal, float scale) {
    __shared__ float ks[TILE * HS], vs[TILE * HS];
    const int bh = blockIdx.y, b = bh / NH, h = bh - b * NH;
    const int t0 = blockIdx.x * FWD_Q, t = t0 + threadIdx.x;
    const size_t C3 = 3 * (size_t)C;
    const float* base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const int32_t* mask = key_mask ? key_mask + (size_t)b * T : nullptr;

    float q[HS], o[HS];
    #pragma unroll
    for (int d = 0; d < HS; d++) {
        q[d] = t < T ? base[(size_t)t * C3 + d] : 0.0f;
        o[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    bool bad = false;
    // causal: the block's last query sees keys up to it
    const int send = causal ? min(T, t0 + FWD_Q) : T;
    for (int s0 = 0; s0 < send; s0 += TILE) {
        __syncthreads();   // the previous tile is read
        load_rows<HS>(ks, HS, base + C, C3, s0, TILE, T);
        load_rows<HS>(vs, HS, base + 2 * (size_t)C, C3, s0, TILE, T);
        __syncthreads();
        if (t >= T) continue;
        float x[TILE];
        float tmax = -INFINITY;
        #pragma unroll 4
        for (int j = 0; j < TILE; j++) {
            x[j] = -INFINITY;
            if (!visible(t, s0 + j, T, causal, mask)) continue;
            float dot = 0.0f;
            #pragma unroll
            for (int d = 0; d < HS; d++) dot = fmaf(q[d], ks[j * HS + d], dot);
            const float xs = __fmul_rn(dot, scale);
            bad |= isnan(xs);
            x[j] = xs;
            tmax = fmaxf(tmax, xs);
        }
        if (tmax > m) {   // a new maximum: rescale what was summed so far
            const float c = expf(m - tmax);
            l *= c;
            #pragma unroll
            for (int d = 0; d < HS; d++) o[d] *= c;
            m = tmax;
        }
        #pragma unroll 4
        for (int j = 0; j < TILE; j++) {
            if (!(x[j] > -INFINITY)) continue;
            const float p = expf(x[j] - m);
            l += p;
            #pragma unroll
            for (int d = 0; d < HS; d++) o[d] = fmaf(p, vs[j * HS + d], o[d]);
        }
    }
    if (t >= T) return;
    float* orow = out + ((size_t)b * T + t) * C + (size_t)h * HS;
    float* lrow = lse + (size_t)bh * T + t;
    if (bad) {
        #pragma unroll
        for (int d = 0; d < HS; d++) orow[d] = NAN;
        *lrow = NAN;
    } else if (l == 0.0f) {     // no visible key
        #pragma unroll
        for (int d = 0; d < HS; d++) orow[d] = 0.0f;
        *lrow = -INFINITY;
    } else {
        const float inv = 1.0f / l;
        #pragma unroll
        for (int d = 0; d < HS; d++) orow[d] = o[d] * inv;
        *lrow = m + logf(l);
    }
}

// ================================================================ backward

// D (B*NH*T) = do_t . o_t per query; one thread per (b, h, t).
__global__ void flash_delta_kernel(float* delta, const float* dout, const float* out,
                                   int B, int T, int C, int NH) {
    const size_t n = (size_t)B * NH * T;
    const int hs = C / NH;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t bh = i / (size_t)T, t = i - bh * (size_t)T;
        const size_t b = bh / (size_t)NH, h = bh - b * (size_t)NH;
        const size_t off = (b * T + t) * (size_t)C + h * (size_t)hs;
        float s = 0.0f;
        for (int d = 0; d < hs; d++) s = fmaf(dout[off + d], out[off + d], s);
        delta[i] = s;
    }
}

// dq: grid (ceil(T/DQ_Q), B*NH), DQ_Q threads: thread = query t, its q and
// do rows in shared memory (padded rows: each thread reads its own).
template <int HS>
__global__ void __launch_bounds__(DQ_Q) flash_dq_kernel(
        float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
        const int32_t* key_mask, int T, int C, int NH, int causal, float scale, int accumulate) {
    __shared__ float ks[TILE * HS], vs[TILE * HS];
    __shared__ float qs[DQ_Q * (HS + 1)], gs[DQ_Q * (HS + 1)];
    const int bh = blockIdx.y, b = bh / NH, h = bh - b * NH;
    const int t0 = blockIdx.x * DQ_Q, t = t0 + threadIdx.x;
    const size_t C3 = 3 * (size_t)C;
    const float* base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const int32_t* mask = key_mask ? key_mask + (size_t)b * T : nullptr;
    load_rows<HS>(qs, HS + 1, base, C3, t0, DQ_Q, T);
    load_rows<HS>(gs, HS + 1, dout + (size_t)b * T * C + (size_t)h * HS, (size_t)C, t0, DQ_Q, T);
    const float* q = qs + threadIdx.x * (HS + 1);
    const float* g = gs + threadIdx.x * (HS + 1);
    const float L = t < T ? lse[(size_t)bh * T + t] : 0.0f;
    const float Dt = t < T ? delta[(size_t)bh * T + t] : 0.0f;
    float dq[HS];
    #pragma unroll
    for (int d = 0; d < HS; d++) dq[d] = 0.0f;
    const int send = causal ? min(T, t0 + DQ_Q) : T;
    for (int s0 = 0; s0 < send; s0 += TILE) {
        __syncthreads();
        load_rows<HS>(ks, HS, base + C, C3, s0, TILE, T);
        load_rows<HS>(vs, HS, base + 2 * (size_t)C, C3, s0, TILE, T);
        __syncthreads();
        if (t >= T) continue;
        for (int j = 0; j < TILE; j++) {
            if (!visible(t, s0 + j, T, causal, mask)) continue;
            float x = 0.0f, dp = 0.0f;
            #pragma unroll
            for (int d = 0; d < HS; d++) {
                x = fmaf(q[d], ks[j * HS + d], x);
                dp = fmaf(g[d], vs[j * HS + d], dp);
            }
            const float p = expf(__fmul_rn(x, scale) - L);
            const float ds = p * (dp - Dt) * scale;
            #pragma unroll
            for (int d = 0; d < HS; d++) dq[d] = fmaf(ds, ks[j * HS + d], dq[d]);
        }
    }
    if (t >= T) return;
    float* row = dqkv + ((size_t)b * T + t) * C3 + (size_t)h * HS;
    #pragma unroll
    for (int d = 0; d < HS; d++) row[d] = accumulate ? row[d] + dq[d] : dq[d];
}

// dk, dv: grid (ceil(T/BWD_K), B*NH), BWD_K threads: thread = key s, its k
// and v rows in shared memory; the queries come a tile at a time.
template <int HS>
__global__ void __launch_bounds__(BWD_K) flash_dkv_kernel(
        float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
        const int32_t* key_mask, int T, int C, int NH, int causal, float scale, int accumulate) {
    __shared__ float kown[BWD_K * (HS + 1)], vown[BWD_K * (HS + 1)];
    __shared__ float qs[TILE * HS], gs[TILE * HS], ls[TILE], dls[TILE];
    const int bh = blockIdx.y, b = bh / NH, h = bh - b * NH;
    const int s0 = blockIdx.x * BWD_K, s = s0 + threadIdx.x;
    const size_t C3 = 3 * (size_t)C;
    const float* base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const float* gbase = dout + (size_t)b * T * C + (size_t)h * HS;
    const int32_t* mask = key_mask ? key_mask + (size_t)b * T : nullptr;
    load_rows<HS>(kown, HS + 1, base + C, C3, s0, BWD_K, T);
    load_rows<HS>(vown, HS + 1, base + 2 * (size_t)C, C3, s0, BWD_K, T);
    const float* k = kown + threadIdx.x * (HS + 1);
    const float* v = vown + threadIdx.x * (HS + 1);
    const bool live = s < T && (mask == nullptr || mask[s] != 0);
    float dk[HS], dv[HS];
    #pragma unroll
    for (int d = 0; d < HS; d++) dk[d] = dv[d] = 0.0f;
    // causal: only queries t >= s see key s
    for (int q0 = causal ? s0 : 0; q0 < T; q0 += TILE) {
        __syncthreads();
        load_rows<HS>(qs, HS, base, C3, q0, TILE, T);
        load_rows<HS>(gs, HS, gbase, (size_t)C, q0, TILE, T);
        for (int i = threadIdx.x; i < TILE; i += blockDim.x) {
            ls[i] = q0 + i < T ? lse[(size_t)bh * T + q0 + i] : 0.0f;
            dls[i] = q0 + i < T ? delta[(size_t)bh * T + q0 + i] : 0.0f;
        }
        __syncthreads();
        if (!live) continue;
        for (int i = 0; i < TILE; i++) {
            const int t = q0 + i;
            if (t >= T || (causal && s > t)) continue;
            float x = 0.0f, dp = 0.0f;
            #pragma unroll
            for (int d = 0; d < HS; d++) {
                x = fmaf(qs[i * HS + d], k[d], x);
                dp = fmaf(gs[i * HS + d], v[d], dp);
            }
            const float p = expf(__fmul_rn(x, scale) - ls[i]);
            const float ds = p * (dp - dls[i]) * scale;
            #pragma unroll
            for (int d = 0; d < HS; d++) {
                dv[d] = fmaf(p, gs[i * HS + d], dv[d]);
                dk[d] = fmaf(ds, qs[i * HS + d], dk[d]);
            }
        }
    }
    if (s >= T) return;
    float* krow = dqkv + ((size_t)b * T + s) * C3 + C + (size_t)h * HS;
    float* vrow = krow + C;
    #pragma unroll
    for (int d = 0; d < HS; d++) {
        krow[d] = accumulate ? krow[d] + dk[d] : dk[d];
        vrow[d] = accumulate ? vrow[d] + dv[d] : dv[d];
    }
}

// Failures are recorded under the public function's name (func), as in checks.c.
#undef MG_FUNC
#define MG_FUNC func
mg_status check_flash(const char* func, const void* a, const void* b, const void* c,
                      int B, int T, int C, int NH) {
    MG_CHECK(a && b && c, MG_ERR_NULL, "a required pointer is NULL");
    MG_CHECK_POS(B); MG_CHECK_POS(T); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    const int hs = C / NH;
    MG_CHECK(hs == 16 || hs == 32 || hs == 48 || hs == 64, MG_ERR_SHAPE,
             "head size %d: the fused attention takes 16, 32, 48 or 64", hs);
    MG_CHECK((size_t)B * (size_t)NH <= 65535u, MG_ERR_SHAPE, "B*NH=%zu heads exceed the grid's 65535",
             (size_t)B * (size_t)NH);
    return MG_OK;
}
#undef MG_FUNC
#define MG_FUNC __func__

template <int HS>
mg_status launch_forward(float* out, float* lse, const float* qkv, const int32_t* key_mask,
                         int B, int T, int C, int NH, int causal) {
    const dim3 grid(cuda_grid((size_t)T, FWD_Q), (unsigned)(B * NH));
    flash_forward_kernel<HS><<<grid, FWD_Q, 0, cuda_stream()>>>(out, lse, qkv, key_mask, T, C, NH,
                                                                causal, 1.0f / sqrtf((float)HS));
    MG_LAUNCH_CHECK();
    return MG_OK;
}

template <int HS>
mg_status launch_backward(float* dqkv, const float* dout, const float* qkv, const float* lse,
                          const float* delta, const int32_t* key_mask,
                          int B, int T, int C, int NH, int causal, int accumulate) {
    const float scale = 1.0f / sqrtf((float)HS);
    const dim3 gq(cuda_grid((size_t)T, DQ_Q), (unsigned)(B * NH));
    flash_dq_kernel<HS><<<gq, DQ_Q, 0, cuda_stream()>>>(dqkv, dout, qkv, lse, delta, key_mask, T, C,
                                                         NH, causal, scale, accumulate);
    MG_LAUNCH_CHECK();
    const dim3 gk(cuda_grid((size_t)T, BWD_K), (unsigned)(B * NH));
    flash_dkv_kernel<HS><<<gk, BWD_K, 0, cuda_stream()>>>(dqkv, dout, qkv, lse, delta, key_mask, T, C,
                                                          NH, causal, scale, accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

}  // namespace

extern "C" mg_status mg_cuda_flash_attention_forward(float* out, float* lse, const float* qkv,
                                                     const int32_t* key_mask,
                                                     int B, int T, int C, int NH, int causal) {
    MG_TRY(check_flash(__func__, out, lse, qkv, B, T, C, NH));
    switch (C / NH) {
        case 16: return launch_forward<16>(out, lse, qkv, key_mask, B, T, C, NH, causal);
        case 32: return launch_forward<32>(out, lse, qkv, key_mask, B, T, C, NH, causal);
        case 48: return launch_forward<48>(out, lse, qkv, key_mask, B, T, C, NH, causal);
        default: return launch_forward<64>(out, lse, qkv, key_mask, B, T, C, NH, causal);
    }
}

extern "C" mg_status mg_cuda_flash_attention_backward(float* dqkv, const float* dout,
                                                      const float* out, const float* lse,
                                                      const float* qkv, const int32_t* key_mask,
                                                      int B, int T, int C, int NH, int causal,
                                                      int accumulate) {
    MG_TRY(check_flash(__func__, dqkv, dout, qkv, B, T, C, NH));
    MG_CHECK(out && lse, MG_ERR_NULL, "out or lse is NULL");
    const size_t n = (size_t)B * NH * T;
    void* ws;
    MG_TRY(cuda_scratch(&ws, n * sizeof(float)));
    float* delta = (float*)ws;
    flash_delta_kernel<<<elementwise_grid(n, 256), 256, 0, cuda_stream()>>>(delta, dout, out, B, T, C, NH);
    MG_LAUNCH_CHECK();
    switch (C / NH) {
        case 16: return launch_backward<16>(dqkv, dout, qkv, lse, delta, key_mask, B, T, C, NH, causal, accumulate);
        case 32: return launch_backward<32>(dqkv, dout, qkv, lse, delta, key_mask, B, T, C, NH, causal, accumulate);
        case 48: return launch_backward<48>(dqkv, dout, qkv, lse, delta, key_mask, B, T, C, NH, causal, accumulate);
        default: return launch_backward<64>(dqkv, dout, qkv, lse, delta, key_mask, B, T, C, NH, causal, accumulate);
    }
}
