/*
 * layernorm.c — layer normalisation over the last axis, forward and backward.
 *   out = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)
 * Statistics are accumulated in double: float sums of 768+ values lose digits
 * when the mean is large against the spread.
 * Backward: dinp is per row (parallel over rows); dweight/dbias sum over all
 * rows, so they get a second pass parallel over channel blocks (disjoint
 * outputs, fixed summation order: deterministic at any thread count).
 */
#include <math.h>

#include "common.h"
#include "simd_math.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
/* The vector loops below hold the same LANES (16) lanes in registers and
 * apply the same operations in the same order as the plain loops (which gcc
 * keeps in stack arrays; mul and add stay apart, as the plain loops compile
 * without contraction): the results are the same bits. They are written once
 * over these few names: VF floats or VD doubles per register, LANES / VF and
 * LANES / VD registers per set of lanes. */
#define LN_VEC 1
#if defined(__AVX512F__)
typedef __m512 vf;
typedef __m512d vd;
enum { VF = 16, VD = 8 };
#define vf_load _mm512_loadu_ps
#define vf_store _mm512_storeu_ps
#define vf_set1 _mm512_set1_ps
#define vf_zero _mm512_setzero_ps
#define vf_add _mm512_add_ps
#define vf_sub _mm512_sub_ps
#define vf_mul _mm512_mul_ps
#define vd_load_ps(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))   /* VD floats, widened */
#define vd_store _mm512_storeu_pd
#define vd_set1 _mm512_set1_pd
#define vd_zero _mm512_setzero_pd
#define vd_add _mm512_add_pd
#define vd_sub _mm512_sub_pd
#define vd_mul _mm512_mul_pd
#else
typedef __m256 vf;
typedef __m256d vd;
enum { VF = 8, VD = 4 };
#define vf_load _mm256_loadu_ps
#define vf_store _mm256_storeu_ps
#define vf_set1 _mm256_set1_ps
#define vf_zero _mm256_setzero_ps
#define vf_add _mm256_add_ps
#define vf_sub _mm256_sub_ps
#define vf_mul _mm256_mul_ps
#define vd_load_ps(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define vd_store _mm256_storeu_pd
#define vd_set1 _mm256_set1_pd
#define vd_zero _mm256_setzero_pd
#define vd_add _mm256_add_pd
#define vd_sub _mm256_sub_pd
#define vd_mul _mm256_mul_pd
#endif
/* xhat = (x - mean) * rstd on VF floats at x */
static inline vf vf_xhat(const float* x, vf vm, vf vr) { return vf_mul(vf_sub(vf_load(x), vm), vr); }
#else
#define LN_VEC 0
#endif

/* Row sums run in LANES independent double accumulators (element c goes to
 * lane c % LANES), then a fixed pairwise tree: a fixed order, so results do
 * not depend on the thread count, and the lanes vectorise where one running
 * sum would wait on each add's latency. */
enum { LANES = 16 };

static inline double lane_total(double* a) {
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) a[l] += a[l + w];
    return a[0];
}

static inline double lane_total_f(const float* a) {
    double d[LANES];
    for (int l = 0; l < LANES; l++) d[l] = a[l];
    return lane_total(d);
}

mg_status mg_layernorm_forward(float* out, float* mean, float* rstd,
                               const float* inp, const float* weight,
                               const float* bias, int N, int C, float eps) {
    MG_TRY(check_layernorm_forward(__func__, out, mean, rstd, inp, weight, bias, N, C, eps));
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= MG_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        double acc[LANES] = {0}, vacc[LANES] = {0};
        int c = 0;
#if LN_VEC
        enum { ND = LANES / VD };
        vd s[ND];
        for (int k = 0; k < ND; k++) s[k] = vd_zero();
        for (; c + LANES <= C; c += LANES)
            for (int k = 0; k < ND; k++) s[k] = vd_add(s[k], vd_load_ps(x + c + k * VD));
        for (int k = 0; k < ND; k++) vd_store(acc + k * VD, s[k]);
#endif
        for (; c + LANES <= C; c += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += x[c + l];
        for (int l = 0; c < C; c++, l++) acc[l] += x[c];
        double m = lane_total(acc) / C;
        c = 0;
#if LN_VEC
        const vd vm = vd_set1(m);
        for (int k = 0; k < ND; k++) s[k] = vd_zero();
        for (; c + LANES <= C; c += LANES)
            for (int k = 0; k < ND; k++) {
                vd d = vd_sub(vd_load_ps(x + c + k * VD), vm);
                s[k] = vd_add(s[k], vd_mul(d, d));
            }
        for (int k = 0; k < ND; k++) vd_store(vacc + k * VD, s[k]);
#endif
        for (; c + LANES <= C; c += LANES)
            for (int l = 0; l < LANES; l++) { double d = x[c + l] - m; vacc[l] += d * d; }
        for (int l = 0; c < C; c++, l++) { double d = x[c] - m; vacc[l] += d * d; }
        double v = lane_total(vacc) / C;
        float r = (float)(1.0 / sqrt(v + (double)eps));
        float mf = (float)m;
        float* o = out + (size_t)i * C;
        c = 0;
#if LN_VEC
        const vf vmf = vf_set1(mf), vr = vf_set1(r);
        for (; c + VF <= C; c += VF) {
            vf xh = vf_xhat(x + c, vmf, vr);
            vf_store(o + c, vf_add(vf_mul(xh, vf_load(weight + c)), vf_load(bias + c)));
        }
#endif
        for (; c < C; c++) o[c] = (x[c] - mf) * r * weight[c] + bias[c];
        mean[i] = mf;
        rstd[i] = r;
    }
    return MG_OK;
}

mg_status mg_layernorm_backward(float* dinp, float* dweight, float* dbias,
                                const float* dout, const float* inp,
                                const float* weight, const float* mean,
                                const float* rstd, int N, int C) {
    MG_TRY(check_layernorm_backward(__func__, dout, inp, weight, mean, rstd, N, C));
    /* One parallel region for both passes, with no barrier between them:
     * they read the same inputs and write different outputs. */
    const int CB = 16;
    const int nblk = (C + CB - 1) / CB;
    #pragma omp parallel if ((size_t)N * C >= MG_PAR_MIN)
    {
        if (dinp) {
            /* out = xhat * w + b, xhat = (x - mean) * rstd:
             * dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
            #pragma omp for schedule(static) nowait
            for (int i = 0; i < N; i++) {
                const float* x = inp + (size_t)i * C;
                const float* g = dout + (size_t)i * C;
                float m = mean[i], r = rstd[i];
                /* float lanes here: C / LANES terms each, then summed in double */
                float a[LANES] = {0}, bsum[LANES] = {0};
                int c = 0;
#if LN_VEC
                enum { NF = LANES / VF };
                const vf vm = vf_set1(m), vr = vf_set1(r);
                vf va[NF], vb[NF];
                for (int k = 0; k < NF; k++) va[k] = vb[k] = vf_zero();
                for (; c + LANES <= C; c += LANES)
                    for (int k = 0; k < NF; k++) {
                        const int ck = c + k * VF;
                        vf xh = vf_xhat(x + ck, vm, vr);
                        vf dxh = vf_mul(vf_load(g + ck), vf_load(weight + ck));
                        va[k] = vf_add(va[k], dxh);
                        vb[k] = vf_add(vb[k], vf_mul(dxh, xh));
                    }
                for (int k = 0; k < NF; k++) {
                    vf_store(a + k * VF, va[k]);
                    vf_store(bsum + k * VF, vb[k]);
                }
#endif
                for (; c + LANES <= C; c += LANES)
                    for (int l = 0; l < LANES; l++) {
                        float xh = (x[c + l] - m) * r, dxh = g[c + l] * weight[c + l];
                        a[l] += dxh;
                        bsum[l] += dxh * xh;
                    }
                for (int l = 0; c < C; c++, l++) {
                    float xh = (x[c] - m) * r, dxh = g[c] * weight[c];
                    a[l] += dxh;
                    bsum[l] += dxh * xh;
                }
                float ma = (float)(lane_total_f(a) / C), mb = (float)(lane_total_f(bsum) / C);
                float* dx = dinp + (size_t)i * C;
                c = 0;
#if LN_VEC
                const vf vma = vf_set1(ma), vmb = vf_set1(mb);
                for (; c + VF <= C; c += VF) {
                    vf xh = vf_xhat(x + c, vm, vr);
                    vf dxh = vf_mul(vf_load(g + c), vf_load(weight + c));
                    vf t = vf_sub(vf_sub(dxh, vma), vf_mul(xh, vmb));
                    vf_store(dx + c, vf_add(vf_load(dx + c), vf_mul(vr, t)));
                }
#endif
                for (; c < C; c++) {
                    float xh = (x[c] - m) * r;
                    float dxh = g[c] * weight[c];
                    dx[c] += r * (dxh - ma - xh * mb);
                }
            }
        }
        if (dweight || dbias) {
            #pragma omp for schedule(static)
            for (int blk = 0; blk < nblk; blk++) {
                int c0 = blk * CB, c1 = MG_MIN(C, c0 + CB);
                float accw[16] = {0}, accb[16] = {0};
#if defined(__AVX512F__)
                __mmask16 mk = (__mmask16)((1u << (c1 - c0)) - 1);
                __m512 vw = _mm512_setzero_ps(), vb = _mm512_setzero_ps();
                for (int i = 0; i < N; i++) {
                    __m512 x = _mm512_maskz_loadu_ps(mk, inp + (size_t)i * C + c0);
                    __m512 g = _mm512_maskz_loadu_ps(mk, dout + (size_t)i * C + c0);
                    __m512 xh = _mm512_sub_ps(x, _mm512_set1_ps(mean[i]));
                    vw = _mm512_add_ps(vw, _mm512_mul_ps(_mm512_mul_ps(g, xh), _mm512_set1_ps(rstd[i])));
                    vb = _mm512_add_ps(vb, g);
                }
                _mm512_storeu_ps(accw, vw);
                _mm512_storeu_ps(accb, vb);
#elif LN_VEC
                const int w = c1 - c0;   /* 1..16 valid channels: lanes j < w */
                const __m256i m0 = tail_mask(w), m1 = tail_mask(w - 8);
                __m256 vw0 = _mm256_setzero_ps(), vw1 = vw0, vb0 = vw0, vb1 = vw0;
                for (int i = 0; i < N; i++) {
                    const float* xr = inp + (size_t)i * C + c0;
                    const float* gr = dout + (size_t)i * C + c0;
                    const __m256 vm = _mm256_set1_ps(mean[i]), vr = _mm256_set1_ps(rstd[i]);
                    __m256 g0 = _mm256_maskload_ps(gr, m0), g1 = _mm256_maskload_ps(gr + 8, m1);
                    __m256 xh0 = _mm256_sub_ps(_mm256_maskload_ps(xr, m0), vm);
                    __m256 xh1 = _mm256_sub_ps(_mm256_maskload_ps(xr + 8, m1), vm);
                    vw0 = _mm256_add_ps(vw0, _mm256_mul_ps(_mm256_mul_ps(g0, xh0), vr));
                    vw1 = _mm256_add_ps(vw1, _mm256_mul_ps(_mm256_mul_ps(g1, xh1), vr));
                    vb0 = _mm256_add_ps(vb0, g0);
                    vb1 = _mm256_add_ps(vb1, g1);
                }
                _mm256_storeu_ps(accw, vw0);
                _mm256_storeu_ps(accw + 8, vw1);
                _mm256_storeu_ps(accb, vb0);
                _mm256_storeu_ps(accb + 8, vb1);
#else
                for (int i = 0; i < N; i++) {
                    const float* x = inp + (size_t)i * C;
                    const float* g = dout + (size_t)i * C;
                    float m = mean[i], r = rstd[i];
                    for (int c = c0; c < c1; c++) {
                        accw[c - c0] += g[c] * (x[c] - m) * r;
                        accb[c - c0] += g[c];
                    }
                }
#endif
                for (int c = c0; c < c1; c++) {
                    if (dweight) dweight[c] += accw[c - c0];
                    if (dbias) dbias[c] += accb[c - c0];
                }
            }
        }
    }
    return MG_OK;
}
