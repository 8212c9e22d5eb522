/*
 * heads.cuh — what the self-attention (attention.cu) and the cross-attention
 * (cross_attention.cu) share on the GPU: warp reductions, the row-softmax
 * launch shape, a strided-batched cuBLAS product over the (b, h) pairs, and
 * the moves between the (B,T,C) layout of the activations and the
 * (B,NH,T,hs) layout of the per-head products. Static: each .cu that
 * includes it gets its own copy (the .cu files link into one module).
 */
#ifndef MINGPT_CUDA_HEADS_CUH
#define MINGPT_CUDA_HEADS_CUH

#include "common.cuh"

static const unsigned FULL_MASK = 0xffffffffu;

// Rows (of keys) per softmax block: one warp each.
enum { ROW_THREADS = 256, ROWS_PER_BLOCK = ROW_THREADS / 32 };

static unsigned elementwise_grid(size_t n, int threads) {
    unsigned g = cuda_grid(n, threads);
    return g > (1u << 20) ? (1u << 20) : g;
}

// Sum over the warp in a fixed tree (shfl_down), lane 0's result given to all.
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    return __shfl_sync(FULL_MASK, v, 0);
}

// Max over the warp (exact in any order; NaNs are dropped by fmaxf, so the
// callers track them apart).
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// For i < batch: row-major Cm_i (M,N) = A'_i @ B'_i, X_i = X + i*sX, one
// cuBLAS call. The column-major mapping is matmul.cu's: Cm^T = B'^T A'^T.
static mg_status gemm_batched(int transA, int transB, int M, int N, int K,
                              const float* A, int lda, long long sA,
                              const float* B, int ldb, long long sB,
                              float* Cm, int ldc, long long sC, int batch) {
    cublasHandle_t handle;
    MG_TRY(cuda_blas(&handle));
    const float alpha = 1.0f, beta = 0.0f;
    const cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    MG_CUBLAS_TRY(cublasGemmStridedBatchedEx(handle, opB, opA, N, M, K, &alpha,
                                             B, CUDA_R_32F, ldb, sB, A, CUDA_R_32F, lda, sA,
                                             &beta, Cm, CUDA_R_32F, ldc, sC, batch,
                                             cuda_compute_type(), CUBLAS_GEMM_DEFAULT));
    return MG_OK;
}

// dst (B,NH,T,hs) = the heads of src (B,T,C), whose rows are ld apart.
// One thread per element in src order: reads coalesce, writes in runs of hs.
static __global__ void split_heads_kernel(float* dst, const float* src, size_t ld,
                                          int B, int T, int C, int NH) {
    const int hs = C / NH;
    const size_t n = (size_t)B * T * C;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const size_t row = i / (size_t)C;               // b*T + t
        const int c = (int)(i - row * (size_t)C);
        const int h = c / hs, d = c - h * hs;
        const size_t b = row / (size_t)T, t = row - b * (size_t)T;
        dst[((b * NH + h) * T + t) * hs + d] = src[row * ld + c];
    }
}

// dst (B,T,C), rows ld apart, = (or += with accumulate) the heads src
// (B,NH,T,hs) merged back. Without accumulate dst is never read.
static __global__ void merge_heads_kernel(float* dst, size_t ld, const float* src,
                                          int B, int T, int C, int NH, int accumulate) {
    const int hs = C / NH;
    const size_t n = (size_t)B * T * C;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const size_t row = i / (size_t)C;
        const int c = (int)(i - row * (size_t)C);
        const int h = c / hs, d = c - h * hs;
        const size_t b = row / (size_t)T, t = row - b * (size_t)T;
        const float x = src[((b * NH + h) * T + t) * hs + d];
        float* p = dst + row * ld + c;
        *p = accumulate ? *p + x : x;
    }
}

static mg_status split_heads(float* dst, const float* src, size_t ld,
                             int B, int T, int C, int NH) {
    const size_t n = (size_t)B * T * C;
    split_heads_kernel<<<elementwise_grid(n, 256), 256, 0, cuda_stream()>>>(dst, src, ld,
                                                                            B, T, C, NH);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

static mg_status merge_heads(float* dst, size_t ld, const float* src,
                             int B, int T, int C, int NH, int accumulate) {
    const size_t n = (size_t)B * T * C;
    merge_heads_kernel<<<elementwise_grid(n, 256), 256, 0, cuda_stream()>>>(dst, ld, src,
                                                                            B, T, C, NH,
                                                                            accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

#endif
