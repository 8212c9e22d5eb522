/*
 * layernorm.cu — layer normalisation over the last axis on the GPU, forward
 * and backward; the twin of layernorm.c (same arguments, same checks;
 * tests/reference.py is the float64 spec).
 *   out = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)
 *   xhat = (x - mean) * rstd,  dxhat = dout * w
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 *   dw = sum over rows of dout * xhat,  db = sum over rows of dout
 *
 * Forward and dinp: one warp per row (grid-stride over rows). Each lane sums
 * its channels c = lane, lane + 32, ... in double, then a shuffle tree to
 * lane 0 and a broadcast from it: one fixed order, and every lane of the row
 * holds the same bits (an xor butterfly would leave lanes with sums added in
 * different orders).
 * dweight, dbias: two stages in a fixed order, no atomics. Stage one: block
 * (channel tile of 32, row chunk) sums its rows in double, eight warps each
 * taking every eighth row, then the eight warps' sums in warp order, into
 * partials (chunks, C) carved from cuda_scratch. Stage two: one thread per
 * channel sums the chunks' partials in chunk order and adds into dweight /
 * dbias. The chunk count depends only on (N, C), so the bits do too.
 *
 * Numerics:
 *  - Statistics in double, as on the CPU (float sums of 768+ values lose
 *    digits when the mean is large against the spread): mean and rstd come
 *    out as the CPU's to the last bit in all but rare double-rounding ties.
 *  - The elementwise expressions are the CPU's in its order, with explicit
 *    IEEE round-to-nearest __fmul_rn / __fadd_rn / __fsub_rn so nvcc does not
 *    fuse them into fma (the CPU compiles them without contraction): out
 *    equals the CPU's bit for bit whenever mean and rstd do.
 *  - The backward sums (the row means of dxhat and dxhat * xhat, dw, db) add
 *    the CPU's float terms in double, so they are at least as accurate as
 *    the CPU's float lanes; results agree to fp32 rounding, not bit for bit.
 *
 * Gotchas:
 *  - out may equal inp: each lane writes only the channels it last reads,
 *    after the row's statistics are complete.
 *  - N == 0 does nothing (as on the CPU); dinp, dweight, dbias may be NULL.
 */
#include <cmath>

#include "common.cuh"

static const int LN_THREADS = 256;                  /* 8 warps: 8 rows per block */
static const int LN_WARPS = LN_THREADS / 32;
static const unsigned LN_MAX_BLOCKS = 65535u * 16u;  /* more rows loop over the grid */
static const unsigned FULL_MASK = 0xffffffffu;

/* dweight / dbias stage one: rows per chunk at least LN_MIN_ROWS, at most
 * LN_MAX_CHUNKS chunks, and partials of at most LN_MAX_PARTIALS doubles. */
static const int LN_MIN_ROWS = 64;
static const int LN_MAX_CHUNKS = 256;
static const size_t LN_MAX_PARTIALS = (size_t)1 << 22;

static unsigned row_grid(int N) {
    return cuda_grid(MG_MIN((size_t)N, (size_t)LN_MAX_BLOCKS * LN_WARPS), LN_WARPS);
}

/* Sum over the warp in a fixed order (a tree to lane 0), then broadcast:
 * every lane returns the same bits. */
static __device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    return __shfl_sync(FULL_MASK, v, 0);
}

/* ---------------------------------------------------------------- forward */

static __global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd,
                                                const float* inp, const float* weight,
                                                const float* bias, int N, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const size_t warps = blockDim.x >> 5;
    /* row is the same for the whole warp: the shuffles see every lane */
    for (size_t row = blockIdx.x * warps + (threadIdx.x >> 5); row < (size_t)N;
         row += (size_t)gridDim.x * warps) {
        const float* x = inp + row * C;
        double s = 0.0;
        for (int c = lane; c < C; c += 32) s += (double)x[c];
        const double m = warp_sum_d(s) / C;
        double v = 0.0;
        for (int c = lane; c < C; c += 32) {
            double d = (double)x[c] - m;
            v += d * d;
        }
        v = warp_sum_d(v) / C;
        const float r = (float)(1.0 / sqrt(v + (double)eps));
        const float mf = (float)m;
        float* o = out + row * C;
        for (int c = lane; c < C; c += 32) {  /* hot loop */
            float xh = __fmul_rn(__fsub_rn(x[c], mf), r);
            o[c] = __fadd_rn(__fmul_rn(xh, weight[c]), bias[c]);
        }
        if (lane == 0) {
            mean[row] = mf;
            rstd[row] = r;
        }
    }
}

extern "C" mg_status mg_cuda_layernorm_forward(float* out, float* mean, float* rstd,
                                               const float* inp, const float* weight,
                                               const float* bias, int N, int C, float eps) {
    MG_TRY(check_layernorm_forward(__func__, out, mean, rstd, inp, weight, bias, N, C, eps));
    if (N == 0) return MG_OK;
    layernorm_forward_kernel<<<row_grid(N), LN_THREADS, 0, cuda_stream()>>>(
        out, mean, rstd, inp, weight, bias, N, C, eps);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- backward: dinp */

/* out = xhat * w + b, xhat = (x - mean) * rstd:
 * dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
static __global__ void layernorm_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                             const float* weight, const float* mean,
                                             const float* rstd, int N, int C) {
    const int lane = threadIdx.x & 31;
    const size_t warps = blockDim.x >> 5;
    for (size_t row = blockIdx.x * warps + (threadIdx.x >> 5); row < (size_t)N;
         row += (size_t)gridDim.x * warps) {
        const float* x = inp + row * C;
        const float* g = dout + row * C;
        const float m = mean[row], r = rstd[row];
        double a = 0.0, b = 0.0;
        for (int c = lane; c < C; c += 32) {
            float xh = __fmul_rn(__fsub_rn(x[c], m), r);
            float dxh = __fmul_rn(g[c], weight[c]);
            a += (double)dxh;
            b += (double)__fmul_rn(dxh, xh);
        }
        const float ma = (float)(warp_sum_d(a) / C);
        const float mb = (float)(warp_sum_d(b) / C);
        float* dx = dinp + row * C;
        for (int c = lane; c < C; c += 32) {  /* hot loop */
            float xh = __fmul_rn(__fsub_rn(x[c], m), r);
            float dxh = __fmul_rn(g[c], weight[c]);
            float t = __fsub_rn(__fsub_rn(dxh, ma), __fmul_rn(xh, mb));
            dx[c] = __fadd_rn(dx[c], __fmul_rn(r, t));
        }
    }
}

/* ---------------------------------------------------------------- backward: dweight, dbias */

/* Stage one. Block (32, LN_WARPS): x is the channel in a tile of 32
 * (blockIdx.x), y the warp; blockIdx.y the chunk of rows [r0, r1).
 * pw, pb (chunks, C): this chunk's sums of dout * xhat and of dout. */
static __global__ void layernorm_param_partial_kernel(double* pw, double* pb,
                                                      const float* dout, const float* inp,
                                                      const float* mean, const float* rstd,
                                                      int N, int C, int rows_per_chunk) {
    __shared__ double sw[LN_WARPS][32], sb[LN_WARPS][32];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;
    const size_t r0 = (size_t)blockIdx.y * rows_per_chunk;
    const size_t r1 = MG_MIN((size_t)N, r0 + (size_t)rows_per_chunk);
    double aw = 0.0, ab = 0.0;
    if (c < C) {
        /* one warp reads 32 neighbouring channels of a row: 128 bytes */
        for (size_t i = r0 + ty; i < r1; i += blockDim.y) {  /* hot loop */
            float gv = dout[i * C + c];
            float xv = inp[i * C + c];
            /* the CPU's float term: g * (x - mean) * rstd, in that order */
            aw += (double)__fmul_rn(__fmul_rn(gv, __fsub_rn(xv, mean[i])), rstd[i]);
            ab += (double)gv;
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && c < C) {
        double w = 0.0, b = 0.0;
        for (int k = 0; k < (int)blockDim.y; k++) {
            w += sw[k][tx];
            b += sb[k][tx];
        }
        pw[(size_t)blockIdx.y * C + c] = w;
        pb[(size_t)blockIdx.y * C + c] = b;
    }
}

/* Stage two: per channel, the chunks' partials in chunk order. */
static __global__ void layernorm_param_final_kernel(float* dweight, float* dbias,
                                                    const double* pw, const double* pb,
                                                    int chunks, int C) {
    for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < (size_t)C;
         c += (size_t)gridDim.x * blockDim.x) {
        double w = 0.0, b = 0.0;
        for (int j = 0; j < chunks; j++) {
            w += pw[(size_t)j * C + c];
            b += pb[(size_t)j * C + c];
        }
        if (dweight) dweight[c] = __fadd_rn(dweight[c], (float)w);
        if (dbias) dbias[c] = __fadd_rn(dbias[c], (float)b);
    }
}

extern "C" mg_status mg_cuda_layernorm_backward(float* dinp, float* dweight, float* dbias,
                                                const float* dout, const float* inp,
                                                const float* weight, const float* mean,
                                                const float* rstd, int N, int C) {
    MG_TRY(check_layernorm_backward(__func__, dout, inp, weight, mean, rstd, N, C));
    if (N == 0) return MG_OK;
    cudaStream_t s = cuda_stream();
    if (dinp) {
        layernorm_dinp_kernel<<<row_grid(N), LN_THREADS, 0, s>>>(dinp, dout, inp, weight,
                                                                 mean, rstd, N, C);
        MG_LAUNCH_CHECK();
    }
    if (dweight || dbias) {
        /* chunks from (N, C) alone, so the summation order (and the bits)
         * do not depend on the device */
        int max_chunks = (int)MG_MIN((size_t)LN_MAX_CHUNKS,
                                     MG_MAX((size_t)1, LN_MAX_PARTIALS / (size_t)C));
        int chunks = (int)MG_MIN((size_t)max_chunks,
                                 ((size_t)N + LN_MIN_ROWS - 1) / LN_MIN_ROWS);
        int rows_per_chunk = (int)(((size_t)N + chunks - 1) / chunks);
        chunks = (int)(((size_t)N + rows_per_chunk - 1) / rows_per_chunk);
        size_t part = cuda_align((size_t)chunks * C * sizeof(double));
        void* ws;
        MG_TRY(cuda_scratch(&ws, 2 * part));
        double* pw = (double*)ws;
        double* pb = (double*)((char*)ws + part);
        dim3 block(32, LN_WARPS);
        dim3 grid((unsigned)(((size_t)C + 31) / 32), (unsigned)chunks);
        layernorm_param_partial_kernel<<<grid, block, 0, s>>>(pw, pb, dout, inp, mean, rstd,
                                                              N, C, rows_per_chunk);
        MG_LAUNCH_CHECK();
        layernorm_param_final_kernel<<<cuda_grid((size_t)C, LN_THREADS), LN_THREADS, 0, s>>>(
            dweight, dbias, pw, pb, chunks, C);
        MG_LAUNCH_CHECK();
    }
    return MG_OK;
}
