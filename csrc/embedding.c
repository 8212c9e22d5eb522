/*
 * embedding.c — token + position embedding, forward and backward, and the
 * fixed sinusoidal position table.
 *   out[b,t,:] = scale * wte[tokens[b,t],:] + wpe[t,:]
 * scale is 1 for GPT-2, sqrt(C) for the Transformer (Vaswani et al. 2017,
 * section 3.4) and Marian. 1.0f * x is exact, so scale 1 gives the bits of
 * the unscaled sum (the product is its own rounding: no fused multiply-add
 * under -std=c11, whose default is -ffp-contract=off).
 * Backward scatters scale * dout into dwte by token id. Rows of dwte can be
 * hit by many (b,t), so the parallel loop runs over channel blocks instead of
 * rows: every thread owns a disjoint slice of channels and walks all
 * positions in order, which keeps the sums deterministic without atomics.
 * The sinusoid table is computed in double and rounded once to float, as
 * Hugging Face computes Marian's (numpy float64, then a float32 tensor): the
 * same angles, so the same floats, but for a rare last-bit difference where
 * two implementations of sin round a near-tie apart.
 */
#include <math.h>

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
                               const float* wte, const float* wpe, float scale,
                               int B, int T, int C, int V, int maxT) {
    MG_TRY(check_embedding_forward(__func__, out, tokens, wte, wpe, scale, B, T, C, V, maxT));
    MG_TRY(check_tokens(tokens, (size_t)B * T, V, __func__));   /* host only */
    #pragma omp parallel for schedule(static) if ((size_t)B * T * C >= MG_PAR_MIN)
    for (long bt = 0; bt < (long)B * T; bt++) {
        int t = (int)(bt % T);
        const float* te = wte + (size_t)tokens[bt] * C;
        const float* pe = wpe + (size_t)t * C;
        float* o = out + (size_t)bt * C;
        for (int c = 0; c < C; c++) o[c] = scale * te[c] + pe[c];
    }
    return MG_OK;
}

mg_status mg_embedding_backward(float* dwte, float* dwpe, const float* dout,
                                const int32_t* tokens, float scale,
                                int B, int T, int C, int V, int maxT) {
    MG_TRY(check_embedding_backward(__func__, dout, tokens, scale, B, T, C, V, maxT));
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
                /* Forward: out = scale * wte[token] + wpe[t] */
                for (int c = c0; c < c1; c++) d[c] += scale * g[c];
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

/* ---------------------------------------------------------------- sinusoid */

mg_status mg_sinusoid_table(float* pe, int maxT, int C, int interleaved) {
    MG_CHECK_PTR(pe);
    MG_CHECK_POS(maxT); MG_CHECK_POS(C);
    MG_CHECK(interleaved == 0 || interleaved == 1, MG_ERR_VALUE,
             "interleaved=%d must be 0 or 1", interleaved);
    const int h = (C + 1) / 2;   /* sin columns of the half layout */
    #pragma omp parallel for schedule(static) if ((size_t)maxT * C >= MG_PAR_MIN)
    for (int t = 0; t < maxT; t++) {
        float* row = pe + (size_t)t * C;
        /* Frequency i's angle, written as Hugging Face writes it (a division
         * by the power, not a multiplication by its inverse) so that the
         * doubles are the same: t / 10000^(2i/C). */
        for (int i = 0; i < h; i++) {
            const double a = (double)t / pow(10000.0, (double)(2 * i) / (double)C);
            const int sin_col = interleaved ? 2 * i : i;
            const int cos_col = interleaved ? 2 * i + 1 : h + i;
            row[sin_col] = (float)sin(a);
            if (cos_col < C) row[cos_col] = (float)cos(a);   /* odd C: one cos fewer */
        }
    }
    return MG_OK;
}
