/*
 * mlp.cu — GELU (tanh approximation, as GPT-2; and exact, as BERT and ViT),
 * ReLU, SiLU and dropout on the GPU, forward and backward; the twin of mlp.c
 * (same arguments, same checks, same accumulate rule; tests/reference.py is
 * the float64 spec).
 *   gelu(x)     = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   gelu_erf(x) = x Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt 2))
 *   relu(x)     = x < 0 ? 0 : x  (NaN and -0 pass; the CPU's bits exactly)
 *   silu(x)     = x sigmoid(x)  ("swish", MarianMT)
 *   dropout:    out = inp * keep / (1 - p)
 *
 * All elementwise, one grid-stride loop per kernel (N is a size_t: the grid
 * is capped, so several billion elements stay within the launch limits).
 *
 * Numerics (fp32 path: accurate expf/erfcf, no __expf, no fast math):
 *  - The tanh GELU goes through 0.5 (1 + tanh(u)) = sigmoid(2u), as the CPU
 *    does, with one exp of a non-positive argument:
 *      s = 1 / (1 + e) (u >= 0),  e / (1 + e) (u < 0),  e = exp(-2|u|)
 *      gelu(x) = x s;  gelu'(x) = s + x s (1 - s) 2 du/dx
 *    accurate in relative terms for either sign of u; exp flushes to 0 for
 *    large |u|, so saturation needs no special case.
 *  - The exact GELU uses Phi(x) = erfc(-x / sqrt 2) / 2 (erfcf, within a few
 *    ulp): 1 + erff(x / sqrt 2) would cancel in the negative tail (at x = -5
 *    it keeps one significant digit), where the CPU's own erfc-based form and
 *    the reference keep full relative accuracy.
 *  - SiLU takes sigmoid from the same exp(-|x|) (never exp of a large
 *    positive number) and gets 1 - sigmoid without a subtraction, as mlp.c:
 *      s = r (x >= 0), e r (x < 0);  1 - s = e r (x >= 0), r (x < 0)
 *      r = 1 / (1 + e),  e = exp(-|x|)
 *      silu(x) = x s;  silu'(x) = s (1 + x (1 - s))
 *    NaN propagates, -inf gives a NaN forward and +-inf a NaN gradient
 *    (inf * 0), as on the CPU and in PyTorch.
 *  - nvcc contracts a*b + c into fma here; the CPU's vector paths use fma
 *    too. The two agree to fp32 rounding (1e-5 relative), not bit for bit.
 *
 * Dropout must give exactly the CPU's mask for a seed: the same splitmix64
 * of (splitmix64(seed) ^ index), the same top 24 bits, the same threshold
 * (uint32)(p * 2^24) computed on the host in double, the same scale
 * 1.0f / (1.0f - p) computed on the host. Its products are written with
 * __fmul_rn (an IEEE multiply nvcc may not fuse into an add), so out, mask
 * and dinp equal the CPU's bit for bit.
 *
 * Gotchas:
 *  - out may equal inp (forward in place): each thread reads element i
 *    before writing it, and nothing is __restrict__.
 *  - accumulate 0 overwrites dinp without reading it (it may hold NaN).
 */
#include <cmath>

#include "common.cuh"

#define GELU_K 0.7978845608028654f   /* sqrt(2/pi) */
#define GELU_C 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

static const int MLP_THREADS = 256;
/* Blocks at a time in flight; more elements than this loop over the grid. */
static const unsigned MLP_MAX_BLOCKS = 65535u * 8u;

static unsigned mlp_grid(size_t n) {
    return cuda_grid(MG_MIN(n, (size_t)MLP_MAX_BLOCKS * MLP_THREADS), MLP_THREADS);
}

/* ---------------------------------------------------------------- gelu */

/* s = sigmoid(2u) = 0.5 (1 + tanh(u)) */
static __device__ __forceinline__ float sigmoid2u(float u) {
    float e = expf(-2.0f * fabsf(u));  /* in (0, 1] */
    float r = 1.0f / (1.0f + e);
    return u >= 0.0f ? r : e * r;
}

static __device__ __forceinline__ float gelu_u(float x) {
    return GELU_K * x * (1.0f + GELU_C * x * x);
}

static __global__ void gelu_forward_kernel(float* out, const float* inp, size_t N) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i];
        out[i] = x * sigmoid2u(gelu_u(x));
    }
}

/* out = x s(u): d out / dx = s + x s (1 - s) 2 du/dx,  du/dx = K (1 + 3 c x^2) */
static __global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout,
                                            size_t N, int accumulate) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i];
        float s = sigmoid2u(gelu_u(x));
        float du2 = 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        float g = s + x * s * (1.0f - s) * du2;
        float d0 = accumulate ? dinp[i] : 0.0f;
        dinp[i] = d0 + dout[i] * g;
    }
}

extern "C" mg_status mg_cuda_gelu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    if (N == 0) return MG_OK;
    gelu_forward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(out, inp, N);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

extern "C" mg_status mg_cuda_gelu_backward(float* dinp, const float* inp, const float* dout,
                                           size_t N, int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    if (N == 0) return MG_OK;
    gelu_backward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(dinp, inp, dout, N,
                                                                         accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- exact GELU */

/* Phi(x) = erfc(-x / sqrt 2) / 2: relative accuracy in both tails */
static __device__ __forceinline__ float phi_cdf(float x) {
    return 0.5f * erfcf(-x * INV_SQRT2);
}

static __global__ void gelu_erf_forward_kernel(float* out, const float* inp, size_t N) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i];
        out[i] = x * phi_cdf(x);
    }
}

/* out = x Phi(x): d out / dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
static __global__ void gelu_erf_backward_kernel(float* dinp, const float* inp, const float* dout,
                                                size_t N, int accumulate) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i];
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        float g = phi_cdf(x) + x * pdf;
        float d0 = accumulate ? dinp[i] : 0.0f;
        dinp[i] = d0 + dout[i] * g;
    }
}

extern "C" mg_status mg_cuda_gelu_erf_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    if (N == 0) return MG_OK;
    gelu_erf_forward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(out, inp, N);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

extern "C" mg_status mg_cuda_gelu_erf_backward(float* dinp, const float* inp, const float* dout,
                                               size_t N, int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    if (N == 0) return MG_OK;
    gelu_erf_backward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(dinp, inp, dout, N,
                                                                             accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- relu */

static __global__ void relu_forward_kernel(float* out, const float* inp, size_t N) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i];
        out[i] = x < 0.0f ? 0.0f : x;
    }
}

/* out = x < 0 ? 0 : x: d out / dx = 0 for x <= 0 (0 at exactly 0, as
 * PyTorch), 1 elsewhere (NaN included) */
static __global__ void relu_backward_kernel(float* dinp, const float* inp, const float* dout,
                                            size_t N, int accumulate) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float g = inp[i] <= 0.0f ? 0.0f : dout[i];
        float d0 = accumulate ? dinp[i] : 0.0f;
        dinp[i] = d0 + g;
    }
}

extern "C" mg_status mg_cuda_relu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    if (N == 0) return MG_OK;
    relu_forward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(out, inp, N);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

extern "C" mg_status mg_cuda_relu_backward(float* dinp, const float* inp, const float* dout,
                                           size_t N, int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    if (N == 0) return MG_OK;
    relu_backward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(dinp, inp, dout, N,
                                                                         accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- silu */

/* s = sigmoid(x); *c = 1 - s; both from one exp of -|x| */
static __device__ __forceinline__ float sigmoid_pair(float x, float* c) {
    float e = expf(-fabsf(x));  /* in (0, 1] */
    float r = 1.0f / (1.0f + e), er = e * r;
    *c = x >= 0.0f ? er : r;
    return x >= 0.0f ? r : er;
}

static __global__ void silu_forward_kernel(float* out, const float* inp, size_t N) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i], c;
        out[i] = x * sigmoid_pair(x, &c);
    }
}

/* out = x s(x): d out / dx = s + x s (1 - s) = s (1 + x c),  c = 1 - s */
static __global__ void silu_backward_kernel(float* dinp, const float* inp, const float* dout,
                                            size_t N, int accumulate) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float x = inp[i], c;
        float s = sigmoid_pair(x, &c);
        float g = s * (1.0f + x * c);
        float d0 = accumulate ? dinp[i] : 0.0f;
        dinp[i] = d0 + dout[i] * g;
    }
}

extern "C" mg_status mg_cuda_silu_forward(float* out, const float* inp, size_t N) {
    MG_CHECK_PTR(out); MG_CHECK_PTR(inp);
    if (N == 0) return MG_OK;
    silu_forward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(out, inp, N);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

extern "C" mg_status mg_cuda_silu_backward(float* dinp, const float* inp, const float* dout,
                                           size_t N, int accumulate) {
    MG_CHECK_PTR(dinp); MG_CHECK_PTR(inp); MG_CHECK_PTR(dout);
    if (N == 0) return MG_OK;
    silu_backward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(dinp, inp, dout, N,
                                                                         accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- dropout */

/* The CPU's splitmix64 (mlp.c), bit for bit. */
static __host__ __device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* keep iff the top 24 bits of splitmix64(key ^ i) are >= thresh */
static __global__ void dropout_forward_kernel(float* out, uint8_t* mask, const float* inp,
                                              size_t N, float scale, uint32_t thresh,
                                              uint64_t key) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        uint32_t r = (uint32_t)(splitmix64(key ^ (uint64_t)i) >> 40);
        uint8_t keep = r >= thresh;
        mask[i] = keep;
        out[i] = keep ? __fmul_rn(inp[i], scale) : 0.0f;
    }
}

/* out = inp * keep * scale: d out / d inp = keep * scale */
static __global__ void dropout_backward_kernel(float* dinp, const float* dout,
                                               const uint8_t* mask, size_t N, float scale,
                                               int accumulate) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += stride) {
        float d0 = accumulate ? dinp[i] : 0.0f;
        dinp[i] = __fadd_rn(d0, mask[i] ? __fmul_rn(dout[i], scale) : 0.0f);
    }
}

extern "C" mg_status mg_cuda_dropout_forward(float* out, uint8_t* mask, const float* inp,
                                             size_t N, float p, uint64_t seed) {
    MG_TRY(check_dropout_forward(__func__, out, mask, inp, p));
    if (N == 0) return MG_OK;
    /* the CPU's host-side constants, computed the same way */
    float scale = 1.0f / (1.0f - p);
    uint32_t thresh = (uint32_t)((double)p * 16777216.0);
    uint64_t key = splitmix64(seed);
    dropout_forward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(out, mask, inp, N,
                                                                           scale, thresh, key);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

extern "C" mg_status mg_cuda_dropout_backward(float* dinp, const float* dout,
                                              const uint8_t* mask, size_t N, float p,
                                              int accumulate) {
    MG_TRY(check_dropout_backward(__func__, dinp, dout, mask, p));
    if (N == 0) return MG_OK;
    float scale = 1.0f / (1.0f - p);
    dropout_backward_kernel<<<mlp_grid(N), MLP_THREADS, 0, cuda_stream()>>>(dinp, dout, mask, N,
                                                                            scale, accumulate);
    MG_LAUNCH_CHECK();
    return MG_OK;
}
