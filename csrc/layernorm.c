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
        double s = 0.0;
        for (int c = 0; c < C; c++) s += x[c];
        double m = s / C;
        double v = 0.0;
        for (int c = 0; c < C; c++) { double d = x[c] - m; v += d * d; }
        v /= C;
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
            double a = 0.0, bsum = 0.0;
            for (int c = 0; c < C; c++) {
                float xh = (x[c] - m) * r;
                float dxh = g[c] * weight[c];
                a += dxh;
                bsum += (double)dxh * xh;
            }
            float ma = (float)(a / C), mb = (float)(bsum / C);
            float* dx = dinp + (size_t)i * C;
            for (int c = 0; c < C; c++) {
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
