/*
 * mlp.c — GELU (tanh approximation, as GPT-2; and exact, as BERT and ViT) and
 * dropout, forward and backward.
 *   gelu(x)     = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   gelu_erf(x) = 0.5 x (1 + erf(x / sqrt(2)))
 * tanhf and erff saturate cleanly for large |x|, so no special cases are needed.
 * Dropout draws its keep mask from a counter-based hash of (seed, index)
 * (splitmix64), so the mask does not depend on the thread count.
 */
#include <math.h>

#include "common.h"

#define GELU_K 0.7978845608028654f  /* sqrt(2/pi) */
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

mg_status mg_gelu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float u = GELU_K * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
    return MG_OK;
}

mg_status mg_gelu_backward(float* dinp, const float* inp, const float* dout, size_t N) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        /* d/dx [0.5 x (1 + tanh(u))] = 0.5 (1 + th) + 0.5 x (1 - th^2) du/dx */
        float x = inp[i];
        float u = GELU_K * (x + 0.044715f * x * x * x);
        float th = tanhf(u);
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += dout[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- exact GELU */

mg_status mg_gelu_erf_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    }
    return MG_OK;
}

mg_status mg_gelu_erf_backward(float* dinp, const float* inp, const float* dout, size_t N) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        /* d/dx [0.5 x (1 + erf(x/sqrt2))] = Phi(x) + x phi(x),
         * phi(x) = exp(-x^2/2) / sqrt(2 pi); expf underflows to 0 for large |x|. */
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
