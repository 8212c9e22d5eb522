/*
 * matmul.c — GEMM and the linear layer (PLACEHOLDER: simple loops; the
 * blocked, packed AVX2 kernel replaces the body of sgemm).
 *   out (N,OC) = inp (N,C) @ weight^T (OC,C) + bias (OC)
 */
#include "common.h"

static inline float elem(const float* X, int ld, int trans, int r, int c) {
    return trans ? X[(size_t)c * ld + r] : X[(size_t)r * ld + c];
}

mg_status mg_sgemm(int transA, int transB, int M, int N, int K,
                   const float* A, int lda, const float* B, int ldb,
                   float beta, float* Cm, int ldc) {
    MG_CHECK_PTR(A); MG_CHECK_PTR(B); MG_CHECK_PTR(Cm);
    MG_CHECK(M >= 0 && N >= 0 && K >= 0, MG_ERR_SHAPE, "negative size M=%d N=%d K=%d", M, N, K);
    MG_CHECK(beta == 0.0f || beta == 1.0f, MG_ERR_VALUE, "beta=%g must be 0 or 1", (double)beta);
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        float* c = Cm + (size_t)i * ldc;
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++) s += elem(A, lda, transA, i, k) * elem(B, ldb, transB, k, j);
            c[j] = (beta == 0.0f ? 0.0f : c[j]) + s;
        }
    }
    return MG_OK;
}

mg_status mg_matmul_forward(float* out, const float* inp, const float* weight,
                            const float* bias, int N, int C, int OC) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp); MG_CHECK_PTR(weight);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C); MG_CHECK_POS(OC);
    mg_status st = mg_sgemm(0, 1, N, OC, C, inp, C, weight, C, 0.0f, out, OC);
    if (st != MG_OK || !bias) return st;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) out[(size_t)i * OC + o] += bias[o];
    return MG_OK;
}

mg_status mg_matmul_backward(float* dinp, float* dweight, float* dbias,
                             const float* dout, const float* inp,
                             const float* weight, int N, int C, int OC) {
    MG_CHECK_PTR(dout); MG_CHECK_PTR(inp); MG_CHECK_PTR(weight);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C); MG_CHECK_POS(OC);
    mg_status st;
    if (dinp && (st = mg_sgemm(0, 0, N, C, OC, dout, OC, weight, C, 1.0f, dinp, C)) != MG_OK)
        return st;
    if (dweight && (st = mg_sgemm(1, 0, OC, C, N, dout, OC, inp, C, 1.0f, dweight, C)) != MG_OK)
        return st;
    if (dbias) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int i = 0; i < N; i++) s += dout[(size_t)i * OC + o];
            dbias[o] += s;
        }
    }
    return MG_OK;
}
