/*
 * adamw.cu — global gradient norm and the AdamW update over one flat device
 * buffer; the twin of adamw.c (same arguments, same checks, same statuses).
 *   ||g|| = sqrt(sum g^2)                   (summed in double)
 *   g = grads * grad_scale
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p = p * (1 - lr wd [decay_mask]) - (lr / (1-b1^t)) m / (sqrt(v) / sqrt(1-b2^t) + eps)
 * (decoupled decay, decay before the step as in PyTorch's AdamW).
 *
 * The norm is the runtime's cuda_reduce (runtime.cu): a fixed grid and a
 * fixed order of additions, in double, so its bits depend only on n. It
 * waits for the stream, since *norm is a host float.
 *
 * The update is one elementwise grid-stride kernel: each thread owns its
 * entries, so there is nothing to reduce and no order to fix. The scalars
 * (bias corrections, step, shrink factor) are computed on the host with the
 * same float expressions and libm as adamw.c. The per-entry arithmetic is
 * the CPU scalar loop's, operation for operation, written with the _rn
 * intrinsics so nvcc neither fuses a multiply into an add nor relaxes the
 * division or the square root whatever the flags: IEEE fp32 as the C source
 * reads. That is bit for bit a CPU build without FMA; a -march=native build,
 * where gcc may fuse b m + (1-b) g, differs by a rounding (well within 1e-6
 * relative on the parameters).
 */
#include <cmath>

#include "common.cuh"

enum { ADAMW_THREADS = 256 };
/* Enough blocks to fill any GPU; larger buffers loop over the grid. */
static const unsigned ADAMW_MAX_BLOCKS = 65535u * 8u;

/* ---------------------------------------------------------------- norm */

extern "C" mg_status mg_cuda_global_norm(float* norm, const float* grads, size_t n) {
    MG_CHECK_PTR(norm); MG_CHECK_PTR(grads);
    double total = 0.0;
    MG_TRY(cuda_reduce(&total, grads, n, 1));   /* sum of squares; waits */
    *norm = (float)sqrt(total);
    return MG_OK;
}

/* ---------------------------------------------------------------- update */

/* params, m, v, grads (n); decay_mask (n) or NULL. one_b1 = 1 - beta1,
 * one_b2 = 1 - beta2, step = lr / (1 - b1^t), sbc2 = sqrt(1 - b2^t),
 * shrink = 1 - lr * wd: all as adamw.c computes them. */
static __global__ void adamw_update_kernel(float* params, float* m, float* v,
                                           const float* grads, const uint8_t* decay_mask,
                                           size_t n, float beta1, float beta2,
                                           float one_b1, float one_b2, float step,
                                           float sbc2, float eps, float shrink,
                                           float grad_scale) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    /* hot loop: 4 floats (+1 byte) read, 3 written per entry */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        /* g = grads * grad_scale */
        float g = __fmul_rn(grads[i], grad_scale);
        /* mi = beta1 * m + (1 - beta1) * g */
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_b1, g));
        /* vi = beta2 * v + (1 - beta2) * g * g   (left to right) */
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_b2, g), g));
        m[i] = mi;
        v[i] = vi;
        /* p = params * (decay ? shrink : 1)   (decay first, as PyTorch) */
        float p = __fmul_rn(params[i], (decay_mask == NULL || decay_mask[i]) ? shrink : 1.0f);
        /* params = p - step * mi / (sqrtf(vi) / sbc2 + eps) */
        float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sbc2), eps);
        params[i] = __fsub_rn(p, __fdiv_rn(__fmul_rn(step, mi), den));
    }
}

extern "C" mg_status mg_cuda_adamw_update(float* params, float* m, float* v, const float* grads,
                                          const uint8_t* decay_mask, size_t n, float lr,
                                          float beta1, float beta2, float eps,
                                          float weight_decay, float grad_scale, int t) {
    MG_TRY(check_adamw_update(__func__, params, m, v, grads, lr, beta1, beta2, eps,
                              grad_scale, t));
    if (n == 0) return MG_OK;
    /* host scalars: the same float expressions (and libm) as adamw.c */
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2 = 1.0f - powf(beta2, (float)t);
    float step = lr / bc1;          /* lr * m_hat = step * m */
    float sbc2 = sqrtf(bc2);        /* sqrt(v_hat) = sqrt(v) / sbc2 */
    float lwd = lr * weight_decay;
    const float shrink = 1.0f - lwd;   /* the decay factor where the mask says yes */
    /* capped in size_t, before cuda_grid narrows the count to unsigned */
    unsigned grid = cuda_grid(MG_MIN(n, (size_t)ADAMW_MAX_BLOCKS * ADAMW_THREADS), ADAMW_THREADS);
    adamw_update_kernel<<<grid, ADAMW_THREADS, 0, cuda_stream()>>>(
        params, m, v, grads, decay_mask, n, beta1, beta2, 1.0f - beta1, 1.0f - beta2,
        step, sbc2, eps, shrink, grad_scale);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- average */

/* avg = decay * avg + w * x, rounded as adamw.c's loop (no contraction to fma). */
static __global__ void ema_update_kernel(float* avg, const float* x, size_t n, float decay,
                                         float w) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        avg[i] = __fadd_rn(__fmul_rn(decay, avg[i]), __fmul_rn(w, x[i]));
}

extern "C" mg_status mg_cuda_ema_update(float* avg, const float* x, size_t n, float decay) {
    MG_TRY(check_ema_update(__func__, avg, x, decay));
    if (n == 0) return MG_OK;
    unsigned grid = cuda_grid(MG_MIN(n, (size_t)ADAMW_MAX_BLOCKS * ADAMW_THREADS), ADAMW_THREADS);
    ema_update_kernel<<<grid, ADAMW_THREADS, 0, cuda_stream()>>>(avg, x, n, decay, 1.0f - decay);
    MG_LAUNCH_CHECK();
    return MG_OK;
}
