/*
 * mlp.c — GELU (tanh approximation, as GPT-2; and exact, as BERT and ViT),
 * ReLU (the Transformer, Marian), SiLU (MarianMT's "swish") and dropout,
 * forward and backward.
 *   gelu(x)     = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   gelu_erf(x) = 0.5 x (1 + erf(x / sqrt(2)))
 *   relu(x)     = max(x, 0)
 *   silu(x)     = x sigmoid(x) = x / (1 + exp(-x))
 * Computed through the identity 0.5 (1 + tanh(u)) = sigmoid(2u), so one
 * exp of a non-positive argument does the work of tanhf (the scalar libm
 * tanhf made GELU a third of a training step):
 *   s = sigmoid(2u) = 1 / (1 + exp(-2u))      (u >= 0)
 *                   = e / (1 + e), e = exp(2u) (u < 0)
 *   gelu(x) = x s;   gelu'(x) = s + x s (1 - s) 2 du/dx
 * Both forms stay accurate in relative terms for any sign of u, and exp of
 * a very negative argument flushes to 0, so saturation needs no special case.
 * The exact GELU goes through erfc with one more exp, vectorised the same way
 * (see its section).
 * SiLU takes sigmoid(x) from the same one-exp form, never exponentiating a
 * positive argument (1 / (1 + exp(-x)) overflows exp for x < -88.7 and
 * leans on 1 / inf = 0; exp(x) / (1 + exp(x)) is inf / inf = NaN for
 * x > 88.7):
 *   e = exp(-|x|) in (0, 1],  r = 1 / (1 + e)
 *   s = sigmoid(x) = r (x >= 0), e r (x < 0);  1 - s = e r (x >= 0), r (x < 0)
 *   silu(x) = x s;   silu'(x) = s + x s (1 - s) = s (1 + x (1 - s))
 * so both s and 1 - s keep full relative accuracy (1 - s is never formed
 * by a subtraction). silu' has a root at x = -1.2785 where 1 + x (1 - s)
 * cancels: near it the gradient's error is ~1e-7 absolute, not relative
 * (the rounding of s and 1 - s, scaled by |x|). Saturation: silu -> -0 on
 * the left (exp of a very negative argument flushes to 0: the vector exp
 * below about float32's smallest normal, x < -87.7, where |silu| < 1e-36;
 * libm's expf in the scalar tail goes through the subnormals) and -> x on
 * the right.
 * NaN propagates; -inf gives NaN in the forward (-inf * 0) and both
 * infinities NaN in the backward (inf * 0), as PyTorch's x / (1 + exp(-x)).
 * Dropout draws its keep mask from a counter-based hash of (seed, index)
 * (splitmix64), so the mask does not depend on the thread count.
 */
#include <math.h>

#include "common.h"
#include "simd_math.h"

#define GELU_K 0.7978845608028654f  /* sqrt(2/pi) */
#define GELU_C 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

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

#if defined(__AVX512F__)
/* The same two steps on 16 lanes (the same bits per lane as the 8-lane ones:
 * GELU is bound by its arithmetic, not by memory, so the width pays). */
static inline __m512 sigmoid2u16(__m512 u) {
    __m512 au = _mm512_abs_ps(u);
    __m512 e = exp_neg16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), au));
    __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(neg, r, _mm512_mul_ps(e, r));
}

static inline __m512 gelu_u16(__m512 x) {
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 inner = _mm512_fmadd_ps(_mm512_set1_ps(GELU_C), x2, _mm512_set1_ps(1.0f));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_K), x), inner);
}
#endif

enum { GELU_GRAIN = 4096 };  /* elements per parallel work item */

mg_status mg_gelu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
#if defined(__AVX512F__)
        for (; i + 16 <= end; i += 16) {  /* hot loop */
            __m512 x = _mm512_loadu_ps(inp + i);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(x, sigmoid2u16(gelu_u16(x))));
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= end; i += 8) {
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

mg_status mg_gelu_backward(float* dinp, const float* inp, const float* dout, size_t N,
                           int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
        /* out = x s(u): dout/dx = s + x s (1 - s) 2 du/dx,
         * du/dx = K (1 + 3 c x^2) */
#if defined(__AVX512F__)
        for (; i + 16 <= end; i += 16) {  /* hot loop */
            const __m512 one = _mm512_set1_ps(1.0f);
            __m512 x = _mm512_loadu_ps(inp + i);
            __m512 s = sigmoid2u16(gelu_u16(x));
            __m512 du2 = _mm512_mul_ps(_mm512_set1_ps(2.0f * GELU_K),
                                       _mm512_fmadd_ps(_mm512_set1_ps(3.0f * GELU_C),
                                                       _mm512_mul_ps(x, x), one));
            __m512 ds = _mm512_mul_ps(_mm512_mul_ps(s, _mm512_sub_ps(one, s)), du2);
            __m512 g = _mm512_fmadd_ps(x, ds, s);
            __m512 d0 = accumulate ? _mm512_loadu_ps(dinp + i) : _mm512_setzero_ps();
            _mm512_storeu_ps(dinp + i, _mm512_fmadd_ps(_mm512_loadu_ps(dout + i), g, d0));
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= end; i += 8) {
            __m256 x = _mm256_loadu_ps(inp + i);
            __m256 s = sigmoid2u(gelu_u(x));
            __m256 du2 = _mm256_mul_ps(_mm256_set1_ps(2.0f * GELU_K),
                                       _mm256_fmadd_ps(_mm256_set1_ps(3.0f * GELU_C),
                                                       _mm256_mul_ps(x, x), one));
            __m256 ds = _mm256_mul_ps(_mm256_mul_ps(s, _mm256_sub_ps(one, s)), du2);
            __m256 g = _mm256_fmadd_ps(x, ds, s);
            __m256 d0 = accumulate ? _mm256_loadu_ps(dinp + i) : _mm256_setzero_ps();
            _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), g, d0));
        }
#endif
        for (; i < end; i++) {
            float x = inp[i];
            float s = sigmoid2u_scalar(GELU_K * x * (1.0f + GELU_C * x * x));
            float du2 = 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
            dinp[i] = (accumulate ? dinp[i] : 0.0f) + dout[i] * (s + x * s * (1.0f - s) * du2);
        }
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- exact GELU */
/* Phi(x) = 0.5 (1 + erf(x/sqrt2)) through erfc of z = |x|/sqrt2 >= 0, which
 * keeps relative accuracy in the tail (no 1 - erf cancellation):
 *   erfc(z) = t exp(-z^2) exp(q(t)),  t = 1 / (1 + z/2)
 * with q the Chebyshev fit of Numerical Recipes' erfcc (fractional error
 * < 1.2e-7 for every z). Phi(x) = 1 - erfc/2 for x >= 0, erfc/2 for x < 0.
 *   gelu(x) = x Phi(x);  gelu'(x) = Phi(x) + x phi(x),
 *   phi(x) = exp(-x^2/2) / sqrt(2 pi) = exp(-z^2) / sqrt(2 pi)
 * Both exponentials have non-positive arguments (q(t) <= ~3e-8), the range
 * of exp_neg; for |x| > ~13 exp(-z^2) flushes to 0 and gelu to 0 or x. */

static inline float erfc_q(float t) {
    return -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
           t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
           t * (-0.82215223f + t * 0.17087277f))))))));
}

/* Phi(x) and exp(-x^2/2), scalar */
static inline float phi_scalar(float x, float* e) {
    float z = fabsf(x) * INV_SQRT2;
    float t = 1.0f / (1.0f + 0.5f * z);
    *e = expf(-z * z);
    float half_erfc = 0.5f * t * *e * expf(erfc_q(t));
    return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

#if defined(__AVX2__) && defined(__FMA__)
/* Phi(x) and exp(-x^2/2) for 8 lanes */
static inline __m256 phi_vec(__m256 x, __m256* e) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(INV_SQRT2));
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, z, one));
    static const float c[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                -0.18628806f, 0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f};
    __m256 q = _mm256_set1_ps(c[0]);
    for (int k = 1; k < 10; k++) q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(c[k]));
    *e = exp_neg(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z));
    __m256 half_erfc = _mm256_mul_ps(_mm256_mul_ps(half, t), _mm256_mul_ps(*e, exp_neg(q)));
    __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_sub_ps(one, half_erfc), half_erfc, neg);
}
#endif

mg_status mg_gelu_erf_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= end; i += 8) {  /* hot loop */
            __m256 x = _mm256_loadu_ps(inp + i), e;
            _mm256_storeu_ps(out + i, _mm256_mul_ps(x, phi_vec(x, &e)));
        }
#endif
        for (; i < end; i++) {
            float e;
            out[i] = inp[i] * phi_scalar(inp[i], &e);
        }
    }
    return MG_OK;
}

mg_status mg_gelu_erf_backward(float* dinp, const float* inp, const float* dout, size_t N,
                               int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
        /* out = x Phi(x): dout/dx = Phi(x) + x phi(x) */
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= end; i += 8) {  /* hot loop */
            __m256 x = _mm256_loadu_ps(inp + i), e;
            __m256 cdf = phi_vec(x, &e);
            __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(x, _mm256_set1_ps(INV_SQRT_2PI)), e, cdf);
            __m256 d0 = accumulate ? _mm256_loadu_ps(dinp + i) : _mm256_setzero_ps();
            _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), g, d0));
        }
#endif
        for (; i < end; i++) {
            float x = inp[i], e;
            float cdf = phi_scalar(x, &e);
            dinp[i] = (accumulate ? dinp[i] : 0.0f) + dout[i] * (cdf + x * INV_SQRT_2PI * e);
        }
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- relu */
/* out = x < 0 ? 0 : x, written so that NaN and -0 pass through as PyTorch's
 * relu passes them; gcc turns both loops into vector compares and blends. */

mg_status mg_relu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    #pragma omp parallel for schedule(static) if (N >= MG_PAR_MIN)
    for (size_t i = 0; i < N; i++) {   /* hot loop */
        const float x = inp[i];
        out[i] = x < 0.0f ? 0.0f : x;
    }
    return MG_OK;
}

mg_status mg_relu_backward(float* dinp, const float* inp, const float* dout, size_t N,
                           int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    /* out = x < 0 ? 0 : x: dout/dx = 0 for x <= 0 (0 at exactly 0, as
     * PyTorch's threshold_backward), 1 elsewhere (NaN included) */
    #pragma omp parallel for schedule(static) if (N >= MG_PAR_MIN)
    for (size_t i = 0; i < N; i++) {   /* hot loop */
        const float g = inp[i] <= 0.0f ? 0.0f : dout[i];
        dinp[i] = (accumulate ? dinp[i] : 0.0f) + g;
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- silu */
/* sigmoid(x) and 1 - sigmoid(x) from one exp of -|x| (the header's form).
 * out = x s; backward g = s (1 + x (1 - s)). Elementwise in blocks of
 * GELU_GRAIN, so the bits do not depend on the thread count. */

/* s = sigmoid(x); *c = 1 - s */
static inline float sigmoid_scalar(float x, float* c) {
    float e = expf(-fabsf(x));  /* in (0, 1] */
    float r = 1.0f / (1.0f + e), er = e * r;
    *c = x >= 0.0f ? er : r;
    return x >= 0.0f ? r : er;
}

#if defined(__AVX2__) && defined(__FMA__)
/* the same for 8 lanes */
static inline __m256 sigmoid8(__m256 x, __m256* c) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = exp_neg(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)));  /* exp(-|x|) */
    __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
    __m256 er = _mm256_mul_ps(e, r);
    __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    *c = _mm256_blendv_ps(er, r, neg);
    return _mm256_blendv_ps(r, er, neg);
}
#endif

#if defined(__AVX512F__)
/* the same for 16 lanes, the same bits per lane as sigmoid8 */
static inline __m512 sigmoid16(__m512 x, __m512* c) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = exp_neg16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
    __m512 r = _mm512_div_ps(one, _mm512_add_ps(one, e));
    __m512 er = _mm512_mul_ps(e, r);
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    *c = _mm512_mask_blend_ps(neg, er, r);
    return _mm512_mask_blend_ps(neg, r, er);
}
#endif

mg_status mg_silu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
#if defined(__AVX512F__)
        for (; i + 16 <= end; i += 16) {  /* hot loop */
            __m512 x = _mm512_loadu_ps(inp + i), c;
            _mm512_storeu_ps(out + i, _mm512_mul_ps(x, sigmoid16(x, &c)));
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= end; i += 8) {
            __m256 x = _mm256_loadu_ps(inp + i), c;
            _mm256_storeu_ps(out + i, _mm256_mul_ps(x, sigmoid8(x, &c)));
        }
#endif
        for (; i < end; i++) {
            float x = inp[i], c;
            out[i] = x * sigmoid_scalar(x, &c);
        }
    }
    return MG_OK;
}

mg_status mg_silu_backward(float* dinp, const float* inp, const float* dout, size_t N,
                           int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    size_t nblk = (N + GELU_GRAIN - 1) / GELU_GRAIN;
    #pragma omp parallel for schedule(static) if (nblk > 1)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * GELU_GRAIN, end = MG_MIN(N, i + GELU_GRAIN);
        /* out = x s(x): dout/dx = s + x s (1 - s) = s (1 + x c), c = 1 - s */
#if defined(__AVX512F__)
        for (; i + 16 <= end; i += 16) {  /* hot loop */
            __m512 x = _mm512_loadu_ps(inp + i), c;
            __m512 s = sigmoid16(x, &c);
            __m512 g = _mm512_mul_ps(s, _mm512_fmadd_ps(x, c, _mm512_set1_ps(1.0f)));
            __m512 d0 = accumulate ? _mm512_loadu_ps(dinp + i) : _mm512_setzero_ps();
            _mm512_storeu_ps(dinp + i, _mm512_fmadd_ps(_mm512_loadu_ps(dout + i), g, d0));
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= end; i += 8) {
            __m256 x = _mm256_loadu_ps(inp + i), c;
            __m256 s = sigmoid8(x, &c);
            __m256 g = _mm256_mul_ps(s, _mm256_fmadd_ps(x, c, _mm256_set1_ps(1.0f)));
            __m256 d0 = accumulate ? _mm256_loadu_ps(dinp + i) : _mm256_setzero_ps();
            _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), g, d0));
        }
#endif
        for (; i < end; i++) {
            float x = inp[i], c;
            float s = sigmoid_scalar(x, &c);
            dinp[i] = (accumulate ? dinp[i] : 0.0f) + dout[i] * (s * (1.0f + x * c));
        }
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
    MG_TRY(check_dropout_forward(__func__, out, mask, inp, p));
    float scale = 1.0f / (1.0f - p);
    /* keep iff a uniform 24-bit draw is >= p * 2^24 */
    uint32_t thresh = (uint32_t)((double)p * 16777216.0);
    uint64_t key = splitmix64(seed);
    #pragma omp parallel for schedule(static) if (N >= MG_PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        uint32_t r = (uint32_t)(splitmix64(key ^ (uint64_t)i) >> 40);
        uint8_t keep = r >= thresh;
        mask[i] = keep;
        out[i] = keep ? inp[i] * scale : 0.0f;
    }
    return MG_OK;
}

mg_status mg_dropout_backward(float* dinp, const float* dout, const uint8_t* mask,
                              size_t N, float p, int accumulate) {
    MG_TRY(check_dropout_backward(__func__, dinp, dout, mask, p));
    float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if (N >= MG_PAR_MIN)
    for (size_t i = 0; i < N; i++)
        dinp[i] = (accumulate ? dinp[i] : 0.0f) + (mask[i] ? dout[i] * scale : 0.0f);
    return MG_OK;
}
