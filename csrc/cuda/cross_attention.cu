/*
 * cross_attention.cu — the CUDA twin of cross_attention.c: multi-head
 * cross-attention of decoder queries q (B,Tq,C) over encoder keys and values
 * kv (B,Tk,2C) = [k|v], forward and backward. Like attention.cu it
 * materialises the (Tq,Tk) scores of every head.
 *
 * Math, per batch row b and head h (q, o: (Tq,hs) slices; k, v: (Tk,hs)):
 *   S = q k^T,  P = softmax over the visible keys of (S * scale), scale = 1/sqrt(hs)
 *   o = P v
 * Visible: key_mask[b][s] != 0 when a mask is given (no causal limit).
 * Padded keys get P = 0; a query that sees no key gets P = 0 and o = 0.
 * Backward (dS folds in the scale, as cross_attention.c does):
 *   dP = do v^T,  dv = P^T do,  dS = P * (dP - rowsum(P * dP)) * scale,
 *   dq = dS k,    dk = dS^T q
 *
 * Layout of the work, attention.cu's: the heads are split out of the strided
 * q and kv into contiguous (B,NH,T,hs) buffers carved from cuda_scratch
 * (taken once per call), so that every product is ONE strided-batched cuBLAS
 * GEMM over the B*NH heads (fp32 data, the compute type of the current
 * mg_math_mode). The softmax and its backward are a warp per row of (Tk)
 * entries; the results go back to (B,Tq,C) / (B,Tk,2C) by a merge kernel.
 * Scratch, in aligned pieces of nq = B*Tq*C and nk = B*Tk*C floats:
 *   forward  q (nq), k, v (nk); y, the per-head output, reuses q's piece;
 *   backward q, do (nq), k, v, dv (nk); dq reuses do's piece and dk v's
 *            (both are dead once dP and dv are computed; one stream orders it).
 * The backward's dP and dS live in the caller's `scratch` (B,NH,Tq,Tk).
 *
 * Numerical notes (fp32 path, as attention.cu): the scale multiplies the raw
 * score with __fmul_rn (never fused into the max subtraction); exp is expf;
 * every sum runs in a fixed order (lane-strided partials, then a fixed
 * shuffle tree whose lane-0 result is broadcast); a NaN among the visible
 * scores makes the whole row NaN, as on the CPU. The products are cuBLAS's,
 * so CPU parity is to rounding (~1e-6 relative), and run-to-run bits are
 * fixed. No atomics.
 * Gotchas: the helpers below repeat attention.cu's with the sequence length
 * of each operand as an argument (kernels are static: the separately compiled
 * .cu files link into one module); cuBLAS batch counts and leading dimensions
 * are int, strides 64-bit.
 */
#include <cmath>

#include "heads.cuh"

// ================================================================ forward

// att (B,NH,Tq,Tk): on entry the raw scores q.k, on exit the probabilities.
// One warp per row r = (b*NH + h)*Tq + t; the visible keys are those with
// key_mask[b][s] != 0 (key_mask (B,Tk) or NULL). Masked keys come out as
// exp(-inf) = 0; a row with no visible key is all zeros.
static __global__ void cross_softmax_forward_kernel(float* att, const int32_t* key_mask,
                                                    size_t rows, int Tq, int Tk, int NH,
                                                    float scale) {
    const size_t r = (size_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;   // the whole warp leaves together; no block barrier below
    const size_t bh = r / (size_t)Tq;
    const int32_t* mask = key_mask ? key_mask + (bh / (size_t)NH) * Tk : NULL;
    float* a = att + r * (size_t)Tk;
    float mx = -INFINITY;
    int nan = 0;
    for (int s = lane; s < Tk; s += 32) {
        const float x = (mask && mask[s] == 0) ? -INFINITY : __fmul_rn(a[s], scale);
        a[s] = x;
        mx = fmaxf(mx, x);
        nan |= isnan(x);
    }
    mx = warp_max(mx);
    if (__any_sync(FULL_MASK, nan)) mx = NAN;   // poison the row, as the CPU does
    if (mx == -INFINITY) {                      // no visible key: a zero row
        for (int s = lane; s < Tk; s += 32) a[s] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int s = lane; s < Tk; s += 32) {
        const float e = expf(a[s] - mx);
        a[s] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int s = lane; s < Tk; s += 32) a[s] *= inv;
}

extern "C" mg_status mg_cuda_cross_attention_forward(float* out, float* att, const float* q,
                                                     const float* kv, const int32_t* key_mask,
                                                     int B, int Tq, int Tk, int C, int NH) {
    MG_TRY(check_cross_attention_forward(__func__, out, att, q, kv, B, Tq, Tk, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const int BH = B * NH;
    const size_t C2 = 2 * (size_t)C;
    const size_t pq = cuda_align((size_t)B * Tq * C * sizeof(float));
    const size_t pk = cuda_align((size_t)B * Tk * C * sizeof(float));
    void* ws;
    MG_TRY(cuda_scratch(&ws, pq + 2 * pk));
    float* qh = (float*)ws;                              // (B,NH,Tq,hs)
    float* kh = (float*)((char*)ws + pq);                // (B,NH,Tk,hs)
    float* vh = (float*)((char*)ws + pq + pk);           // (B,NH,Tk,hs)
    float* y = qh;                                       // (B,NH,Tq,hs), once q is used
    const long long TT = (long long)Tq * Tk;
    const long long Tqhs = (long long)Tq * hs, Tkhs = (long long)Tk * hs;

    MG_TRY(split_heads(qh, q, (size_t)C, B, Tq, C, NH));
    MG_TRY(split_heads(kh, kv, C2, B, Tk, C, NH));
    MG_TRY(split_heads(vh, kv + C, C2, B, Tk, C, NH));
    // S (Tq,Tk) = q (Tq,hs) @ k^T, raw: the softmax applies the scale
    MG_TRY(gemm_batched(0, 1, Tq, Tk, hs, qh, hs, Tqhs, kh, hs, Tkhs, att, Tk, TT, BH));
    const size_t rows = (size_t)BH * Tq;
    cross_softmax_forward_kernel<<<cuda_grid(rows, ROWS_PER_BLOCK), ROW_THREADS, 0,
                                   cuda_stream()>>>(att, key_mask, rows, Tq, Tk, NH, scale);
    MG_LAUNCH_CHECK();
    // y (Tq,hs) = P (Tq,Tk) @ v (Tk,hs)
    MG_TRY(gemm_batched(0, 0, Tq, hs, Tk, att, Tk, TT, vh, hs, Tkhs, y, hs, Tqhs, BH));
    return merge_heads(out, (size_t)C, y, B, Tq, C, NH, 0);
}

// ================================================================ backward

// In place on ds (B,NH,Tq,Tk), which holds dP on entry; one warp per row r:
// Forward: P = softmax(S * scale) -> dS = P * (dP - sum_s P dP) * scale
// (P is 0 at padded keys, so they give 0).
static __global__ void cross_softmax_backward_kernel(float* ds, const float* att, size_t rows,
                                                     int Tk, float scale) {
    const size_t r = (size_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const float* p = att + r * (size_t)Tk;
    float* d = ds + r * (size_t)Tk;
    float dot = 0.0f;
    for (int s = lane; s < Tk; s += 32) dot += p[s] * d[s];
    dot = warp_sum(dot);
    for (int s = lane; s < Tk; s += 32) d[s] = p[s] * (d[s] - dot) * scale;
}

extern "C" mg_status mg_cuda_cross_attention_backward(float* dq, float* dkv, float* scratch,
                                                      const float* dout, const float* q,
                                                      const float* kv, const float* att,
                                                      int B, int Tq, int Tk, int C, int NH,
                                                      int accumulate) {
    MG_TRY(check_cross_attention_backward(__func__, dq, dkv, scratch, dout, q, kv, att,
                                          B, Tq, Tk, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const int BH = B * NH;
    const size_t C2 = 2 * (size_t)C;
    const size_t pq = cuda_align((size_t)B * Tq * C * sizeof(float));
    const size_t pk = cuda_align((size_t)B * Tk * C * sizeof(float));
    void* ws;
    MG_TRY(cuda_scratch(&ws, 2 * pq + 3 * pk));
    float* qh = (float*)ws;                              // (B,NH,Tq,hs)
    float* g = (float*)((char*)ws + pq);                 // dout's heads, (B,NH,Tq,hs)
    float* kh = (float*)((char*)ws + 2 * pq);            // (B,NH,Tk,hs)
    float* vh = (float*)((char*)ws + 2 * pq + pk);       // (B,NH,Tk,hs)
    float* dv = (float*)((char*)ws + 2 * pq + 2 * pk);   // (B,NH,Tk,hs)
    float* dqh = g;                                      // g is dead after dP, dv
    float* dk = vh;                                      // v is dead after dP
    float* ds = scratch;                                 // (B,NH,Tq,Tk): dP, then dS
    const long long TT = (long long)Tq * Tk;
    const long long Tqhs = (long long)Tq * hs, Tkhs = (long long)Tk * hs;

    MG_TRY(split_heads(qh, q, (size_t)C, B, Tq, C, NH));
    MG_TRY(split_heads(g, dout, (size_t)C, B, Tq, C, NH));
    MG_TRY(split_heads(kh, kv, C2, B, Tk, C, NH));
    MG_TRY(split_heads(vh, kv + C, C2, B, Tk, C, NH));
    // Forward: o = P v -> dP (Tq,Tk) = do (Tq,hs) @ v^T, dv (Tk,hs) = P^T @ do
    MG_TRY(gemm_batched(0, 1, Tq, Tk, hs, g, hs, Tqhs, vh, hs, Tkhs, ds, Tk, TT, BH));
    MG_TRY(gemm_batched(1, 0, Tk, hs, Tq, att, Tk, TT, g, hs, Tqhs, dv, hs, Tkhs, BH));
    // Forward: P = softmax(S * scale) -> dS = P * (dP - rowsum(P dP)) * scale
    const size_t rows = (size_t)BH * Tq;
    cross_softmax_backward_kernel<<<cuda_grid(rows, ROWS_PER_BLOCK), ROW_THREADS, 0,
                                    cuda_stream()>>>(ds, att, rows, Tk, scale);
    MG_LAUNCH_CHECK();
    // Forward: S = q k^T -> dq (Tq,hs) = dS @ k, dk (Tk,hs) = dS^T @ q
    MG_TRY(gemm_batched(0, 0, Tq, hs, Tk, ds, Tk, TT, kh, hs, Tkhs, dqh, hs, Tqhs, BH));
    MG_TRY(gemm_batched(1, 0, Tk, hs, Tq, ds, Tk, TT, qh, hs, Tqhs, dk, hs, Tkhs, BH));
    // dq (B,Tq,C), dkv (B,Tk,2C) = or += [dk | dv]
    MG_TRY(merge_heads(dq, (size_t)C, dqh, B, Tq, C, NH, accumulate));
    MG_TRY(merge_heads(dkv, C2, dk, B, Tk, C, NH, accumulate));
    return merge_heads(dkv + C, C2, dv, B, Tk, C, NH, accumulate);
}
