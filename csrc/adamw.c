/*
 * adamw.c — global gradient norm and the AdamW update over one flat buffer.
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= lr (m_hat / (sqrt(v_hat) + eps) + wd * p)    (decoupled decay)
 * The norm sums squares in double per thread over a static partition (in
 * LANES vector lanes, then a fixed tree), then adds the partial sums in
 * thread order: deterministic for a thread count.
 */
#include <math.h>

#include "common.h"

#include "simd_math.h"

enum { MAX_THREADS = 256, LANES = 16 };

mg_status mg_global_norm(float* norm, const float* grads, size_t n) {
    MG_CHECK_PTR(norm); MG_CHECK_PTR(grads);
    double partial[MAX_THREADS] = {0};
    int nt = MG_MIN(omp_get_max_threads(), MAX_THREADS);
    #pragma omp parallel num_threads(nt) if (n >= MG_PAR_MIN)
    {
        int tid = omp_get_thread_num(), k = omp_get_num_threads();
        size_t lo = n * (size_t)tid / (size_t)k, hi = n * (size_t)(tid + 1) / (size_t)k;
        /* LANES independent double sums (element i to lane i % LANES from
         * lo), then a fixed tree: one running sum waited on each add */
        double acc[LANES] = {0};
        size_t i = lo;
#if defined(__AVX512F__)
        /* the same lanes in two registers (gcc kept the array in memory) */
        __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
        for (; i + LANES <= hi; i += LANES) {
            __m512 x = _mm512_loadu_ps(grads + i);
            __m512d x0 = widen_lo(x), x1 = widen_hi(x);
            a0 = _mm512_add_pd(a0, _mm512_mul_pd(x0, x0));
            a1 = _mm512_add_pd(a1, _mm512_mul_pd(x1, x1));
        }
        _mm512_storeu_pd(acc, a0);
        _mm512_storeu_pd(acc + 8, a1);
#endif
        for (; i + LANES <= hi; i += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += (double)grads[i + l] * grads[i + l];
        for (int l = 0; i < hi; i++, l++) acc[l] += (double)grads[i] * grads[i];
        for (int w = LANES / 2; w > 0; w /= 2)
            for (int l = 0; l < w; l++) acc[l] += acc[l + w];
        partial[tid] = acc[0];
    }
    double total = 0.0;
    for (int i = 0; i < nt; i++) total += partial[i];
    *norm = (float)sqrt(total);
    return MG_OK;
}

mg_status mg_adamw_update(float* params, float* m, float* v, const float* grads,
                          const uint8_t* decay_mask, size_t n, float lr,
                          float beta1, float beta2, float eps,
                          float weight_decay, float grad_scale, int t) {
    MG_CHECK_PTR(params); MG_CHECK_PTR(m); MG_CHECK_PTR(v); MG_CHECK_PTR(grads);
    MG_CHECK(t >= 1, MG_ERR_VALUE, "step t=%d must be at least 1", t);
    MG_CHECK(isfinite(lr) && lr >= 0.0f, MG_ERR_VALUE, "lr=%g must be finite and >= 0", (double)lr);
    MG_CHECK(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f, MG_ERR_VALUE,
             "betas (%g, %g) must be in [0, 1)", (double)beta1, (double)beta2);
    MG_CHECK(eps > 0.0f, MG_ERR_VALUE, "eps=%g must be positive", (double)eps);
    MG_CHECK(isfinite(grad_scale), MG_ERR_VALUE, "grad_scale=%g is not finite", (double)grad_scale);
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2 = 1.0f - powf(beta2, (float)t);
    float step = lr / bc1;          /* lr * m_hat = step * m */
    float sbc2 = sqrtf(bc2);        /* sqrt(v_hat) = sqrt(v) / sbc2 */
    float lwd = lr * weight_decay;
    #pragma omp parallel for schedule(static) if (n >= MG_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = params[i];
        /* same order of operations as PyTorch's AdamW: decay, then step */
        if (decay_mask == NULL || decay_mask[i]) p *= 1.0f - lwd;
        params[i] = p - step * mi / (sqrtf(vi) / sbc2 + eps);
    }
    return MG_OK;
}
