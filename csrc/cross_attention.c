/*
 * cross_attention.c — multi-head cross-attention of an encoder-decoder
 * Transformer: decoder queries q (B,Tq,C) over encoder keys and values
 * kv (B,Tk,2C) = [k|v], forward and backward.
 *
 * Math, per batch row b and head h (q, o: (Tq,hs) slices; k, v: (Tk,hs)):
 *   S = q k^T * scale,  scale = 1/sqrt(hs)
 *   P = softmax over the visible keys of each row (key_mask[b][s] != 0;
 *       invisible: P = 0; no causal limit)
 *   o = P v
 * A query that sees no key (a fully padded source row) gets P = 0, o = 0.
 * Backward (the scale folded into dS, as attention.c does):
 *   dP = do v^T,  dS = P * (dP - rowsum(P * dP)) * scale,
 *   dq = dS k,    dk = dS^T q,    dv = P^T do
 *
 * Layout of the work: one (b, h) per work item, parallel over B*NH with a
 * static schedule. An item writes only its head's channels of out, dq and
 * dkv, and its own (Tq,Tk) slab of att / scratch. The gradient of a key row
 * of dkv sums over the Tq queries of the same (b, h), all inside one item,
 * so there are no atomics and every bit is fixed whatever the thread count.
 * Tq = 1 (a decoding step over precomputed kv) is the same code: query row
 * t of a longer call gives the same bits as a call with that row alone.
 *
 * Two primitives do all the products, written on 16-float vectors (gcc's
 * vector extension) that never reassociate anything (clarity over
 * attention.c's register panels; the shapes here are a decoder's, not a long
 * context's):
 *   dot      a.b with 16 fixed lane partials summed in a fixed tree;
 *   combine  dst = sum_s w[s] * row_s (+ dst), 64 channels at a time in
 *            registers (the rows are the strided heads, read in place).
 *
 * Numerical notes (as attention.c):
 *   - softmax subtracts the row max of the visible scores (no overflow); a
 *     row with no visible key is detected via the max (-inf) and zeroed;
 *   - exp: the vectorised exp_neg of simd_math.h (about 1.4 ulp) on AVX2,
 *     expf elsewhere; the row's tail is one masked vector, so every key
 *     sees the same code;
 *   - a NaN score makes its whole query row (att and out) NaN, as in the
 *     float64 reference; it is never mistaken for a row with no visible key;
 *   - the scores of padded keys are never computed (they are -inf), but P v
 *     and the backward run over every key with P = 0 there, as the
 *     reference, PyTorch and the CUDA twin do: the padded rows of kv must
 *     hold finite values (an encoder's outputs do), or 0 * inf poisons.
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define XATT_AVX2 1
#else
#define XATT_AVX2 0
#endif

/* ================================================================ primitives */

/* 16 floats as one value (gcc's vector extension): one zmm register with
 * AVX-512, two ymm with AVX2, plain floats elsewhere. Arithmetic on it is
 * lane by lane, IEEE, never reassociated, so the bits do not depend on the
 * instruction set. V16(p) is the 16 floats at p, any alignment (v16u is the
 * unaligned, may-alias view, as immintrin.h's __m512_u). No function takes
 * or returns a v16 by value: that would tie the ABI to the instruction set
 * (gcc's -Wpsabi). */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
#define V16(p) (*(v16u*)(p))

/* The lanes of *pv summed in a fixed pairwise tree: lane j + lane j+8, then
 * j + j+4, j + j+2, j + j+1. */
static inline float hsum16(const v16* pv) {
    const v16 v = *pv;
    const v8 h = (v8){v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]} +
                 (v8){v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
    const v4 g = (v4){h[0], h[1], h[2], h[3]} + (v4){h[4], h[5], h[6], h[7]};
    return (g[0] + g[2]) + (g[1] + g[3]);
}

/* sum_i a[i] b[i], i < n: lane j sums the terms i = j mod 16 in order (the
 * tail zero-padded into one more vector), then hsum16. */
static float dot(const float* a, const float* b, int n) {
    v16 acc = {0.0f};
    int i = 0;
    for (; i + 16 <= n; i += 16) acc += V16(a + i) * V16(b + i);   /* hot loop */
    if (i < n) {
        float ta[16] = {0.0f}, tb[16] = {0.0f};
        memcpy(ta, a + i, (size_t)(n - i) * sizeof(float));
        memcpy(tb, b + i, (size_t)(n - i) * sizeof(float));
        acc += V16(ta) * V16(tb);
    }
    return hsum16(&acc);
}

/* One block of NB (1..4) x 16 channels of combine, the accumulators in
 * registers. always_inline so that NB folds to a constant. */
static inline __attribute__((always_inline)) void
combine_block(const int NB, float* dst, const float* w, size_t ws, int n, const float* rows,
              size_t ld, int accumulate) {
    v16 acc[4] = {{0.0f}, {0.0f}, {0.0f}, {0.0f}};
    for (int s = 0; s < n; s++) {   /* hot loop: NB broadcast-multiply-adds */
        const float x = w[(size_t)s * ws];
        const float* r = rows + (size_t)s * ld;
        for (int b = 0; b < NB; b++) acc[b] += x * V16(r + 16 * b);
    }
    for (int b = 0; b < NB; b++) {
        v16 d0 = {0.0f};
        if (accumulate) d0 = V16(dst + 16 * b);
        V16(dst + 16 * b) = d0 + acc[b];
    }
}

/* dst[i] = (accumulate ? dst[i] : 0) + sum_{s<n} w[s*ws] * rows[s*ld + i]
 * for i < hs; the sum runs over s in order. Without accumulate dst is never
 * read (it may hold NaN). Channels go 64 at a time, then 16 at a time, then
 * one at a time (hs not a multiple of 16). */
static void combine(float* dst, const float* w, size_t ws, int n, const float* rows,
                    size_t ld, int hs, int accumulate) {
    int i = 0;
    for (; i + 64 <= hs; i += 64) combine_block(4, dst + i, w, ws, n, rows + i, ld, accumulate);
    switch ((hs - i) / 16) {
    case 3: combine_block(3, dst + i, w, ws, n, rows + i, ld, accumulate); i += 48; break;
    case 2: combine_block(2, dst + i, w, ws, n, rows + i, ld, accumulate); i += 32; break;
    case 1: combine_block(1, dst + i, w, ws, n, rows + i, ld, accumulate); i += 16; break;
    default: break;
    }
    for (; i < hs; i++) {
        float acc = 0.0f;
        for (int s = 0; s < n; s++) acc += w[(size_t)s * ws] * rows[(size_t)s * ld + i];
        dst[i] = (accumulate ? dst[i] : 0.0f) + acc;
    }
}

/* a[s] = exp(a[s] - mx) for s < n; returns the sum. */
#if XATT_AVX2
static float exp_sum(float* a, int n, float mx) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (int s = 0; s < n; s += 8) {
        /* lanes past n read as -inf (exp 0) and are not stored */
        const __m256i km = tail_mask(n - s);
        __m256 x = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(a + s, km),
                                    _mm256_castsi256_ps(km));
        __m256 e = exp_neg(_mm256_sub_ps(x, vm));
        _mm256_maskstore_ps(a + s, km, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lane[8];
    _mm256_storeu_ps(lane, acc);
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}
#else
static float exp_sum(float* a, int n, float mx) {
    float sum = 0.0f;
    for (int s = 0; s < n; s++) { a[s] = expf(a[s] - mx); sum += a[s]; }
    return sum;
}
#endif

/* Row a[0..n) of raw scores q.k (masked keys: anything) in, probabilities
 * out: zeros at the masked keys (mask[s] == 0; mask may be NULL), all zeros
 * when no key is visible, all NaN when a visible score is NaN. */
static void softmax_row(float* a, int n, const int32_t* mask, float scale) {
    float mx = -INFINITY;
    int nan = 0;
    for (int s = 0; s < n; s++) {
        const float x = (mask && !mask[s]) ? -INFINITY : a[s] * scale;
        a[s] = x;
        mx = x > mx ? x : mx;
        nan |= isnan(x);
    }
    if (nan) mx = NAN;   /* exp(x - NaN) poisons the row */
    if (mx == -INFINITY) {
        memset(a, 0, (size_t)n * sizeof(float));
        return;
    }
    const float inv = 1.0f / exp_sum(a, n, mx);
    for (int s = 0; s < n; s++) a[s] *= inv;
}

/* ================================================================ forward */

mg_status mg_cross_attention_forward(float* out, float* att, const float* q,
                                     const float* kv, const int32_t* key_mask,
                                     int B, int Tq, int Tk, int C, int NH) {
    MG_TRY(check_cross_attention_forward(__func__, out, att, q, kv, B, Tq, Tk, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t C2 = 2 * (size_t)C;
    const int BH = B * NH;
    #pragma omp parallel for schedule(static) if ((size_t)BH * Tq * Tk * hs >= MG_PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float* qh = q + (size_t)b * Tq * C + (size_t)h * hs;    /* (Tq,hs), ld C */
        const float* kh = kv + (size_t)b * Tk * C2 + (size_t)h * hs;  /* (Tk,hs), ld 2C */
        const float* vh = kh + C;                                     /* (Tk,hs), ld 2C */
        float* oh = out + (size_t)b * Tq * C + (size_t)h * hs;        /* (Tq,hs), ld C */
        float* A = att + (size_t)bh * Tq * Tk;                        /* (Tq,Tk) */
        const int32_t* mask = key_mask ? key_mask + (size_t)b * Tk : NULL;
        for (int t = 0; t < Tq; t++) {
            float* a = A + (size_t)t * Tk;
            const float* qt = qh + (size_t)t * C;
            for (int s = 0; s < Tk; s++)   /* S = q k^T (padded keys: skipped) */
                a[s] = (mask && !mask[s]) ? 0.0f : dot(qt, kh + (size_t)s * C2, hs);
            softmax_row(a, Tk, mask, scale);
            combine(oh + (size_t)t * C, a, 1, Tk, vh, C2, hs, 0);   /* o = P v */
        }
    }
    return MG_OK;
}

/* ================================================================ backward */

mg_status mg_cross_attention_backward(float* dq, float* dkv, float* scratch,
                                      const float* dout, const float* q,
                                      const float* kv, const float* att,
                                      int B, int Tq, int Tk, int C, int NH,
                                      int accumulate) {
    MG_TRY(check_cross_attention_backward(__func__, dq, dkv, scratch, dout, q, kv, att,
                                          B, Tq, Tk, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t C2 = 2 * (size_t)C;
    const int BH = B * NH;
    #pragma omp parallel for schedule(static) if ((size_t)BH * Tq * Tk * hs >= MG_PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const size_t qoff = (size_t)b * Tq * C + (size_t)h * hs;
        const size_t koff = (size_t)b * Tk * C2 + (size_t)h * hs;
        const float* qh = q + qoff;          /* (Tq,hs), ld C */
        const float* gh = dout + qoff;       /* (Tq,hs), ld C */
        float* dqh = dq + qoff;              /* (Tq,hs), ld C */
        const float* kh = kv + koff;         /* (Tk,hs), ld 2C */
        const float* vh = kh + C;
        float* dkh = dkv + koff;             /* (Tk,hs), ld 2C */
        float* dvh = dkh + C;
        const float* P = att + (size_t)bh * Tq * Tk;   /* (Tq,Tk) */
        float* dS = scratch + (size_t)bh * Tq * Tk;    /* (Tq,Tk) */

        /* Pass 1, per query row t:
         * Forward: o = P v                -> dP = do v^T
         * Forward: P = softmax(S)         -> dS = P * (dP - sum_s P dP)
         * Forward: S = q k^T * scale      -> dq = scale * dS k
         * The scale is folded into dS. */
        for (int t = 0; t < Tq; t++) {
            float* d = dS + (size_t)t * Tk;
            const float* p = P + (size_t)t * Tk;
            const float* gt = gh + (size_t)t * C;
            for (int s = 0; s < Tk; s++) d[s] = dot(gt, vh + (size_t)s * C2, hs);
            const float pd = dot(p, d, Tk);
            for (int s = 0; s < Tk; s++) d[s] = p[s] * (d[s] - pd) * scale;
            combine(dqh + (size_t)t * C, d, 1, Tk, kh, C2, hs, accumulate);
        }
        /* Pass 2, per key row s, over the queries t in order (columns of dS
         * and P, Tk apart):
         * Forward: S = q k^T * scale      -> dk = dS^T q
         * Forward: o = P v                -> dv = P^T do */
        for (int s = 0; s < Tk; s++) {
            combine(dkh + (size_t)s * C2, dS + s, (size_t)Tk, Tq, qh, (size_t)C, hs, accumulate);
            combine(dvh + (size_t)s * C2, P + s, (size_t)Tk, Tq, gh, (size_t)C, hs, accumulate);
        }
    }
    return MG_OK;
}
