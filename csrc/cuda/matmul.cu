/*
 * matmul.cu — the CUDA twin of matmul.c: single-precision GEMM and the linear
 * layer built on it.
 *   mg_cuda_sgemm:           Cm (M,N) = beta*Cm + A' (M,K) @ B' (K,N), row-major
 *   mg_cuda_matmul_forward:  out (N,OC) = inp (N,C) @ weight^T (C,OC) + bias (OC)
 *   mg_cuda_matmul_backward: dinp (+)= dout @ weight; dweight += dout^T @ inp;
 *                            dbias += column sums of dout
 *
 * Products go through cuBLAS (cublasGemmEx: fp32 data, the compute type of
 * the current mg_math_mode, CUBLAS_GEMM_DEFAULT). cuBLAS is column-major: a
 * row-major matrix X (r,c) with row stride ld is, to cuBLAS, the column-major
 * X^T (c,r) with leading dimension ld. So the row-major Cm = A' B' is asked
 * for as the column-major Cm^T = B'^T A'^T: B goes first, M and N swap, and
 * each operand keeps its own transpose flag (a row-major A (M,K) is the
 * column-major A^T, which is exactly A'^T; a row-major A (K,M) is read
 * transposed). The leading dimensions cuBLAS wants are then the row strides
 * mg_sgemm checks (lda >= K or M, ldb >= N or K, ldc >= N), unchanged.
 *
 * Numerics and determinism: cuBLAS on one stream with a fixed workspace and
 * CUBLAS_GEMM_DEFAULT gives the same bits run to run on one GPU (runtime.cu
 * sets that up). In MG_MATH_FP32 the products are IEEE fp32 with fp32
 * accumulation, but summed in cuBLAS's order, not matmul.c's: CPU parity is
 * to rounding (about 1e-6 relative), not bitwise. beta = 0 never reads Cm
 * (cuBLAS guarantees it), so NaNs in an overwritten output do not leak in.
 * The bias add and dbias are our own fp32 kernels whatever the math mode:
 * dbias is a two-stage column sum in a fixed order (no atomics).
 * Gotchas: cuBLAS sizes are int, as are this API's; K = 0 is handled here
 * (Cm = 0 for beta 0, untouched for beta 1) rather than left to cuBLAS.
 * Kernels are static: the .cu files are compiled separately and linked into
 * one module, where two files' same-named kernels would otherwise clash.
 */
#include <cuda_bf16.h>

#include "common.cuh"

// ---------------------------------------------------------------- helpers

// Grid-stride launches: enough blocks to fill any GPU, capped so the grid
// size never overflows; each kernel loops over the rest.
static unsigned elementwise_grid(size_t n, int threads) {
    unsigned g = cuda_grid(n, threads);
    return g > (1u << 20) ? (1u << 20) : g;
}

// bf16 copies of the operands (MG_MATH_BF16), owned by this file and grown
// per shape like the runtime's scratch: cuBLAS's bf16 kernels read bf16 data
// at the tensor cores' full rate, where the FAST_16BF compute type on fp32
// data converts inside the product (about 210 TFLOP/s on an H200's GPT-2
// layer products, against 770 for bf16 data).
static void* g_bf16 = nullptr;
static size_t g_bf16_bytes = 0;

static mg_status bf16_space(void** ptr, size_t bytes) {
    if (bytes > g_bf16_bytes) {
        if (g_bf16) {
            MG_CUDA_TRY(cudaStreamSynchronize(cuda_stream()));
            MG_CUDA_TRY(cudaFree(g_bf16));
            g_bf16 = nullptr;
            g_bf16_bytes = 0;
        }
        if (cudaMalloc(&g_bf16, bytes) != cudaSuccess) {
            cudaGetLastError();
            g_bf16 = nullptr;
            return mg_fail(MG_ERR_NOMEM, __func__, "out of GPU memory: asked for %zu bytes "
                           "for the bf16 copies of a product's operands", bytes);
        }
        g_bf16_bytes = bytes;
    }
    *ptr = g_bf16;
    return MG_OK;
}

// dst (rows, cols) dense = src (rows, cols) with row stride ld, rounded to
// the nearest bf16.
static __global__ void to_bf16_kernel(__nv_bfloat16* dst, const float* src, size_t rows,
                                      size_t cols, size_t ld) {
    const size_t n = rows * cols, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = __float2bfloat16_rn(src[(i / cols) * ld + i % cols]);
}

// Row-major Cm (M,N) = beta*Cm + A' @ B' on cuBLAS (see the file comment for
// the column-major mapping). Arguments are checked by the caller; M, N, K > 0.
static mg_status gemm(int transA, int transB, int M, int N, int K,
                      const float* A, int lda, const float* B, int ldb,
                      float beta, float* Cm, int ldc) {
    cublasHandle_t handle;
    MG_TRY(cuda_blas(&handle));
    const float alpha = 1.0f;
    const cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (cuda_compute_type() == CUBLAS_COMPUTE_32F_FAST_16BF) {
        // bf16 copies of the stored matrices, dense: A is (M,K) or (K,M),
        // B (K,N) or (N,K); then a bf16 x bf16 -> fp32 product.
        const size_t ar = transA ? K : M, ac = transA ? M : K;
        const size_t br = transB ? N : K, bc = transB ? K : N;
        const size_t a_bytes = cuda_align(ar * ac * sizeof(__nv_bfloat16));
        void* ws = nullptr;
        MG_TRY(bf16_space(&ws, a_bytes + br * bc * sizeof(__nv_bfloat16)));
        __nv_bfloat16* a16 = (__nv_bfloat16*)ws;
        __nv_bfloat16* b16 = (__nv_bfloat16*)((char*)ws + a_bytes);
        cudaStream_t s = cuda_stream();
        to_bf16_kernel<<<elementwise_grid(ar * ac, 256), 256, 0, s>>>(a16, A, ar, ac, (size_t)lda);
        MG_LAUNCH_CHECK();
        to_bf16_kernel<<<elementwise_grid(br * bc, 256), 256, 0, s>>>(b16, B, br, bc, (size_t)ldb);
        MG_LAUNCH_CHECK();
        MG_CUBLAS_TRY(cublasGemmEx(handle, opB, opA, N, M, K, &alpha,
                                   b16, CUDA_R_16BF, (int)bc, a16, CUDA_R_16BF, (int)ac, &beta,
                                   Cm, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return MG_OK;
    }
    // column-major Cm^T (N,M) = B'^T (N,K) @ A'^T (K,M)
    MG_CUBLAS_TRY(cublasGemmEx(handle, opB, opA, N, M, K, &alpha,
                               B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta,
                               Cm, CUDA_R_32F, ldc, cuda_compute_type(),
                               CUBLAS_GEMM_DEFAULT));
    return MG_OK;
}

// ---------------------------------------------------------------- sgemm

extern "C" mg_status mg_cuda_sgemm(int transA, int transB, int M, int N, int K,
                                   const float* A, int lda, const float* B, int ldb,
                                   float beta, float* Cm, int ldc) {
    MG_TRY(check_sgemm(__func__, transA, transB, M, N, K, A, lda, B, ldb, beta, Cm, ldc));
    if (M == 0 || N == 0) return MG_OK;
    if (K == 0) {   // an empty sum: Cm = beta*Cm, i.e. zeros or untouched
        if (beta == 0.0f)
            MG_CUDA_TRY(cudaMemset2DAsync(Cm, (size_t)ldc * sizeof(float), 0,
                                          (size_t)N * sizeof(float), (size_t)M, cuda_stream()));
        return MG_OK;
    }
    return gemm(transA, transB, M, N, K, A, lda, B, ldb, beta, Cm, ldc);
}

// ---------------------------------------------------------------- forward

// out (n = N*OC, rows of OC) += bias (OC), broadcast over rows.
static __global__ void add_bias_kernel(float* out, const float* bias, size_t n, int OC) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] += bias[i % (size_t)OC];
}

extern "C" mg_status mg_cuda_matmul_forward(float* out, const float* inp, const float* weight,
                                            const float* bias, int N, int C, int OC) {
    MG_TRY(check_matmul_forward(__func__, out, inp, weight, N, C, OC));
    if (N == 0) return MG_OK;
    // out (N,OC) = inp (N,C) @ weight^T, weight (OC,C) read as B (N,K) transposed
    MG_TRY(gemm(0, 1, N, OC, C, inp, C, weight, C, 0.0f, out, OC));
    if (bias) {
        // The bias is added after the whole sum (matmul.c adds it to the
        // first K block's): the same value to rounding.
        const size_t n = (size_t)N * OC;
        add_bias_kernel<<<elementwise_grid(n, 256), 256, 0, cuda_stream()>>>(out, bias, n, OC);
        MG_LAUNCH_CHECK();
    }
    return MG_OK;
}

// ---------------------------------------------------------------- backward

// dbias column sums, two stages in a fixed order. Stage 1: block (x, y) sums
// columns 32x..32x+31 over its chunk of rows; within the block, row lane ly
// (of 8) takes rows r0+ly, r0+ly+8, ... in order (a warp reads 32 adjacent
// columns of a row: one 128-byte line), then lane 0 adds the 8 lanes in
// order. Stage 2 adds the chunks' partials in chunk order. The chunking
// depends on N alone, so every bit is fixed by the shape.
enum {
    CS_COLS = 32,           // columns per block (threadIdx.x)
    CS_LANES = 8,           // row lanes per block (threadIdx.y)
    CS_ROWS = 256,          // rows per chunk (stage 1 block), unless N is huge
    CS_MAX_CHUNKS = 4096    // more rows than 4096 * 256: longer chunks instead
};

// dst: with add, dbias (OC) += the sum of the chunk (one chunk only);
// otherwise partial (nchunks, OC) row blockIdx.y = the chunk's sums.
static __global__ void column_sum_partial_kernel(float* dst, const float* dout, int N, int OC,
                                          long long rows_per_chunk, int add) {
    __shared__ float sh[CS_LANES][CS_COLS];
    const int o = blockIdx.x * CS_COLS + threadIdx.x;
    const long long r0 = (long long)blockIdx.y * rows_per_chunk;
    const long long r1 = MG_MIN((long long)N, r0 + rows_per_chunk);
    float acc = 0.0f;
    if (o < OC)
        for (long long i = r0 + threadIdx.y; i < r1; i += CS_LANES)
            acc += dout[(size_t)i * OC + o];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < OC) {
        float s = sh[0][threadIdx.x];
        for (int j = 1; j < CS_LANES; j++) s += sh[j][threadIdx.x];
        if (add) dst[o] += s;
        else dst[(size_t)blockIdx.y * OC + o] = s;
    }
}

// dbias (OC) += sum over chunks c, in order, of partial (nchunks, OC).
static __global__ void column_sum_final_kernel(float* dbias, const float* partial,
                                               int nchunks, int OC) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    float s = partial[o];
    for (int c = 1; c < nchunks; c++) s += partial[(size_t)c * OC + o];
    dbias[o] += s;
}

// dbias (OC) += column sums of dout (N,OC); N > 0. Scratch: nchunks*OC floats
// when N > CS_ROWS, none otherwise.
static mg_status column_sums(float* dbias, const float* dout, int N, int OC) {
    long long rows = CS_ROWS;
    long long nchunks = ((long long)N + rows - 1) / rows;
    if (nchunks > CS_MAX_CHUNKS) {
        rows = ((long long)N + CS_MAX_CHUNKS - 1) / CS_MAX_CHUNKS;
        nchunks = ((long long)N + rows - 1) / rows;
    }
    const dim3 block(CS_COLS, CS_LANES);
    const dim3 grid((unsigned)((OC + CS_COLS - 1) / CS_COLS), (unsigned)nchunks);
    cudaStream_t s = cuda_stream();
    if (nchunks == 1) {
        column_sum_partial_kernel<<<grid, block, 0, s>>>(dbias, dout, N, OC, rows, 1);
        MG_LAUNCH_CHECK();
        return MG_OK;
    }
    void* ws;
    MG_TRY(cuda_scratch(&ws, (size_t)nchunks * OC * sizeof(float)));
    float* partial = (float*)ws;    // (nchunks, OC)
    column_sum_partial_kernel<<<grid, block, 0, s>>>(partial, dout, N, OC, rows, 0);
    MG_LAUNCH_CHECK();
    column_sum_final_kernel<<<cuda_grid((size_t)OC, 256), 256, 0, s>>>(dbias, partial,
                                                                       (int)nchunks, OC);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

extern "C" mg_status mg_cuda_matmul_backward(float* dinp, float* dweight, float* dbias,
                                             const float* dout, const float* inp,
                                             const float* weight, int N, int C, int OC,
                                             int overwrite_dinp) {
    MG_TRY(check_matmul_backward(__func__, dout, inp, weight, N, C, OC));
    if (N == 0) return MG_OK;
    // forward: out = inp @ weight^T + bias
    // dinp (N,C) (+)= dout (N,OC) @ weight (OC,C); beta 0 never reads dinp
    if (dinp)
        MG_TRY(gemm(0, 0, N, C, OC, dout, OC, weight, C, overwrite_dinp ? 0.0f : 1.0f, dinp, C));
    // dweight (OC,C) += dout^T (OC,N) @ inp (N,C), dout read as A (K,M) transposed
    if (dweight) MG_TRY(gemm(1, 0, OC, C, N, dout, OC, inp, C, 1.0f, dweight, C));
    // dbias (OC) += sum over rows of dout
    if (dbias) MG_TRY(column_sums(dbias, dout, N, OC));
    return MG_OK;
}
