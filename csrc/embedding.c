/*
 * embedding.c — token + position embedding, forward and backward.
 *   out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
 * Backward scatters dout into dwte by token id. Rows of dwte can be hit by
 * many (b,t), so the parallel loop runs over channel blocks instead of rows:
 * every thread owns a disjoint slice of channels and walks all positions in
 * order, which keeps the sums deterministic without atomics.
 */
#include "common.h"

static mg_status check_tokens(const int32_t* tokens, size_t n, int V, const char* fn) {
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return mg_fail(MG_ERR_INDEX, fn, "token id %d at position %zu outside [0, %d)",
                           tokens[i], i, V);
    }
    return MG_OK;
}

mg_status mg_embedding_forward(float* out, const int32_t* tokens,
                               const float* wte, const float* wpe,
                               int B, int T, int C, int V, int maxT) {
    MG_TRY(check_embedding_forward(__func__, out, tokens, wte, wpe, B, T, C, V, maxT));
    MG_TRY(check_tokens(tokens, (size_t)B * T, V, __func__));   /* host only */
    #pragma omp parallel for schedule(static) if ((size_t)B * T * C >= MG_PAR_MIN)
    for (long bt = 0; bt < (long)B * T; bt++) {
        int t = (int)(bt % T);
        const float* te = wte + (size_t)tokens[bt] * C;
        const float* pe = wpe + (size_t)t * C;
        float* o = out + (size_t)bt * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
    return MG_OK;
}

mg_status mg_embedding_backward(float* dwte, float* dwpe, const float* dout,
                                const int32_t* tokens,
                                int B, int T, int C, int V, int maxT) {
    MG_TRY(check_embedding_backward(__func__, dout, tokens, B, T, C, V, maxT));
    MG_TRY(check_tokens(tokens, (size_t)B * T, V, __func__));   /* host only */
    const int CB = 16;  /* one cache line of channels per work item */
    int nblk = (C + CB - 1) / CB;
    if (dwte) {
        #pragma omp parallel for schedule(static) if ((size_t)B * T * C >= MG_PAR_MIN)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * CB, c1 = MG_MIN(C, c0 + CB);
            for (size_t bt = 0; bt < (size_t)B * T; bt++) {
                float* d = dwte + (size_t)tokens[bt] * C;
                const float* g = dout + bt * C;
                for (int c = c0; c < c1; c++) d[c] += g[c];
            }
        }
    }
    if (dwpe) {
        #pragma omp parallel for schedule(static) if ((size_t)B * T * C >= MG_PAR_MIN)
        for (int t = 0; t < T; t++) {
            float* d = dwpe + (size_t)t * C;
            for (int b = 0; b < B; b++) {
                const float* g = dout + ((size_t)b * T + t) * C;
                for (int c = 0; c < C; c++) d[c] += g[c];
            }
        }
    }
    return MG_OK;
}
