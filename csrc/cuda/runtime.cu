/*
 * runtime.cu — the CUDA path's runtime: device facts, memory, copies, the one
 * stream, the cuBLAS handle and its precision, the scratch arena, and two
 * small kernels (fill, a deterministic sum) that the device-resident model
 * needs in place of numpy's.
 *
 * Everything runs on one stream, so work is ordered without events; a call
 * that hands a result to the host (a copy out, mg_cuda_sum) waits for it.
 */
#include <cstdio>

#include "common.cuh"

extern "C" int mg_has_cuda(void) { return 1; }

static cudaStream_t g_stream = nullptr;     /* created on first use */
static cublasHandle_t g_blas = nullptr;
static void* g_blas_ws = nullptr;
static const size_t BLAS_WS_BYTES = (size_t)32 << 20;
static int g_math = MG_MATH_FP32;
static void* g_scratch = nullptr;
static size_t g_scratch_bytes = 0;

cudaStream_t cuda_stream(void) {
    if (!g_stream) cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    return g_stream;
}

static mg_status oom(const char* func, size_t bytes) {
    size_t free_b = 0, total_b = 0;
    cudaGetLastError();  /* clear the allocation's error: it is not sticky */
    cudaMemGetInfo(&free_b, &total_b);
    return mg_fail(MG_ERR_NOMEM, func,
                   "out of GPU memory: asked for %zu bytes (%.2f GiB), %zu bytes (%.2f GiB) "
                   "free of %.2f GiB", bytes, bytes / 1073741824.0, free_b,
                   free_b / 1073741824.0, total_b / 1073741824.0);
}

static cublasMath_t math_flags(int mode) {
    /* fp32: no reduced-precision reductions either, so products are IEEE fp32 */
    if (mode == MG_MATH_FP32)
        return (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    return CUBLAS_DEFAULT_MATH;
}

mg_status cuda_blas(cublasHandle_t* handle) {
    if (!g_blas) {
        cudaStream_t s = cuda_stream();
        MG_CUDA_TRY(cudaGetLastError());
        MG_CUBLAS_TRY(cublasCreate(&g_blas));
        if (cudaMalloc(&g_blas_ws, BLAS_WS_BYTES) != cudaSuccess) {
            cublasDestroy(g_blas);
            g_blas = nullptr;
            return oom(__func__, BLAS_WS_BYTES);
        }
        MG_CUBLAS_TRY(cublasSetStream(g_blas, s));
        MG_CUBLAS_TRY(cublasSetWorkspace(g_blas, g_blas_ws, BLAS_WS_BYTES));
        MG_CUBLAS_TRY(cublasSetMathMode(g_blas, math_flags(g_math)));
    }
    *handle = g_blas;
    return MG_OK;
}

cublasComputeType_t cuda_compute_type(void) {
    switch (g_math) {
    case MG_MATH_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case MG_MATH_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CUBLAS_COMPUTE_32F;
    }
}

mg_status cuda_scratch(void** ptr, size_t bytes) {
    if (bytes > g_scratch_bytes) {
        if (g_scratch) {
            MG_CUDA_TRY(cudaStreamSynchronize(cuda_stream()));  /* in-flight kernels may read it */
            MG_CUDA_TRY(cudaFree(g_scratch));
            g_scratch = nullptr;
            g_scratch_bytes = 0;
        }
        if (cudaMalloc(&g_scratch, bytes) != cudaSuccess) {
            g_scratch = nullptr;
            return oom(__func__, bytes);
        }
        g_scratch_bytes = bytes;
    }
    *ptr = g_scratch;
    return MG_OK;
}

/* ---------------------------------------------------------------- device */

extern "C" mg_status mg_cuda_get_info(mg_cuda_info* info) {
    MG_CHECK_PTR(info);
    memset(info, 0, sizeof *info);
    cudaDriverGetVersion(&info->driver_version);
    cudaRuntimeGetVersion(&info->runtime_version);
    cudaError_t e = cudaGetDeviceCount(&info->device_count);
    if (e != cudaSuccess || info->device_count == 0) {
        cudaGetLastError();
        return mg_fail(MG_ERR_CUDA, __func__, "no usable CUDA GPU: %s",
                       e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
    }
    MG_CUDA_TRY(cudaGetDevice(&info->device));
    cudaDeviceProp prop;
    MG_CUDA_TRY(cudaGetDeviceProperties(&prop, info->device));
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->major = prop.major;
    info->minor = prop.minor;
    info->multiprocessors = prop.multiProcessorCount;
    MG_CUDA_TRY(cudaMemGetInfo(&info->free_mem, &info->total_mem));
    info->math_mode = g_math;
    return MG_OK;
}

extern "C" mg_status mg_cuda_set_math(int mode) {
    MG_CHECK(mode == MG_MATH_FP32 || mode == MG_MATH_TF32 || mode == MG_MATH_BF16,
             MG_ERR_VALUE, "math mode %d is not one of fp32 (0), tf32 (1), bf16 (2)", mode);
    g_math = mode;
    if (g_blas) MG_CUBLAS_TRY(cublasSetMathMode(g_blas, math_flags(mode)));
    return MG_OK;
}

/* ---------------------------------------------------------------- memory */

extern "C" mg_status mg_cuda_malloc(void** ptr, size_t bytes) {
    MG_CHECK_PTR(ptr);
    *ptr = nullptr;
    if (bytes == 0) bytes = 1;  /* a real, freeable pointer for empty arrays */
    if (cudaMalloc(ptr, bytes) != cudaSuccess) {
        *ptr = nullptr;
        return oom(__func__, bytes);
    }
    return MG_OK;
}

extern "C" mg_status mg_cuda_free(void* ptr) {
    if (ptr) MG_CUDA_TRY(cudaFree(ptr));
    return MG_OK;
}

extern "C" mg_status mg_cuda_malloc_host(void** ptr, size_t bytes) {
    MG_CHECK_PTR(ptr);
    *ptr = nullptr;
    if (cudaMallocHost(ptr, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        *ptr = nullptr;
        return mg_fail(MG_ERR_NOMEM, __func__, "could not pin %zu bytes of host memory", bytes);
    }
    return MG_OK;
}

extern "C" mg_status mg_cuda_free_host(void* ptr) {
    if (ptr) MG_CUDA_TRY(cudaFreeHost(ptr));
    return MG_OK;
}

extern "C" mg_status mg_cuda_memcpy(void* dst, const void* src, size_t bytes, int kind) {
    if (bytes == 0) return MG_OK;
    MG_CHECK_PTR(dst); MG_CHECK_PTR(src);
    cudaStream_t s = cuda_stream();
    switch (kind) {
    case MG_COPY_H2D:
        /* From pageable memory the call returns once the source has been
         * read, so the caller may reuse it at once. */
        MG_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
        break;
    case MG_COPY_D2H:
        MG_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
        MG_CUDA_TRY(cudaStreamSynchronize(s));
        break;
    case MG_COPY_D2D:
        MG_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
        break;
    default:
        return mg_fail(MG_ERR_VALUE, __func__, "copy kind %d is not H2D (1), D2H (2) or D2D (3)", kind);
    }
    return MG_OK;
}

extern "C" mg_status mg_cuda_memset(void* ptr, int value, size_t bytes) {
    if (bytes == 0) return MG_OK;
    MG_CHECK_PTR(ptr);
    MG_CUDA_TRY(cudaMemsetAsync(ptr, value, bytes, cuda_stream()));
    return MG_OK;
}

extern "C" mg_status mg_cuda_synchronize(void) {
    MG_CUDA_TRY(cudaStreamSynchronize(cuda_stream()));
    MG_CUDA_TRY(cudaGetLastError());
    return MG_OK;
}

/* ---------------------------------------------------------------- fill, sum */

__global__ void fill_kernel(float* x, float value, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (; i < n; i += stride) x[i] = value;
}

extern "C" mg_status mg_cuda_fill(float* x, float value, size_t n) {
    if (n == 0) return MG_OK;
    MG_CHECK_PTR(x);
    unsigned grid = cuda_grid(n, 256);
    if (grid > 65535u * 8u) grid = 65535u * 8u;
    fill_kernel<<<grid, 256, 0, cuda_stream()>>>(x, value, n);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* Pass 1: block b sums its fixed, strided share of x in double; pass 2: one
 * block sums the partials in index order. The grid is fixed, so the order of
 * every addition, and the bits, depend only on n. */
enum { SUM_BLOCKS = 512, SUM_THREADS = 256 };

__device__ double block_sum(double v) {
    __shared__ double sh[SUM_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = 0.0;
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v;  /* valid in thread 0 */
}

__global__ void sum_partial_kernel(double* partial, const float* x, size_t n, int square) {
    double acc = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        acc += square ? v * v : v;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_final_kernel(double* out, const double* partial, int n) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *out = acc;
}

/* Shared with adamw.cu's gradient norm: result = sum of x or of x^2. */
mg_status cuda_reduce(double* host_result, const float* x, size_t n, int square) {
    void* ws;
    MG_TRY(cuda_scratch(&ws, (SUM_BLOCKS + 1) * sizeof(double)));
    double* partial = (double*)ws;
    cudaStream_t s = cuda_stream();
    sum_partial_kernel<<<SUM_BLOCKS, SUM_THREADS, 0, s>>>(partial, x, n, square);
    MG_LAUNCH_CHECK();
    sum_final_kernel<<<1, SUM_THREADS, 0, s>>>(partial + SUM_BLOCKS, partial, SUM_BLOCKS);
    MG_LAUNCH_CHECK();
    MG_CUDA_TRY(cudaMemcpyAsync(host_result, partial + SUM_BLOCKS, sizeof(double),
                                cudaMemcpyDeviceToHost, s));
    MG_CUDA_TRY(cudaStreamSynchronize(s));
    return MG_OK;
}

extern "C" mg_status mg_cuda_sum(double* sum, const float* x, size_t n) {
    MG_CHECK_PTR(sum);
    *sum = 0.0;
    if (n == 0) return MG_OK;
    MG_CHECK_PTR(x);
    return cuda_reduce(sum, x, n, 0);
}
