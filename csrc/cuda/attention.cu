/*
 * attention.cu — the CUDA twin of attention.c: multi-head self-attention on
 * packed qkv (B,T,3C) = [q|k|v]: forward, backward and a KV-cache decoding
 * step. This first version materialises the (T,T) scores of every head.
 *
 * Math, per batch row b and head h (q, k, v, o are (T,hs) slices):
 *   S = q k^T,  P = softmax over the visible keys of (S * scale), scale = 1/sqrt(hs)
 *   o = P v
 * Visible: s <= t when causal, and key_mask[b][s] != 0 when a mask is given.
 * Invisible keys get P = 0; a query that sees no key gets P = 0 and o = 0.
 * Backward (dS folds in the scale, as attention.c does):
 *   dP = do v^T,  dv = P^T do,  dS = P * (dP - rowsum(P * dP)) * scale,
 *   dq = dS k,    dk = dS^T q
 *
 * Layout of the work: the heads are first split out of the strided qkv into
 * contiguous (B,NH,T,hs) buffers carved from cuda_scratch (taken once per
 * call), so that every product is ONE strided-batched cuBLAS GEMM over the
 * B*NH heads (cublasGemmStridedBatchedEx, fp32 data, the compute type of the
 * current mg_math_mode). The softmax and its backward are a warp per row of
 * (T) entries; the results go back to (B,T,C) / (B,T,3C) by a merge kernel.
 * Scratch, in aligned pieces of n = B*T*C floats:
 *   forward  3 pieces: q, k, v (y, the per-head output, reuses q's piece);
 *   backward 5 pieces: q, k, v, do, dv (dq reuses do's piece, dk v's: both
 *            are dead once dP and dv are computed; one stream orders it).
 * The backward's dP and dS live in the caller's `scratch` (B,NH,T,T).
 * Decode is one block per (b, h, new query) over the cache, scores in shared
 * memory (or, for very long caches, one block per (b, h) walking its queries
 * in order with the scores in the caller's scratch row, as attention.c does).
 *
 * Numerical notes (fp32 path, mirrors attention.c's portable code):
 *   - the scale multiplies the raw score with __fmul_rn, so it is rounded on
 *     its own and never fused into the max subtraction (attention.c stores
 *     the scaled score before it subtracts the max); exp is expf, not __expf;
 *   - softmax subtracts the row max of the visible scores; a row with no
 *     visible key (max -inf) is written as zeros, not NaN; a NaN among the
 *     visible scores makes the whole visible row NaN, as on the CPU;
 *   - every sum (softmax sums, the backward's row dot, decode's dot products
 *     and P v) runs in a fixed order: lane-strided partials, then a fixed
 *     shuffle tree whose lane-0 result is broadcast (an xor butterfly would
 *     give each lane its own rounding). No atomics anywhere.
 *   - the products are cuBLAS's, so CPU parity is to rounding (~1e-6
 *     relative), and run-to-run bits are fixed (one stream, fixed workspace).
 * Gotchas: causal products are computed dense (the upper triangle is wasted
 * work, then overwritten with zeros); cuBLAS batch counts and leading
 * dimensions are int (B*NH, T, hs), strides are 64-bit. Kernels are static
 * (separately compiled .cu files link into one module).
 */
#include <cmath>

#include "heads.cuh"

// ---------------------------------------------------------------- helpers

// Block-wide sum and max (blockDim.x a multiple of 32); every thread gets the
// result. red: 32 floats of shared memory. Both end on a barrier, so red may
// be reused at once.
static __device__ float block_total(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = warp_sum(lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0f);
    __syncthreads();
    return v;
}

static __device__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = warp_max(lane < (int)(blockDim.x >> 5) ? red[lane] : -INFINITY);
    __syncthreads();
    return v;
}

// ================================================================ forward

// att (B,NH,T,T): on entry the raw scores q.k, on exit the probabilities.
// One warp per row r = (b*NH + h)*T + t; the visible keys are s < n (n = t+1
// when causal, else T) with key_mask[b][s] != 0 (key_mask (B,T) or NULL).
// Everything right of n is set to 0; masked keys come out as exp(-inf) = 0.
static __global__ void softmax_forward_kernel(float* att, const int32_t* key_mask,
                                              size_t rows, int T, int NH, int causal,
                                              float scale) {
    const size_t r = (size_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;   // the whole warp leaves together; no block barrier below
    const size_t bh = r / (size_t)T;
    const int t = (int)(r - bh * (size_t)T);
    const int32_t* mask = key_mask ? key_mask + (bh / (size_t)NH) * T : NULL;
    float* a = att + r * (size_t)T;
    const int n = causal ? t + 1 : T;
    float mx = -INFINITY;
    int nan = 0;
    for (int s = lane; s < n; s += 32) {
        const float x = (mask && mask[s] == 0) ? -INFINITY : __fmul_rn(a[s], scale);
        a[s] = x;
        mx = fmaxf(mx, x);
        nan |= isnan(x);
    }
    mx = warp_max(mx);
    if (__any_sync(FULL_MASK, nan)) mx = NAN;   // poison the row, as the CPU does
    if (mx == -INFINITY) {                      // no visible key: a zero row
        for (int s = lane; s < T; s += 32) a[s] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int s = lane; s < n; s += 32) {
        const float e = expf(a[s] - mx);
        a[s] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int s = lane; s < n; s += 32) a[s] *= inv;
    for (int s = n + lane; s < T; s += 32) a[s] = 0.0f;
}

extern "C" mg_status mg_cuda_attention_forward(float* out, float* att, const float* qkv,
                                               const int32_t* key_mask,
                                               int B, int T, int C, int NH, int causal) {
    MG_TRY(check_attention_forward(__func__, out, att, qkv, B, T, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const int BH = B * NH;
    const size_t C3 = 3 * (size_t)C;
    const size_t piece = cuda_align((size_t)B * T * C * sizeof(float));
    void* ws;
    MG_TRY(cuda_scratch(&ws, 3 * piece));
    float* q = (float*)ws;                               // (B,NH,T,hs)
    float* k = (float*)((char*)ws + piece);              // (B,NH,T,hs)
    float* v = (float*)((char*)ws + 2 * piece);          // (B,NH,T,hs)
    float* y = q;                                        // (B,NH,T,hs), once q is used
    const long long TT = (long long)T * T, Ths = (long long)T * hs;

    MG_TRY(split_heads(q, qkv, C3, B, T, C, NH));
    MG_TRY(split_heads(k, qkv + C, C3, B, T, C, NH));
    MG_TRY(split_heads(v, qkv + 2 * (size_t)C, C3, B, T, C, NH));
    // S (T,T) = q (T,hs) @ k^T, raw: the softmax applies the scale
    MG_TRY(gemm_batched(0, 1, T, T, hs, q, hs, Ths, k, hs, Ths, att, T, TT, BH));
    const size_t rows = (size_t)BH * T;
    softmax_forward_kernel<<<cuda_grid(rows, ROWS_PER_BLOCK), ROW_THREADS, 0, cuda_stream()>>>(
        att, key_mask, rows, T, NH, causal, scale);
    MG_LAUNCH_CHECK();
    // y (T,hs) = P (T,T) @ v (T,hs)
    MG_TRY(gemm_batched(0, 0, T, hs, T, att, T, TT, v, hs, Ths, y, hs, Ths, BH));
    return merge_heads(out, (size_t)C, y, B, T, C, NH, 0);
}

// ================================================================ backward

// In place on ds (B,NH,T,T), which holds dP on entry; one warp per row r:
// Forward: P = softmax(S * scale) -> dS = P * (dP - sum_s P dP) * scale over
// the visible s < n (P is 0 at masked keys, so they give 0); zeros right of n.
static __global__ void softmax_backward_kernel(float* ds, const float* att, size_t rows,
                                               int T, int causal, float scale) {
    const size_t r = (size_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int t = (int)(r % (size_t)T);
    const float* p = att + r * (size_t)T;
    float* d = ds + r * (size_t)T;
    const int n = causal ? t + 1 : T;
    float dot = 0.0f;
    for (int s = lane; s < n; s += 32) dot += p[s] * d[s];
    dot = warp_sum(dot);
    for (int s = lane; s < n; s += 32) d[s] = p[s] * (d[s] - dot) * scale;
    for (int s = n + lane; s < T; s += 32) d[s] = 0.0f;
}

extern "C" mg_status mg_cuda_attention_backward(float* dqkv, float* scratch, const float* dout,
                                                const float* qkv, const float* att,
                                                int B, int T, int C, int NH, int causal,
                                                int accumulate) {
    MG_TRY(check_attention_backward(__func__, dqkv, scratch, dout, qkv, att, B, T, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const int BH = B * NH;
    const size_t C3 = 3 * (size_t)C;
    const size_t piece = cuda_align((size_t)B * T * C * sizeof(float));
    void* ws;
    MG_TRY(cuda_scratch(&ws, 5 * piece));
    float* q = (float*)ws;                               // (B,NH,T,hs) each
    float* k = (float*)((char*)ws + piece);
    float* v = (float*)((char*)ws + 2 * piece);
    float* g = (float*)((char*)ws + 3 * piece);          // dout's heads
    float* dv = (float*)((char*)ws + 4 * piece);
    float* dq = g;                                       // g is dead after dP, dv
    float* dk = v;                                       // v is dead after dP
    float* ds = scratch;                                 // (B,NH,T,T): dP, then dS
    const long long TT = (long long)T * T, Ths = (long long)T * hs;

    MG_TRY(split_heads(q, qkv, C3, B, T, C, NH));
    MG_TRY(split_heads(k, qkv + C, C3, B, T, C, NH));
    MG_TRY(split_heads(v, qkv + 2 * (size_t)C, C3, B, T, C, NH));
    MG_TRY(split_heads(g, dout, (size_t)C, B, T, C, NH));
    // Forward: o = P v -> dP (T,T) = do (T,hs) @ v^T, dv (T,hs) = P^T @ do
    MG_TRY(gemm_batched(0, 1, T, T, hs, g, hs, Ths, v, hs, Ths, ds, T, TT, BH));
    MG_TRY(gemm_batched(1, 0, T, hs, T, att, T, TT, g, hs, Ths, dv, hs, Ths, BH));
    // Forward: P = softmax(S * scale) -> dS = P * (dP - rowsum(P dP)) * scale
    const size_t rows = (size_t)BH * T;
    softmax_backward_kernel<<<cuda_grid(rows, ROWS_PER_BLOCK), ROW_THREADS, 0, cuda_stream()>>>(
        ds, att, rows, T, causal, scale);
    MG_LAUNCH_CHECK();
    // Forward: S = q k^T -> dq (T,hs) = dS @ k, dk (T,hs) = dS^T @ q
    MG_TRY(gemm_batched(0, 0, T, hs, T, ds, T, TT, k, hs, Ths, dq, hs, Ths, BH));
    MG_TRY(gemm_batched(1, 0, T, hs, T, ds, T, TT, q, hs, Ths, dk, hs, Ths, BH));
    // dqkv (B,T,3C) = or += [dq | dk | dv]
    MG_TRY(merge_heads(dqkv, C3, dq, B, T, C, NH, accumulate));
    MG_TRY(merge_heads(dqkv + C, C3, dk, B, T, C, NH, accumulate));
    return merge_heads(dqkv + 2 * (size_t)C, C3, dv, B, T, C, NH, accumulate);
}

// ================================================================ decode

// kcache, vcache (B,NH,maxT,hs) rows pos..pos+Tn-1 = the k, v of qkv (B,Tn,3C).
static __global__ void write_cache_kernel(float* kcache, float* vcache, const float* qkv,
                                          int B, int Tn, int pos, int maxT, int C, int NH) {
    const int hs = C / NH;
    const size_t C3 = 3 * (size_t)C;
    const size_t n = (size_t)B * Tn * C;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const size_t row = i / (size_t)C;               // b*Tn + t
        const int c = (int)(i - row * (size_t)C);
        const int h = c / hs, d = c - h * hs;
        const size_t b = row / (size_t)Tn, t = row - b * (size_t)Tn;
        const size_t dst = ((b * NH + h) * maxT + pos + t) * hs + d;
        kcache[dst] = qkv[row * C3 + C + c];
        vcache[dst] = qkv[row * C3 + 2 * (size_t)C + c];
    }
}

// Threads of a decode block; the scores go to dynamic shared memory up to
// this many bytes: under the 48 KiB a block gets without an opt-in, less 1 KiB
// for the kernel's static reduction buffer (score rows up to 12032 positions).
enum { DEC_THREADS = 128, DEC_SMEM_MAX = 47 * 1024 };

// Block (bh, y) = (b*NH + h, y) takes the new queries t = y, y + gridDim.y, ...
// of its head in order: query t attends over cache rows 0..pos+t (written
// beforehand by write_cache_kernel). The score row a is shared memory when
// in_smem (grid.y = Tn, one query per block), else this head's scratch row
// (B,NH,maxT) (grid.y = 1: the queries share it one after another).
//   S[s] = q . k[s] * scale (a warp per key, lanes over hs, fixed tree)
//   P = softmax(S) (no mask: the causal limit is L)
//   o[d] = sum_s P[s] v[s][d] (a thread per channel, s in order)
static __global__ void decode_kernel(float* out, const float* kcache, const float* vcache,
                                     float* scratch, const float* qkv, int Tn, int pos,
                                     int maxT, int C, int NH, float scale, int in_smem) {
    extern __shared__ float smem[];
    __shared__ float red[32];
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH, hs = C / NH;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const size_t C3 = 3 * (size_t)C;
    const float* kc = kcache + (size_t)bh * maxT * hs;   // (maxT,hs)
    const float* vc = vcache + (size_t)bh * maxT * hs;
    float* a = in_smem ? smem : scratch + (size_t)bh * maxT;   // (L)
    for (int t = blockIdx.y; t < Tn; t += gridDim.y) {
        const float* q = qkv + ((size_t)b * Tn + t) * C3 + (size_t)h * hs;   // (hs)
        const int L = pos + t + 1;
        for (int s = warp; s < L; s += nwarps) {
            const float* kr = kc + (size_t)s * hs;
            float acc = 0.0f;
            for (int d = lane; d < hs; d += 32) acc += q[d] * kr[d];
            acc = warp_sum(acc);
            if (lane == 0) a[s] = __fmul_rn(acc, scale);
        }
        __syncthreads();
        float mx = -INFINITY;
        int nan = 0;
        for (int s = threadIdx.x; s < L; s += blockDim.x) {
            mx = fmaxf(mx, a[s]);
            nan |= isnan(a[s]);
        }
        mx = block_max(mx, red);
        if (__syncthreads_or(nan)) mx = NAN;
        const bool empty = mx == -INFINITY;   // every score -inf: a zero row, as on the CPU
        float sum = 0.0f;
        for (int s = threadIdx.x; s < L; s += blockDim.x) {
            const float e = empty ? 0.0f : expf(a[s] - mx);
            a[s] = e;
            sum += e;
        }
        sum = block_total(sum, red);
        const float inv = empty ? 0.0f : 1.0f / sum;
        for (int s = threadIdx.x; s < L; s += blockDim.x) a[s] *= inv;
        __syncthreads();
        float* o = out + ((size_t)b * Tn + t) * C + (size_t)h * hs;   // (hs)
        for (int d = threadIdx.x; d < hs; d += blockDim.x) {
            float acc = 0.0f;
            for (int s = 0; s < L; s++) acc += a[s] * vc[(size_t)s * hs + d];
            o[d] = acc;
        }
        __syncthreads();   // the next query overwrites a
    }
}

extern "C" mg_status mg_cuda_attention_decode(float* out, float* kcache, float* vcache,
                                              float* scratch, const float* qkv,
                                              int B, int Tn, int pos, int maxT, int C, int NH) {
    MG_TRY(check_attention_decode(__func__, out, kcache, vcache, scratch, qkv,
                                  B, Tn, pos, maxT, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    cudaStream_t st = cuda_stream();
    // All new keys first: query t then reads cache rows 0..pos+t only.
    const size_t n = (size_t)B * Tn * C;
    write_cache_kernel<<<elementwise_grid(n, 256), 256, 0, st>>>(kcache, vcache, qkv,
                                                                 B, Tn, pos, maxT, C, NH);
    MG_LAUNCH_CHECK();
    const size_t smem = (size_t)(pos + Tn) * sizeof(float);   // the longest score row
    const int in_smem = smem <= DEC_SMEM_MAX;
    const dim3 grid((unsigned)(B * NH), in_smem ? (unsigned)Tn : 1u);
    decode_kernel<<<grid, DEC_THREADS, in_smem ? smem : 0, st>>>(out, kcache, vcache, scratch,
                                                                 qkv, Tn, pos, maxT, C, NH,
                                                                 scale, in_smem);
    MG_LAUNCH_CHECK();
    return MG_OK;
}
