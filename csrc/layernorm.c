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
    MG_CHECK_PTR(out); MG_CHECK_PTR(mean); MG_CHECK_PTR(rstd); MG_CHECK_PTR(inp);
    MG_CHECK_PTR(weight); MG_CHECK_PTR(bias);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C);
    MG_CHECK(eps > 0.0f, MG_ERR_VALUE, "eps=%g must be positive", (double)eps);
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= MG_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        double acc[LANES] = {0}, vacc[LANES] = {0};
        int c = 0;
        for (; c + LANES <= C; c += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += x[c + l];
        for (int l = 0; c < C; c++, l++) acc[l] += x[c];
        double m = lane_total(acc) / C;
        for (c = 0; c + LANES <= C; c += LANES)
            for (int l = 0; l < LANES; l++) { double d = x[c + l] - m; vacc[l] += d * d; }
        for (int l = 0; c < C; c++, l++) { double d = x[c] - m; vacc[l] += d * d; }
        double v = lane_total(vacc) / C;
        float r = (float)(1.0 / sqrt(v + (double)eps));
        float mf = (float)m;
        float* o = out + (size_t)i * C;
        for (int c = 0; c < C; c++) o[c] = (x[c] - mf) * r * weight[c] + bias[c];
        mean[i] = mf;
        rstd[i] = r;
    }
    return MG_OK;
}

mg_status mg_layernorm_backward(float* dinp, float* dweight, float* dbias,
                                const float* dout, const float* inp,
                                const float* weight, const float* mean,
                                const float* rstd, int N, int C) {
    MG_CHECK_PTR(dout); MG_CHECK_PTR(inp); MG_CHECK_PTR(weight);
    MG_CHECK_PTR(mean); MG_CHECK_PTR(rstd);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C);
    if (dinp) {
        /* out = xhat * w + b, xhat = (x - mean) * rstd:
         * dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
        #pragma omp parallel for schedule(static) if ((size_t)N * C >= MG_PAR_MIN)
        for (int i = 0; i < N; i++) {
            const float* x = inp + (size_t)i * C;
            const float* g = dout + (size_t)i * C;
            float m = mean[i], r = rstd[i];
            /* float lanes here: C / LANES terms each, then summed in double */
            float a[LANES] = {0}, bsum[LANES] = {0};
            int c = 0;
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
            for (c = 0; c < C; c++) {
                float xh = (x[c] - m) * r;
                float dxh = g[c] * weight[c];
                dx[c] += r * (dxh - ma - xh * mb);
            }
        }
    }
    if (dweight || dbias) {
        const int CB = 16;
        int nblk = (C + CB - 1) / CB;
        #pragma omp parallel for schedule(static) if ((size_t)N * C >= MG_PAR_MIN)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * CB, c1 = MG_MIN(C, c0 + CB);
            float accw[16] = {0}, accb[16] = {0};
            for (int i = 0; i < N; i++) {
                const float* x = inp + (size_t)i * C;
                const float* g = dout + (size_t)i * C;
                float m = mean[i], r = rstd[i];
                for (int c = c0; c < c1; c++) {
                    accw[c - c0] += g[c] * (x[c] - m) * r;
                    accb[c - c0] += g[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dweight) dweight[c] += accw[c - c0];
                if (dbias) dbias[c] += accb[c - c0];
            }
        }
    }
    return MG_OK;
}
