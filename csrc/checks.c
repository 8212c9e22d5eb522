/*
 * checks.c — the argument checks that a CPU kernel mg_X and its CUDA twin
 * mg_cuda_X share, written once. Each check_X takes the public function's
 * name (its __func__) and the arguments it checks, under the same parameter
 * names, so a failure reads exactly as if the check stood in the kernel:
 * "mg_cuda_layernorm_forward: eps=0 must be positive".
 * The checks run in the kernels' order: the first failure is the one
 * reported. Only host values are read (sizes, flags, whether a pointer is
 * NULL), never a buffer, so a device pointer is as good as a host one.
 */
#include <math.h>

#include "common.h"

/* MG_CHECK and friends below fail under the caller's name, not this file's. */
#undef MG_FUNC
#define MG_FUNC func

// ---------------------------------------------------------------- matmul

mg_status check_sgemm(const char* func, int transA, int transB, int M, int N, int K,
                      const float* A, int lda, const float* B, int ldb,
                      float beta, const float* Cm, int ldc) {
    MG_CHECK(M >= 0 && N >= 0 && K >= 0, MG_ERR_SHAPE,
             "negative size M=%d N=%d K=%d", M, N, K);
    MG_CHECK(transA == 0 || transA == 1, MG_ERR_VALUE, "transA=%d must be 0 or 1", transA);
    MG_CHECK(transB == 0 || transB == 1, MG_ERR_VALUE, "transB=%d must be 0 or 1", transB);
    MG_CHECK(beta == 0.0f || beta == 1.0f, MG_ERR_VALUE,
             "beta=%g must be 0 or 1", (double)beta);
    // Pointers that will be read or written must exist; an empty operand may be NULL.
    MG_CHECK(A != NULL || (size_t)M * K == 0, MG_ERR_NULL, "A is NULL");
    MG_CHECK(B != NULL || (size_t)K * N == 0, MG_ERR_NULL, "B is NULL");
    MG_CHECK(Cm != NULL || (size_t)M * N == 0, MG_ERR_NULL, "Cm is NULL");
    // Row strides: A is (M,K) or (K,M), B is (K,N) or (N,K), Cm is (M,N).
    int a_cols = transA ? M : K, b_cols = transB ? K : N;
    MG_CHECK(lda >= MG_MAX(1, a_cols), MG_ERR_SHAPE,
             "lda=%d is less than the %d columns of A%s", lda, a_cols, transA ? " (K,M)" : " (M,K)");
    MG_CHECK(ldb >= MG_MAX(1, b_cols), MG_ERR_SHAPE,
             "ldb=%d is less than the %d columns of B%s", ldb, b_cols, transB ? " (N,K)" : " (K,N)");
    MG_CHECK(ldc >= MG_MAX(1, N), MG_ERR_SHAPE,
             "ldc=%d is less than the %d columns of Cm", ldc, N);
    return MG_OK;
}

/* N rows may be 0 (nothing to do); the widths may not. */
static mg_status check_linear_sizes(const char* func, int N, int C, int OC) {
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C); MG_CHECK_POS(OC);
    return MG_OK;
}

mg_status check_matmul_forward(const char* func, const float* out, const float* inp,
                               const float* weight, int N, int C, int OC) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp); MG_CHECK_PTR(weight);
    return check_linear_sizes(func, N, C, OC);
}

/* dinp, dweight and dbias may each be NULL (not wanted). */
mg_status check_matmul_backward(const char* func, const float* dout, const float* inp,
                                const float* weight, int N, int C, int OC) {
    MG_CHECK_PTR(dout); MG_CHECK_PTR(inp); MG_CHECK_PTR(weight);
    return check_linear_sizes(func, N, C, OC);
}

// ---------------------------------------------------------------- embedding
// The token range is not checked here: only the CPU kernels can read the ids.

static mg_status check_embedding_sizes(const char* func, float scale,
                                       int B, int T, int C, int V, int maxT) {
    MG_CHECK(isfinite(scale), MG_ERR_VALUE, "scale=%g is not finite", (double)scale);
    MG_CHECK_POS(B); MG_CHECK_POS(T); MG_CHECK_POS(C); MG_CHECK_POS(V);
    MG_CHECK(T <= maxT, MG_ERR_SHAPE, "T=%d exceeds the block size maxT=%d", T, maxT);
    return MG_OK;
}

mg_status check_embedding_forward(const char* func, const float* out, const int32_t* tokens,
                                  const float* wte, const float* wpe, float scale,
                                  int B, int T, int C, int V, int maxT) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(tokens); MG_CHECK_PTR(wte); MG_CHECK_PTR(wpe);
    return check_embedding_sizes(func, scale, B, T, C, V, maxT);
}

/* dwte and dwpe may each be NULL (not wanted). */
mg_status check_embedding_backward(const char* func, const float* dout, const int32_t* tokens,
                                   float scale, int B, int T, int C, int V, int maxT) {
    MG_CHECK_PTR(dout); MG_CHECK_PTR(tokens);
    return check_embedding_sizes(func, scale, B, T, C, V, maxT);
}

// ---------------------------------------------------------------- layernorm

mg_status check_layernorm_forward(const char* func, const float* out, const float* mean,
                                  const float* rstd, const float* inp, const float* weight,
                                  const float* bias, int N, int C, float eps) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(mean); MG_CHECK_PTR(rstd); MG_CHECK_PTR(inp);
    MG_CHECK_PTR(weight); MG_CHECK_PTR(bias);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C);
    MG_CHECK(eps > 0.0f, MG_ERR_VALUE, "eps=%g must be positive", (double)eps);
    return MG_OK;
}

/* dinp, dweight and dbias may each be NULL (not wanted). */
mg_status check_layernorm_backward(const char* func, const float* dout, const float* inp,
                                   const float* weight, const float* mean,
                                   const float* rstd, int N, int C) {
    MG_CHECK_PTR(dout); MG_CHECK_PTR(inp); MG_CHECK_PTR(weight);
    MG_CHECK_PTR(mean); MG_CHECK_PTR(rstd);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(C);
    return MG_OK;
}

// ---------------------------------------------------------------- attention

static mg_status check_heads(const char* func, int B, int T, int C, int NH) {
    MG_CHECK_POS(B); MG_CHECK_POS(T); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    return MG_OK;
}

/* key_mask may be NULL (every key visible). */
mg_status check_attention_forward(const char* func, const float* out, const float* att,
                                  const float* qkv, int B, int T, int C, int NH) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(att); MG_CHECK_PTR(qkv);
    return check_heads(func, B, T, C, NH);
}

mg_status check_attention_backward(const char* func, const float* dqkv, const float* scratch,
                                   const float* dout, const float* qkv, const float* att,
                                   int B, int T, int C, int NH) {
    MG_CHECK_PTR(dqkv); MG_CHECK_PTR(scratch); MG_CHECK_PTR(dout);
    MG_CHECK_PTR(qkv); MG_CHECK_PTR(att);
    return check_heads(func, B, T, C, NH);
}

mg_status check_attention_decode(const char* func, const float* out, const float* kcache,
                                 const float* vcache, const float* scratch, const float* qkv,
                                 int B, int Tn, int pos, int maxT, int C, int NH) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(kcache); MG_CHECK_PTR(vcache);
    MG_CHECK_PTR(scratch); MG_CHECK_PTR(qkv);
    MG_CHECK_POS(B); MG_CHECK_POS(Tn); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK_POS(maxT);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    MG_CHECK(pos >= 0 && pos <= maxT - Tn, MG_ERR_SHAPE,
             "positions %d..%d do not fit a cache of %d (reset the cache or "
             "raise maxT)", pos, pos + Tn - 1, maxT);
    return MG_OK;
}

// ---------------------------------------------------------------- cross-attention

static mg_status check_cross_heads(const char* func, int B, int Tq, int Tk, int C, int NH) {
    MG_CHECK_POS(B); MG_CHECK_POS(Tq); MG_CHECK_POS(Tk); MG_CHECK_POS(C); MG_CHECK_POS(NH);
    MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d not divisible by NH=%d", C, NH);
    return MG_OK;
}

/* key_mask may be NULL (every key visible). */
mg_status check_cross_attention_forward(const char* func, const float* out, const float* att,
                                        const float* q, const float* kv,
                                        int B, int Tq, int Tk, int C, int NH) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(att); MG_CHECK_PTR(q); MG_CHECK_PTR(kv);
    return check_cross_heads(func, B, Tq, Tk, C, NH);
}

mg_status check_cross_attention_backward(const char* func, const float* dq, const float* dkv,
                                         const float* scratch, const float* dout,
                                         const float* q, const float* kv, const float* att,
                                         int B, int Tq, int Tk, int C, int NH) {
    MG_CHECK_PTR(dq); MG_CHECK_PTR(dkv); MG_CHECK_PTR(scratch); MG_CHECK_PTR(dout);
    MG_CHECK_PTR(q); MG_CHECK_PTR(kv); MG_CHECK_PTR(att);
    return check_cross_heads(func, B, Tq, Tk, C, NH);
}

// ---------------------------------------------------------------- dropout

mg_status check_dropout_forward(const char* func, const float* out, const uint8_t* mask,
                                const float* inp, float p) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(mask); MG_CHECK_PTR(inp);
    MG_CHECK(p >= 0.0f && p < 1.0f, MG_ERR_VALUE, "p=%g must be in [0, 1)", (double)p);
    return MG_OK;
}

mg_status check_dropout_backward(const char* func, const float* dinp, const float* dout,
                                 const uint8_t* mask, float p) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(dout); MG_CHECK_PTR(mask);
    MG_CHECK(p >= 0.0f && p < 1.0f, MG_ERR_VALUE, "p=%g must be in [0, 1)", (double)p);
    return MG_OK;
}

// ---------------------------------------------------------------- cross-entropy
// As for embedding, the target range is left to the CPU kernels.

static mg_status check_smoothing(const char* func, float smoothing) {
    MG_CHECK(smoothing >= 0.0f && smoothing < 1.0f, MG_ERR_VALUE,
             "smoothing=%g must be in [0, 1)", (double)smoothing);
    return MG_OK;
}

mg_status check_crossentropy_forward(const char* func, const float* losses, const float* probs,
                                     const float* logits, const int32_t* targets, int N, int V,
                                     float smoothing) {
    MG_CHECK_PTR(losses); MG_CHECK_PTR(probs); MG_CHECK_PTR(logits); MG_CHECK_PTR(targets);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(V);
    return check_smoothing(func, smoothing);
}

mg_status check_crossentropy_backward(const char* func, const float* dlogits,
                                      const float* dlosses, const float* probs,
                                      const int32_t* targets, int N, int V, float smoothing) {
    MG_CHECK_PTR(dlogits); MG_CHECK_PTR(dlosses); MG_CHECK_PTR(probs); MG_CHECK_PTR(targets);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(V);
    return check_smoothing(func, smoothing);
}

// ---------------------------------------------------------------- adamw

/* decay_mask may be NULL (decay everything); weight_decay is not checked. */
mg_status check_adamw_update(const char* func, const float* params, const float* m,
                             const float* v, const float* grads, float lr, float beta1,
                             float beta2, float eps, float grad_scale, int t) {
    MG_CHECK_PTR(params); MG_CHECK_PTR(m); MG_CHECK_PTR(v); MG_CHECK_PTR(grads);
    MG_CHECK(t >= 1, MG_ERR_VALUE, "step t=%d must be at least 1", t);
    MG_CHECK(isfinite(lr) && lr >= 0.0f, MG_ERR_VALUE, "lr=%g must be finite and >= 0", (double)lr);
    MG_CHECK(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f, MG_ERR_VALUE,
             "betas (%g, %g) must be in [0, 1)", (double)beta1, (double)beta2);
    MG_CHECK(eps > 0.0f, MG_ERR_VALUE, "eps=%g must be positive", (double)eps);
    MG_CHECK(isfinite(grad_scale), MG_ERR_VALUE, "grad_scale=%g is not finite", (double)grad_scale);
    return MG_OK;
}

mg_status check_ema_update(const char* func, const float* avg, const float* x, float decay) {
    MG_CHECK_PTR(avg); MG_CHECK_PTR(x);
    MG_CHECK(decay >= 0.0f && decay <= 1.0f, MG_ERR_VALUE, "decay=%g must be in [0, 1]", (double)decay);
    return MG_OK;
}
