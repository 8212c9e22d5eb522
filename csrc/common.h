/*
 * common.h — private helpers shared by the kernel files: argument checks that
 * record a message and return a status, thread-count helpers, OpenMP shims.
 * Not part of the API (mingpt.h is); macros are fine here.
 */
#ifndef MINGPT_COMMON_H
#define MINGPT_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include "mingpt.h"

#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* Records a formatted message for mg_last_error() and returns status. */
mg_status mg_fail(mg_status status, const char* func, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The name a failed check is recorded under: the enclosing function, except
 * in checks.c, whose helpers record it under the public function's name. */
#define MG_FUNC __func__

/* Validate before any work: MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d ...", C); */
#define MG_CHECK(cond, status, ...) \
    do { if (!(cond)) return mg_fail((status), MG_FUNC, __VA_ARGS__); } while (0)

#define MG_CHECK_PTR(p) MG_CHECK((p) != NULL, MG_ERR_NULL, "%s is NULL", #p)
#define MG_CHECK_POS(x) MG_CHECK((x) > 0, MG_ERR_SHAPE, "%s=%d must be positive", #x, (int)(x))

/* A status-returning helper's failure passes straight up. */
#define MG_TRY(call) \
    do { mg_status st_ = (call); if (st_ != MG_OK) return st_; } while (0)

/* Argument checks shared by mg_X and its CUDA twin mg_cuda_X (checks.c),
 * called first thing as MG_TRY(check_X(__func__, ...)) with the public
 * function's arguments; a failure is recorded under func. Where the twins
 * check differently (token ids are range-checked on the host only), the
 * extra check stays in the kernel file. gelu, relu, residual and the global
 * norm check only their pointers, in one line each, and keep them in place. */
mg_status check_sgemm(const char* func, int transA, int transB, int M, int N, int K,
                      const float* A, int lda, const float* B, int ldb,
                      float beta, const float* Cm, int ldc);
mg_status check_matmul_forward(const char* func, const float* out, const float* inp,
                               const float* weight, int N, int C, int OC);
mg_status check_matmul_backward(const char* func, const float* dout, const float* inp,
                                const float* weight, int N, int C, int OC);
mg_status check_embedding_forward(const char* func, const float* out, const int32_t* tokens,
                                  const float* wte, const float* wpe, float scale,
                                  int B, int T, int C, int V, int maxT);
mg_status check_embedding_backward(const char* func, const float* dout, const int32_t* tokens,
                                   float scale, int B, int T, int C, int V, int maxT);
mg_status check_layernorm_forward(const char* func, const float* out, const float* mean,
                                  const float* rstd, const float* inp, const float* weight,
                                  const float* bias, int N, int C, float eps);
mg_status check_layernorm_backward(const char* func, const float* dout, const float* inp,
                                   const float* weight, const float* mean,
                                   const float* rstd, int N, int C);
mg_status check_attention_forward(const char* func, const float* out, const float* att,
                                  const float* qkv, int B, int T, int C, int NH);
mg_status check_attention_backward(const char* func, const float* dqkv, const float* scratch,
                                   const float* dout, const float* qkv, const float* att,
                                   int B, int T, int C, int NH);
mg_status check_cross_attention_forward(const char* func, const float* out, const float* att,
                                        const float* q, const float* kv,
                                        int B, int Tq, int Tk, int C, int NH);
mg_status check_cross_attention_backward(const char* func, const float* dq, const float* dkv,
                                         const float* scratch, const float* dout,
                                         const float* q, const float* kv, const float* att,
                                         int B, int Tq, int Tk, int C, int NH);
mg_status check_attention_decode(const char* func, const float* out, const float* kcache,
                                 const float* vcache, const float* scratch, const float* qkv,
                                 int B, int Tn, int pos, int maxT, int C, int NH);
mg_status check_dropout_forward(const char* func, const float* out, const uint8_t* mask,
                                const float* inp, float p);
mg_status check_dropout_backward(const char* func, const float* dinp, const float* dout,
                                 const uint8_t* mask, float p);
mg_status check_crossentropy_forward(const char* func, const float* losses, const float* probs,
                                     const float* logits, const int32_t* targets, int N, int V,
                                     float smoothing);
mg_status check_crossentropy_backward(const char* func, const float* dlogits,
                                      const float* dlosses, const float* probs,
                                      const int32_t* targets, int N, int V, float smoothing);
mg_status check_adamw_update(const char* func, const float* params, const float* m,
                             const float* v, const float* grads, float lr, float beta1,
                             float beta2, float eps, float grad_scale, int t);
mg_status check_ema_update(const char* func, const float* avg, const float* x, float decay);

/* Work (in elements touched) below which a loop runs on one thread: a
 * parallel region costs microseconds, and far more on a busy machine where
 * the partner thread must first be scheduled. */
enum { MG_PAR_MIN = 1 << 15 };

/* Pieces of kernels that mg_gpt_decode_step (decode.c) runs inside its own
 * parallel region; each file's public kernel documents the arguments. */
int gemv_items(int OC);   /* work items of a GEMV with OC output channels */
void gemv_item(float* out, const float* inp, const float* weight, const float* bias,
               int N, int C, int OC, int q);
void decode_head(float* out, float* kcache, float* vcache, float* scratch, const float* qkv,
                 int bh, int Tn, int pos, int maxT, int C, int NH);

#define MG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MG_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif /* MINGPT_COMMON_H */
