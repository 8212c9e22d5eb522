/*
 * decode.c — one position of a GPT forward in one call: token-by-token
 * sampling with a KV cache.
 *
 * Each sampled token reads every weight once (the small config's 42 MB, more
 * than the cache holds), so a step is bound by memory, and as separate
 * kernel calls it also paid a Python call and an OpenMP fork and join per
 * kernel: about 60 and 30 a token. Here the whole stack runs in one parallel
 * region: the matrix-vector products and the attention heads are shared out
 * with worksharing loops, and the small serial pieces (layernorm, residual,
 * GELU of one row) run on one thread between barriers. They call the same
 * kernels as the separate calls (gemv_item, decode_head, the layernorm,
 * residual and GELU kernels on one row, which run serially here), in the
 * same order, so the logits are bit for bit those of the separate calls.
 *
 *   x = wte[token] + wpe[pos]
 *   per block: x += proj(attn(ln_1(x)));  x += fcproj(gelu(fc(ln_2(x))))
 *   logits = ln_f(x) @ wte^T
 */
#include "common.h"

// out (OC) = w (OC, C) @ inp (C) + bias: the items shared among the team
// (an orphaned worksharing loop; its end is a barrier).
static void gemv_shared(float* out, const float* inp, const float* w, const float* bias,
                        int C, int OC) {
    int n = gemv_items(OC);
    #pragma omp for schedule(static)
    for (int q = 0; q < n; q++) gemv_item(out, inp, w, bias, 1, C, OC, q);
}

// work: x (C) | h (C) | qkv (3C) | y (C) | t (C) | fc (4C) | g (4C) | mean, rstd | scratch (NH, maxT)
mg_status mg_gpt_decode_workspace(size_t* nwork, int C, int NH, int maxT) {
    MG_CHECK_PTR(nwork);
    MG_CHECK_POS(C); MG_CHECK_POS(NH); MG_CHECK_POS(maxT);
    *nwork = 15 * (size_t)C + 2 + (size_t)NH * maxT;
    return MG_OK;
}

mg_status mg_gpt_decode_step(float* logits, float* work, size_t nwork, const mg_decode_layer* layers,
                             const float* wte, const float* wpe, const float* lnf_w,
                             const float* lnf_b, int token, int pos, int L, int maxT,
                             int C, int NH, int V, float eps) {
    MG_CHECK_PTR(logits); MG_CHECK_PTR(work); MG_CHECK_PTR(layers);
    MG_CHECK_PTR(wte); MG_CHECK_PTR(wpe); MG_CHECK_PTR(lnf_w); MG_CHECK_PTR(lnf_b);
    MG_CHECK_POS(L); MG_CHECK_POS(maxT); MG_CHECK_POS(C); MG_CHECK_POS(NH); MG_CHECK_POS(V);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    MG_CHECK(eps > 0.0f, MG_ERR_VALUE, "eps=%g must be positive", (double)eps);
    MG_CHECK(token >= 0 && token < V, MG_ERR_INDEX, "token id %d outside [0, %d)", token, V);
    MG_CHECK(pos >= 0 && pos < maxT, MG_ERR_SHAPE,
             "position %d does not fit a cache of %d (reset the cache)", pos, maxT);
    size_t need = 0;
    (void)mg_gpt_decode_workspace(&need, C, NH, maxT);   // cannot fail: sizes checked above
    MG_CHECK(nwork >= need, MG_ERR_SHAPE, "work has %zu floats, needs %zu", nwork, need);
    for (int l = 0; l < L; l++) {
        const mg_decode_layer* w = layers + l;
        MG_CHECK(w->ln_1_w && w->ln_1_b && w->attn_w && w->attn_b && w->proj_w && w->proj_b &&
                 w->ln_2_w && w->ln_2_b && w->fc_w && w->fc_b && w->fcproj_w && w->fcproj_b &&
                 w->kcache && w->vcache, MG_ERR_NULL, "layer %d has a NULL pointer", l);
    }
    // work, laid out as mg_gpt_decode_workspace counts it
    float* x = work;
    float* h = x + C;
    float* qkv = h + C;
    float* y = qkv + 3 * (size_t)C;
    float* t = y + C;
    float* fc = t + C;
    float* g = fc + 4 * (size_t)C;
    float* mean = g + 4 * (size_t)C;
    float* rstd = mean + 1;
    float* scratch = rstd + 1;
    const float* te = wte + (size_t)token * C;
    const float* pe = wpe + (size_t)pos * C;
    for (int c = 0; c < C; c++) x[c] = te[c] + pe[c];

    // The row kernels below cannot fail: their arguments were checked above.
    #pragma omp parallel
    {
        for (int l = 0; l < L; l++) {
            const mg_decode_layer* w = layers + l;
            #pragma omp single
            (void)mg_layernorm_forward(h, mean, rstd, x, w->ln_1_w, w->ln_1_b, 1, C, eps);
            gemv_shared(qkv, h, w->attn_w, w->attn_b, C, 3 * C);
            #pragma omp for schedule(static)
            for (int hh = 0; hh < NH; hh++)
                decode_head(y, w->kcache, w->vcache, scratch, qkv, hh, 1, pos, maxT, C, NH);
            gemv_shared(t, y, w->proj_w, w->proj_b, C, C);
            #pragma omp single
            {
                (void)mg_residual_forward(x, x, t, C);
                (void)mg_layernorm_forward(h, mean, rstd, x, w->ln_2_w, w->ln_2_b, 1, C, eps);
            }
            gemv_shared(fc, h, w->fc_w, w->fc_b, C, 4 * C);
            #pragma omp single
            (void)mg_gelu_forward(g, fc, 4 * (size_t)C);
            gemv_shared(t, g, w->fcproj_w, w->fcproj_b, 4 * C, C);
            #pragma omp single
            (void)mg_residual_forward(x, x, t, C);
        }
        #pragma omp single
        (void)mg_layernorm_forward(h, mean, rstd, x, lnf_w, lnf_b, 1, C, eps);
        gemv_shared(logits, h, wte, NULL, C, V);
    }
    return MG_OK;
}
