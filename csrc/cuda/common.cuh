/*
 * common.cuh — private helpers of the CUDA path: status checks that turn a
 * CUDA or cuBLAS error into the project's status with the driver's message,
 * the runtime's one stream, cuBLAS handle and scratch arena, launch sizes.
 * Not part of the API (mingpt.h is); macros are fine here.
 */
#ifndef MINGPT_CUDA_COMMON_CUH
#define MINGPT_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cublas_v2.h>

extern "C" {
#include "../common.h"
}

/* Returns MG_ERR_CUDA from the calling function when a runtime call fails. */
#define MG_CUDA_TRY(call)                                                       \
    do {                                                                        \
        cudaError_t e_ = (call);                                                \
        if (e_ != cudaSuccess)                                                  \
            return mg_fail(MG_ERR_CUDA, __func__, "%s: %s (%s)", #call,         \
                           cudaGetErrorString(e_), cudaGetErrorName(e_));       \
    } while (0)

/* After every launch: a bad configuration or an earlier fault surfaces here. */
#define MG_LAUNCH_CHECK() MG_CUDA_TRY(cudaGetLastError())

#define MG_CUBLAS_TRY(call)                                                     \
    do {                                                                        \
        cublasStatus_t s_ = (call);                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                        \
            return mg_fail(MG_ERR_CUDA, __func__, "%s: %s", #call,              \
                           cublasGetStatusString(s_));                          \
    } while (0)

/* The runtime's one stream (runtime.cu): every kernel and copy goes on it. */
cudaStream_t cuda_stream(void);
/* The cuBLAS handle, created on first use, bound to the stream, with a fixed
 * workspace (fixed workspace + one stream: the same bits run to run). */
mg_status cuda_blas(cublasHandle_t* handle);
/* The compute type of fp32 products under the current mg_math_mode. */
cublasComputeType_t cuda_compute_type(void);
/* Scratch owned by the runtime, at least `bytes`, valid until the next
 * cuda_scratch call. It grows (never shrinks) the first time a shape needs
 * more, so a training step of a fixed shape allocates nothing. One user at a
 * time: a kernel file takes it once per call and carves its pieces from it. */
mg_status cuda_scratch(void** ptr, size_t bytes);

/* *host_result = sum of x (n), or of x^2 with square, in double, in a
 * fixed order that depends only on n; waits for the stream (runtime.cu). */
mg_status cuda_reduce(double* host_result, const float* x, size_t n, int square);

/* Blocks of `threads` covering n items (at least one block). */
static inline unsigned cuda_grid(size_t n, int threads) {
    size_t g = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned)(g ? g : 1);
}

/* Scratch pieces are carved at this alignment (bytes). */
static inline size_t cuda_align(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

#endif /* MINGPT_CUDA_COMMON_CUH */
