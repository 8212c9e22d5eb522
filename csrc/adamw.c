/*
 * adamw.c — global gradient norm and the AdamW update over one flat buffer.
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= lr (m_hat / (sqrt(v_hat) + eps) + wd * p)    (decoupled decay)
 * The norm sums squares in double per thread over a static partition (in
 * LANES vector lanes, then a fixed tree), then adds the partial sums in
 * thread order: deterministic for a thread count.
 * And the exponential moving average of the weights that evaluation may use
 * in their place:  avg = decay avg + (1 - decay) x.
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
#elif defined(__AVX2__) && defined(__FMA__)
        /* the same lanes in four registers of four (mul and add kept apart) */
        __m256d a[LANES / 4];
        for (int k = 0; k < LANES / 4; k++) a[k] = _mm256_setzero_pd();
        for (; i + LANES <= hi; i += LANES)
            for (int k = 0; k < LANES / 4; k++) {
                __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(grads + i + 4 * k));
                a[k] = _mm256_add_pd(a[k], _mm256_mul_pd(x, x));
            }
        for (int k = 0; k < LANES / 4; k++) _mm256_storeu_pd(acc + 4 * k, a[k]);
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
    MG_TRY(check_adamw_update(__func__, params, m, v, grads, lr, beta1, beta2, eps,
                              grad_scale, t));
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2 = 1.0f - powf(beta2, (float)t);
    float step = lr / bc1;          /* lr * m_hat = step * m */
    float sbc2 = sqrtf(bc2);        /* sqrt(v_hat) = sqrt(v) / sbc2 */
    float lwd = lr * weight_decay;
    const float shrink = 1.0f - lwd;   /* the decay factor where the mask says yes */
    size_t nv = 0;                       /* elements done by the vector loop */
#if defined(__AVX2__) && defined(__FMA__)
    /* The scalar loop's operations in the same order, 8 lanes at a time (gcc
     * left that loop scalar: the mask's branch, and sqrtf's errno): the same
     * bits. The decay is a factor, 1 where the mask says no (p * 1 is p). */
    nv = n & ~(size_t)7;
    {
        const __m256 vgs = _mm256_set1_ps(grad_scale), vb1 = _mm256_set1_ps(beta1),
                     vb2 = _mm256_set1_ps(beta2), v1b1 = _mm256_set1_ps(1.0f - beta1),
                     v1b2 = _mm256_set1_ps(1.0f - beta2), vstep = _mm256_set1_ps(step),
                     vsbc2 = _mm256_set1_ps(sbc2), veps = _mm256_set1_ps(eps),
                     vshrink = _mm256_set1_ps(shrink), one = _mm256_set1_ps(1.0f);
        #pragma omp parallel for schedule(static) if (n >= MG_PAR_MIN)
        for (size_t i = 0; i < nv; i += 8) {
            __m256 g = _mm256_mul_ps(_mm256_loadu_ps(grads + i), vgs);
            __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(v1b1, g));
            __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                      _mm256_mul_ps(_mm256_mul_ps(v1b2, g), g));
            _mm256_storeu_ps(m + i, mi);
            _mm256_storeu_ps(v + i, vi);
            __m256 f = vshrink;
            if (decay_mask) {
                __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(decay_mask + i)));
                f = _mm256_blendv_ps(vshrink, one,
                                     _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_setzero_si256())));
            }
            __m256 p = _mm256_mul_ps(_mm256_loadu_ps(params + i), f);
            __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), vsbc2), veps);
            _mm256_storeu_ps(params + i, _mm256_sub_ps(p, _mm256_div_ps(_mm256_mul_ps(vstep, mi), den)));
        }
    }
#endif
    #pragma omp parallel for schedule(static) if (n - nv >= MG_PAR_MIN)
    for (size_t i = nv; i < n; i++) {
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        /* same order of operations as PyTorch's AdamW: decay, then step */
        float p = params[i] * (decay_mask == NULL || decay_mask[i] ? shrink : 1.0f);
        params[i] = p - step * mi / (sqrtf(vi) / sbc2 + eps);
    }
    return MG_OK;
}

mg_status mg_ema_update(float* avg, const float* x, size_t n, float decay) {
    MG_TRY(check_ema_update(__func__, avg, x, decay));
    const float w = 1.0f - decay;
    /* elementwise, so the bits do not depend on the threads or the lanes */
    #pragma omp parallel for simd schedule(static) if (n >= MG_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        avg[i] = decay * avg[i] + w * x[i];
    return MG_OK;
}
