/*
 * residual.c — the residual add, forward and backward.
 *   out = inp1 + inp2;  dinp1 += dout, dinp2 += dout
 */
#include "common.h"

mg_status mg_residual_forward(float* out, const float* inp1, const float* inp2, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp1); MG_CHECK_PTR(inp2);
    #pragma omp parallel for schedule(static) if (N >= MG_PAR_MIN)
    for (size_t i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];
    return MG_OK;
}

mg_status mg_residual_backward(float* dinp1, float* dinp2, const float* dout, size_t N) {
    MG_CHECK_PTR(dout);
    #pragma omp parallel for schedule(static) if (N >= MG_PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        if (dinp1) dinp1[i] += dout[i];
        if (dinp2) dinp2[i] += dout[i];
    }
    return MG_OK;
}
