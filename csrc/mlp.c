/*
 * mlp.c — GELU (tanh approximation, as GPT-2) and dropout, forward and backward.
 *   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 * Computed through the identity 0.5 (1 + tanh(u)) = sigmoid(2u), so one
 * exp of a non-positive argument does the work of tanhf (the scalar libm
 * tanhf made GELU a third of a training step):
 *   s = sigmoid(2u) = 1 / (1 + exp(-2u))      (u >= 0)
 *                   = e / (1 + e), e = exp(2u) (u < 0)
 *   gelu(x) = x s;   gelu'(x) = s + x s (1 - s) 2 du/dx
 * Both forms stay accurate in relative terms for any sign of u, and exp of
 * a very negative argument flushes to 0, so saturation needs no special case.
 * Exact GELU (BERT, ViT): gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)),
 *   gelu'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi).
 * It goes through libm's erff (scalar); GPT-2 keeps the faster tanh form.
 * Dropout draws its keep mask from a counter-based hash of (seed, index)
 * (splitmix64), so the mask does not depend on the thread count.
 */
#include <math.h>

#include "common.h"
#include "simd_math.h"

#define GELU_K 0.7978845608028654f  /* sqrt(2/pi) */
#define GELU_C 0.044715f

/* ---------------------------------------------------------------- gelu */

static inline float sigmoid2u_scalar(float u) {
    float e = expf(-2.0f * fabsf(u));  /* in (0, 1] */
    float r = 1.0f / (1.0f + e);
    return u >= 0.0f ? r : e * r;
}

#if defined(__AVX2__) && defined(__FMA__)
/* s = sigmoid(2u) for 8 lanes */
static inline __m256 sigmoid2u(__m256 u) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 au = _mm256_andnot_ps(sign, u);
    __m256 e = exp_neg(_mm256_mul_ps(_mm256_set1_ps(-2.0f), au));
    __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    __m256 neg = _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(r, _mm256_mul_ps(e, r), neg);
}

static inline __m256 gelu_u(__m256 x) {
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 inner = _mm256_fmadd_ps(_mm256_set1_ps(GELU_C), x2, _mm256_set1_ps(1.0f));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_K), x), inner);
}
#endif

enum { GELU_GRAIN = 4096 };  /* elements per parallel work item */

mg_status mg_gelu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= end; i += 8) {  /* hot loop */
            __m256 x = _mm256_loadu_ps(inp + i);
            _mm256_storeu_ps(out + i, _mm256_mul_ps(x, sigmoid2u(gelu_u(x))));
        }
#endif
        for (; i < end; i++) {
            float x = inp[i];
            out[i] = x * sigmoid2u_scalar(GELU_K * x * (1.0f + GELU_C * x * x));
        }
    }
    return MG_OK;
}

mg_status mg_gelu_backward(float* dinp, const float* inp, const float* dout, size_t N) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
        /* out = x s(u): dout/dx = s + x s (1 - s) 2 du/dx,
         * du/dx = K (1 + 3 c x^2) */
#if defined(__AVX2__) && defined(__FMA__)
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= end; i += 8) {  /* hot loop */
            __m256 x = _mm256_loadu_ps(inp + i);
            __m256 s = sigmoid2u(gelu_u(x));
            __m256 du2 = _mm256_mul_ps(_mm256_set1_ps(2.0f * GELU_K),
                                       _mm256_fmadd_ps(_mm256_set1_ps(3.0f * GELU_C),
                                                       _mm256_mul_ps(x, x), one));
            __m256 ds = _mm256_mul_ps(_mm256_mul_ps(s, _mm256_sub_ps(one, s)), du2);
            __m256 g = _mm256_fmadd_ps(x, ds, s);
            _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), g,
                                                       _mm256_loadu_ps(dinp + i)));
        }
#endif
        for (; i < end; i++) {
            float x = inp[i];
            float s = sigmoid2u_scalar(GELU_K * x * (1.0f + GELU_C * x * x));
            float du2 = 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
            dinp[i] += dout[i] * (s + x * s * (1.0f - s) * du2);
        }
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- gelu (erf) */

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

mg_status mg_gelu_erf_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    #pragma omp parallel for schedule(static) if (N > GELU_GRAIN)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    }
    return MG_OK;
}

mg_status mg_gelu_erf_backward(float* dinp, const float* inp, const float* dout, size_t N) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    #pragma omp parallel for schedule(static) if (N > GELU_GRAIN)
    for (size_t i = 0; i < N; i++) {
        /* out = x Phi(x): dout/dx = Phi(x) + x phi(x) */
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- dropout */

static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

mg_status mg_dropout_forward(float* out, uint8_t* mask, const float* inp,
                             size_t N, float p, uint64_t seed) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(mask); MG_CHECK_PTR(inp);
    MG_CHECK(p >= 0.0f && p < 1.0f, MG_ERR_VALUE, "p=%g must be in [0, 1)", (double)p);
    float scale = 1.0f / (1.0f - p);
    /* keep iff a uniform 24-bit draw is >= p * 2^24 */
    uint32_t thresh = (uint32_t)((double)p * 16777216.0);
    uint64_t key = splitmix64(seed);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        uint32_t r = (uint32_t)(splitmix64(key ^ (uint64_t)i) >> 40);
        uint8_t keep = r >= thresh;
        mask[i] = keep;
        out[i] = keep ? inp[i] * scale : 0.0f;
    }
    return MG_OK;
}

mg_status mg_dropout_backward(float* dinp, const float* dout, const uint8_t* mask,
                              size_t N, float p) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(dout); MG_CHECK_PTR(mask);
    MG_CHECK(p >= 0.0f && p < 1.0f, MG_ERR_VALUE, "p=%g must be in [0, 1)", (double)p);
    float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) dinp[i] += mask[i] ? dout[i] * scale : 0.0f;
    return MG_OK;
}
