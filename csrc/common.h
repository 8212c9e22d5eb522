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

/* Validate before any work: MG_CHECK(C % NH == 0, MG_ERR_SHAPE, "C=%d ...", C); */
#define MG_CHECK(cond, status, ...) \
    do { if (!(cond)) return mg_fail((status), __func__, __VA_ARGS__); } while (0)

#define MG_CHECK_PTR(p) MG_CHECK((p) != NULL, MG_ERR_NULL, "%s is NULL", #p)
#define MG_CHECK_POS(x) MG_CHECK((x) > 0, MG_ERR_SHAPE, "%s=%d must be positive", #x, (int)(x))

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
