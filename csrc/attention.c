/*
 * attention.c — multi-head self-attention on packed qkv (PLACEHOLDER: plain
 * loops, one (b, h) per work item).
 *   att = softmax(q k^T / sqrt(hs) + mask), out = att v
 */
#include <math.h>

#include "common.h"

mg_status mg_attention_forward(float* out, float* att, const float* qkv,
                               const int32_t* key_mask,
                               int B, int T, int C, int NH, int causal) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(att); MG_CHECK_PTR(qkv);
    MG_CHECK_POS(B); MG_CHECK_POS(T); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t C3 = 3 * (size_t)C;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const float* q = qkv + ((size_t)b * T + t) * C3 + (size_t)h * hs;
                float* a = att + (((size_t)b * NH + h) * T + t) * T;
                float mx = -INFINITY;
                for (int s = 0; s < T; s++) {
                    int vis = (!causal || s <= t) && (!key_mask || key_mask[(size_t)b * T + s]);
                    if (!vis) { a[s] = -INFINITY; continue; }
                    const float* k = qkv + ((size_t)b * T + s) * C3 + C + (size_t)h * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++) d += q[i] * k[i];
                    a[s] = d * scale;
                    if (a[s] > mx) mx = a[s];
                }
                float sum = 0.0f;
                for (int s = 0; s < T; s++) {
                    float e = (a[s] == -INFINITY) ? 0.0f : expf(a[s] - mx);
                    a[s] = e;
                    sum += e;
                }
                float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
                float* o = out + ((size_t)b * T + t) * C + (size_t)h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int s = 0; s < T; s++) {
                    a[s] *= inv;
                    const float* v = qkv + ((size_t)b * T + s) * C3 + 2 * (size_t)C + (size_t)h * hs;
                    for (int i = 0; i < hs; i++) o[i] += a[s] * v[i];
                }
            }
        }
    }
    return MG_OK;
}

mg_status mg_attention_backward(float* dqkv, float* scratch, const float* dout,
                                const float* qkv, const float* att,
                                int B, int T, int C, int NH, int causal) {
    MG_CHECK_PTR(dqkv); MG_CHECK_PTR(scratch); MG_CHECK_PTR(dout);
    MG_CHECK_PTR(qkv); MG_CHECK_PTR(att);
    MG_CHECK_POS(B); MG_CHECK_POS(T); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t C3 = 3 * (size_t)C;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const float* a = att + (((size_t)b * NH + h) * T + t) * T;
                float* da = scratch + (((size_t)b * NH + h) * T + t) * T;
                const float* g = dout + ((size_t)b * T + t) * C + (size_t)h * hs;
                /* out = sum_s a[s] v[s]: da[s] = g . v[s], dv[s] += a[s] g */
                float dot = 0.0f;
                for (int s = 0; s < T; s++) {
                    const float* v = qkv + ((size_t)b * T + s) * C3 + 2 * (size_t)C + (size_t)h * hs;
                    float* dv = dqkv + ((size_t)b * T + s) * C3 + 2 * (size_t)C + (size_t)h * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++) { d += g[i] * v[i]; dv[i] += a[s] * g[i]; }
                    da[s] = d;
                    dot += d * a[s];
                }
                /* a = softmax(pre): dpre[s] = a[s] (da[s] - sum_r a[r] da[r]) */
                const float* q = qkv + ((size_t)b * T + t) * C3 + (size_t)h * hs;
                float* dq = dqkv + ((size_t)b * T + t) * C3 + (size_t)h * hs;
                for (int s = 0; s < T; s++) {
                    float dp = a[s] * (da[s] - dot) * scale;
                    if (dp == 0.0f) continue;
                    const float* k = qkv + ((size_t)b * T + s) * C3 + C + (size_t)h * hs;
                    float* dk = dqkv + ((size_t)b * T + s) * C3 + C + (size_t)h * hs;
                    for (int i = 0; i < hs; i++) { dq[i] += dp * k[i]; dk[i] += dp * q[i]; }
                }
            }
        }
    }
    (void)causal;
    return MG_OK;
}

mg_status mg_attention_decode(float* out, float* kcache, float* vcache,
                              float* scratch, const float* qkv,
                              int B, int Tn, int pos, int maxT, int C, int NH) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(kcache); MG_CHECK_PTR(vcache);
    MG_CHECK_PTR(scratch); MG_CHECK_PTR(qkv);
    MG_CHECK_POS(B); MG_CHECK_POS(Tn); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    MG_CHECK(pos >= 0 && pos + Tn <= maxT, MG_ERR_SHAPE,
             "positions %d..%d do not fit a cache of %d", pos, pos + Tn - 1, maxT);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t C3 = 3 * (size_t)C;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            float* kc = kcache + ((size_t)b * NH + h) * maxT * hs;
            float* vc = vcache + ((size_t)b * NH + h) * maxT * hs;
            float* a = scratch + ((size_t)b * NH + h) * maxT;
            for (int t = 0; t < Tn; t++) {
                const float* x = qkv + ((size_t)b * Tn + t) * C3 + (size_t)h * hs;
                for (int i = 0; i < hs; i++) {
                    kc[(size_t)(pos + t) * hs + i] = x[C + i];
                    vc[(size_t)(pos + t) * hs + i] = x[2 * (size_t)C + i];
                }
            }
            for (int t = 0; t < Tn; t++) {
                const float* q = qkv + ((size_t)b * Tn + t) * C3 + (size_t)h * hs;
                int L = pos + t + 1;
                float mx = -INFINITY;
                for (int s = 0; s < L; s++) {
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++) d += q[i] * kc[(size_t)s * hs + i];
                    a[s] = d * scale;
                    if (a[s] > mx) mx = a[s];
                }
                float sum = 0.0f;
                for (int s = 0; s < L; s++) { a[s] = expf(a[s] - mx); sum += a[s]; }
                float inv = 1.0f / sum;
                float* o = out + ((size_t)b * Tn + t) * C + (size_t)h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int s = 0; s < L; s++) {
                    float w = a[s] * inv;
                    for (int i = 0; i < hs; i++) o[i] += w * vc[(size_t)s * hs + i];
                }
            }
        }
    }
    return MG_OK;
}
