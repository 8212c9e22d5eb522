/*
 * loss.cu — softmax cross-entropy with an ignore index and label smoothing
 * on the GPU, forward and backward; the twin of loss.c (same arguments, same
 * results to fp32 rounding, tests/reference.py is the float64 spec). With
 * smoothing eps the target is q = (1 - eps) onehot(t) + eps / V:
 *   loss_i = (logsumexp(logits_i) - z_t) + eps (z_t - mean_j z_j)
 *   dlogits_i += dloss_i * (probs_i - q_i)
 *
 * One block per row (grid-stride over rows), three passes over the row as on
 * the CPU: the max (NaNs skipped, as fmaxf and the CPU's z > m test both
 * do), with smoothing also the sum of the logits (in double); the sum of the float exponentials exp(z - max), in double; then
 * probs = exp(z - max) * (float)(1 / sum), the exponential recomputed rather
 * than stored and reread (one write of the row, not two). Each reduction is
 * a warp shuffle tree and then the warps' partials in warp order: the order
 * depends only on V, so the bits are the same run to run. No atomics.
 *
 * Gotchas:
 *  - probs may equal logits (in place). z[t] is read by thread 0 before the
 *    first barrier, and every thread writes only the entries it reads, after
 *    the last reduction: each row is read fully before it is overwritten.
 *  - The loss comes from the logits (log(sum) + max - z[t], in double), not
 *    from log(prob): a tiny probability does not underflow to log(0).
 *  - Targets are not range-checked here (device memory; the host checks them
 *    before the upload). A target outside [0, V) is treated as ignored:
 *    loss 0, no gradient, never an out-of-bounds read or write.
 *  - Ignored rows still get their probs (as on the CPU); the backward leaves
 *    them untouched, or zeroes them when it runs in place (dlogits == probs),
 *    since the row then holds probabilities, not a gradient.
 *  - expf is the accurate one (no __expf, no --use_fast_math): within 2 ulp,
 *    beside the CPU's 1.4 ulp exp_neg.
 */
#include <cmath>

#include "common.cuh"

/* Rows at a time in flight; more rows than this loop over the grid. */
static const unsigned MAX_ROW_BLOCKS = 65535u * 16u;
static const unsigned FULL_MASK = 0xffffffffu;

/* Threads per row: the smallest power of two covering V, from one warp to
 * 1024 (a 50257-wide row: 1024 threads of about 49 entries each). Always a
 * multiple of 32, as the block reductions need. */
static int row_threads(int V) {
    int th = 32;
    while (th < V && th < 1024) th *= 2;
    return th;
}

/* ---------------------------------------------------------------- block reductions */

/* Max over the block, NaNs skipped; every thread gets the same value. The
 * leading barrier lets a caller reuse sh (32 floats) call after call. */
static __device__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(FULL_MASK, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = sh[0];
    for (unsigned w = 1; w < (blockDim.x >> 5); w++) r = fmaxf(r, sh[w]);
    return r;
}

/* Sum over the block in a fixed order (shuffle tree, then warps in order);
 * every thread gets the same bits. sh: 32 doubles. */
static __device__ double block_sum_d(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    double r = sh[0];
    for (unsigned w = 1; w < (blockDim.x >> 5); w++) r += sh[w];
    return r;
}

/* ---------------------------------------------------------------- forward */

/* losses (N); probs (N,V), may equal logits; logits (N,V); targets (N). */
static __global__ void crossentropy_forward_kernel(float* losses, float* probs,
                                                   const float* logits,
                                                   const int32_t* targets,
                                                   int N, int V, int ignore_index,
                                                   float smoothing) {
    __shared__ float sh_max[32];
    __shared__ double sh_sum[32];
    const size_t nV = (size_t)V;
    for (size_t i = blockIdx.x; i < (size_t)N; i += gridDim.x) {   /* block-uniform */
        const float* z = logits + i * nV;
        float* p = probs + i * nV;
        const int t = targets[i];
        const bool keep = t != ignore_index && t >= 0 && t < V;
        /* before any barrier, so before the row is overwritten in place */
        const float zt = (keep && threadIdx.x == 0) ? z[t] : 0.0f;

        float zmax = -INFINITY;
        double zsum = 0.0;   /* the smoothing term's mean logit */
        for (size_t j = threadIdx.x; j < nV; j += blockDim.x) {
            zmax = fmaxf(zmax, z[j]);
            if (smoothing > 0.0f) zsum += (double)z[j];
        }
        zmax = block_max(zmax, sh_max);
        if (smoothing > 0.0f) zsum = block_sum_d(zsum, sh_sum);   /* block-uniform branch */

        /* hot loop: one expf per entry; float exponentials summed in double */
        double sum = 0.0;
        for (size_t j = threadIdx.x; j < nV; j += blockDim.x) sum += (double)expf(z[j] - zmax);
        sum = block_sum_d(sum, sh_sum);

        const float inv = (float)(1.0 / sum);
        for (size_t j = threadIdx.x; j < nV; j += blockDim.x) {
            const float e = expf(z[j] - zmax);   /* the bits summed above */
            p[j] = e * inv;
        }
        if (threadIdx.x == 0) {
            double loss = log(sum) + zmax - zt;
            if (smoothing > 0.0f) loss += (double)smoothing * (zt - zsum / V);
            losses[i] = keep ? (float)loss : 0.0f;
        }
    }
}

extern "C" mg_status mg_cuda_crossentropy_forward(float* losses, float* probs,
                                                  const float* logits, const int32_t* targets,
                                                  int N, int V, int ignore_index,
                                                  float smoothing) {
    MG_TRY(check_crossentropy_forward(__func__, losses, probs, logits, targets, N, V, smoothing));
    /* targets live on the device: range-checked by the host before upload,
     * and out-of-range ones are treated as ignored by the kernel */
    if (N == 0) return MG_OK;
    unsigned grid = (unsigned)N < MAX_ROW_BLOCKS ? (unsigned)N : MAX_ROW_BLOCKS;
    crossentropy_forward_kernel<<<grid, row_threads(V), 0, cuda_stream()>>>(
        losses, probs, logits, targets, N, V, ignore_index, smoothing);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- backward */

/* dlogits = dloss * (p - q), q = (1 - eps) onehot(t) + eps / V.
 * dlogits (N,V) += (or, in place, =) ...; dlosses (N); probs (N,V). */
static __global__ void crossentropy_backward_kernel(float* dlogits, const float* dlosses,
                                                    const float* probs,
                                                    const int32_t* targets,
                                                    int N, int V, int ignore_index,
                                                    float smoothing, int inplace) {
    const size_t nV = (size_t)V;
    for (size_t i = blockIdx.x; i < (size_t)N; i += gridDim.x) {
        const float* p = probs + i * nV;
        float* d = dlogits + i * nV;
        const int t = targets[i];
        if (t == ignore_index || t < 0 || t >= V) {
            /* no gradient; in place the row holds probs, so it must become 0 */
            if (inplace)
                for (size_t j = threadIdx.x; j < nV; j += blockDim.x) d[j] = 0.0f;
            continue;
        }
        const float g = dlosses[i];
        const float gs = g * smoothing / (float)V;   /* 0 without smoothing */
        const float gt = g * (1.0f - smoothing);     /* g without smoothing */
        const size_t tt = (size_t)t;
        /* hot loop. In place, each thread reads p[j] and then writes the same
         * d[j]. fmaf is what gcc makes of the CPU's d += g * p with FMA
         * (-march=native); then - gs (with smoothing), then - gt at t, in the
         * CPU's order. */
        for (size_t j = threadIdx.x; j < nV; j += blockDim.x) {
            float val = inplace ? __fmul_rn(g, p[j]) : fmaf(g, p[j], d[j]);
            if (smoothing > 0.0f) val -= gs;
            if (j == tt) val -= gt;
            d[j] = val;
        }
    }
}

extern "C" mg_status mg_cuda_crossentropy_backward(float* dlogits, const float* dlosses,
                                                   const float* probs, const int32_t* targets,
                                                   int N, int V, int ignore_index,
                                                   float smoothing) {
    MG_TRY(check_crossentropy_backward(__func__, dlogits, dlosses, probs, targets, N, V, smoothing));
    /* targets are not range-checked here either (see the forward) */
    if (N == 0) return MG_OK;
    int inplace = (const float*)dlogits == probs;
    unsigned grid = (unsigned)N < MAX_ROW_BLOCKS ? (unsigned)N : MAX_ROW_BLOCKS;
    crossentropy_backward_kernel<<<grid, row_threads(V), 0, cuda_stream()>>>(
        dlogits, dlosses, probs, targets, N, V, ignore_index, smoothing, inplace);
    MG_LAUNCH_CHECK();
    return MG_OK;
}
