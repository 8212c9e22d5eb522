/*
 * attention.c — multi-head self-attention on packed qkv (B,T,3C) = [q|k|v]:
 * forward, backward and a KV-cache decoding step.
 *
 * Math, per batch row b and head h (q, k, v, o are (T,hs) slices):
 *   S = q k^T * scale,  scale = 1/sqrt(hs)
 *   P = softmax over the visible keys of each row (invisible: P = 0)
 *   o = P v
 * Visible: s <= t when causal, and key_mask[b][s] != 0 when a mask is given.
 * A query that sees no key gets P = 0 and o = 0 (not NaN).
 *
 * Layout of the work: one (b, h) per work item, parallel over B*NH with a
 * static schedule. Each item writes only its own head's channels of out/dqkv
 * and its own (T,T) slab of att/scratch, so there are no atomics and every
 * bit is fixed regardless of the thread count. All six products are one
 * register-blocked panel, panel_axpy (MR rows x 16 columns, broadcast-FMA):
 *   forward:  S = q k^T (k packed into 16-key transposed panels), o = P v;
 *   backward: dP = do v^T (v in panels), dq += dS k, and per 16-key column
 *             block (packed) dk += dS^T q, dv += P^T do.
 * Each head's rows are first copied out of the strided qkv into a fixed
 * per-thread area (see gather); heads too long for it fall back to the
 * strided rows and a dot-product panel (panel_dot). Causal blocks stop at the
 * diagonal, so about half of every product is skipped.
 *
 * Numerical notes:
 *   - softmax subtracts the row max of the visible scores (no overflow);
 *     rows with no visible key are detected via the max (-inf) and zeroed.
 *   - exp is a vectorised Cody-Waite + degree-7 polynomial (Cephes expf
 *     coefficients): max relative error 8.4e-8 (about 1.4 ulp) over every float
 *     in [-87, 0] against double exp (the tests check the probabilities to
 *     2e-6 against float64); arguments below about -87.3 flush to 0 (the
 *     true value is below FLT_MIN, far under the 1e-6 we care about in a row
 *     whose largest entry is 1).
 *   - all sums run in a fixed order (vector lanes, then a fixed lane tree).
 *   - a NaN score makes its whole query row (att and out) NaN, as in the
 *     reference; it is never mistaken for a row with no visible key.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ATT_AVX2 1
#else
#define ATT_AVX2 0
#endif

/* Rows per register tile. AVX2: 6 rows x 16 columns, 12 accumulators plus
 * 2 operand vectors and a broadcast in the 16 ymm registers; 12 independent
 * FMA chains leave slack over the 8 that two 4-cycle FMA pipes need (with 8,
 * 4 x 16, any stall shows). AVX-512: 4 rows x up to 64 columns on zmm. */
#if ATT_AVX2 && !defined(__AVX512F__)
enum { MR = 6 };
#else
enum { MR = 4 };
#endif

#if ATT_AVX2
/* ================================================================ AVX2 */

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* a[s] = exp(a[s] - mx) for s < n; returns the sum. The tail is one masked
 * vector (lanes past n read as -inf, exp 0), so every element sees the same
 * exp code; causal rows are mostly short, and their tails a large share of
 * the work. */
static float exp_sum(float* a, int n, float mx) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int s = 0;
    for (; s + 8 <= n; s += 8) {
        __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(a + s), vm));
        _mm256_storeu_ps(a + s, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (s < n) {
        const __m256i km = tail_mask(n - s);
        __m256 x = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(a + s, km),
                                    _mm256_castsi256_ps(km));
        __m256 e = exp_neg(_mm256_sub_ps(x, vm));
        _mm256_maskstore_ps(a + s, km, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum(acc);
}

/* a[s] *= inv for s < n. */
static void scale_row(float* a, int n, float inv) {
    const __m256 vi = _mm256_set1_ps(inv);
    int s = 0;
    for (; s + 8 <= n; s += 8) _mm256_storeu_ps(a + s, _mm256_mul_ps(_mm256_loadu_ps(a + s), vi));
    if (s < n) {
        const __m256i km = tail_mask(n - s);
        _mm256_maskstore_ps(a + s, km, _mm256_mul_ps(_mm256_maskload_ps(a + s, km), vi));
    }
}

/* a[s] = a[s]*scale for s < n, -inf where mask[s] == 0 (mask may be NULL);
 * returns the max, or NaN if any visible score is NaN: max() drops NaNs, and
 * a row of NaNs would otherwise look like a row with no visible key and be
 * zeroed silently instead of poisoning the output. */
static float scale_mask_max(float* a, int n, const int32_t* mask, float scale) {
    const __m256 vs = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    __m256 mx = ninf, bad = _mm256_setzero_ps();
    int s = 0;
    for (; s + 8 <= n; s += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(a + s), vs);
        if (mask) {
            __m256i m = _mm256_loadu_si256((const __m256i*)(mask + s));
            __m256 dead = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
            x = _mm256_blendv_ps(x, ninf, dead);
        }
        _mm256_storeu_ps(a + s, x);
        mx = _mm256_max_ps(mx, x);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    if (s < n) {   /* the tail: one masked vector, -inf past n */
        const __m256i km = tail_mask(n - s);
        __m256 x = _mm256_mul_ps(_mm256_maskload_ps(a + s, km), vs);
        if (mask) {
            __m256i m = _mm256_maskload_epi32((const int*)(mask + s), km);
            __m256 dead = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
            x = _mm256_blendv_ps(x, ninf, dead);
        }
        _mm256_maskstore_ps(a + s, km, x);
        x = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(km));
        mx = _mm256_max_ps(mx, x);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    float m = hmax(mx);
    return _mm256_movemask_ps(bad) != 0 ? NAN : m;
}

/* ---------------------------------------------------------------- panels */

/* c[m*ldc + n] = sum_{i<K} a[m*lda + i] * b[n*ldb + i] for m < mr (<= 4),
 * n < N. Rows m >= mr alias row mr-1 (computed, not stored), so one code
 * path serves the ragged last block. Tiles of 4 rows x 2 columns: 8
 * accumulators, 4+1 operand registers; the hadd tree reduces them 4 at a
 * time. */
static void panel_dot4(int mr, int N, int K, const float* a, size_t lda,
                       const float* b, size_t ldb, float* c, size_t ldc) {
    const float* a0 = a;
    const float* a1 = a + (size_t)MG_MIN(1, mr - 1) * lda;
    const float* a2 = a + (size_t)MG_MIN(2, mr - 1) * lda;
    const float* a3 = a + (size_t)MG_MIN(3, mr - 1) * lda;
    const int Kv = K & ~7;
    const __m256i km = tail_mask(K - Kv);
    for (int n = 0; n < N; n += 2) {
        const float* b0 = b + (size_t)n * ldb;
        const float* b1 = b + (size_t)MG_MIN(n + 1, N - 1) * ldb;
        __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00;
        __m256 c20 = c00, c21 = c00, c30 = c00, c31 = c00;
        /* ---- hot loop: 8 FMAs per 6 loads */
        for (int i = 0; i < Kv; i += 8) {
            __m256 x0 = _mm256_loadu_ps(a0 + i), x1 = _mm256_loadu_ps(a1 + i);
            __m256 x2 = _mm256_loadu_ps(a2 + i), x3 = _mm256_loadu_ps(a3 + i);
            __m256 y = _mm256_loadu_ps(b0 + i);
            c00 = _mm256_fmadd_ps(x0, y, c00); c10 = _mm256_fmadd_ps(x1, y, c10);
            c20 = _mm256_fmadd_ps(x2, y, c20); c30 = _mm256_fmadd_ps(x3, y, c30);
            y = _mm256_loadu_ps(b1 + i);
            c01 = _mm256_fmadd_ps(x0, y, c01); c11 = _mm256_fmadd_ps(x1, y, c11);
            c21 = _mm256_fmadd_ps(x2, y, c21); c31 = _mm256_fmadd_ps(x3, y, c31);
        }
        if (Kv < K) {
            int i = Kv;
            __m256 x0 = _mm256_maskload_ps(a0 + i, km), x1 = _mm256_maskload_ps(a1 + i, km);
            __m256 x2 = _mm256_maskload_ps(a2 + i, km), x3 = _mm256_maskload_ps(a3 + i, km);
            __m256 y = _mm256_maskload_ps(b0 + i, km);
            c00 = _mm256_fmadd_ps(x0, y, c00); c10 = _mm256_fmadd_ps(x1, y, c10);
            c20 = _mm256_fmadd_ps(x2, y, c20); c30 = _mm256_fmadd_ps(x3, y, c30);
            y = _mm256_maskload_ps(b1 + i, km);
            c01 = _mm256_fmadd_ps(x0, y, c01); c11 = _mm256_fmadd_ps(x1, y, c11);
            c21 = _mm256_fmadd_ps(x2, y, c21); c31 = _mm256_fmadd_ps(x3, y, c31);
        }
        /* r01 = [row0 col n, row0 col n+1, row1 col n, row1 col n+1] */
        __m256 h01 = _mm256_hadd_ps(_mm256_hadd_ps(c00, c01), _mm256_hadd_ps(c10, c11));
        __m256 h23 = _mm256_hadd_ps(_mm256_hadd_ps(c20, c21), _mm256_hadd_ps(c30, c31));
        __m128 r01 = _mm_add_ps(_mm256_castps256_ps128(h01), _mm256_extractf128_ps(h01, 1));
        __m128 r23 = _mm_add_ps(_mm256_castps256_ps128(h23), _mm256_extractf128_ps(h23, 1));
        float* cp = c + n;
        if (n + 1 < N) {
            _mm_storel_pi((__m64*)cp, r01);
            if (mr > 1) _mm_storeh_pi((__m64*)(cp + ldc), r01);
            if (mr > 2) _mm_storel_pi((__m64*)(cp + 2 * ldc), r23);
            if (mr > 3) _mm_storeh_pi((__m64*)(cp + 3 * ldc), r23);
        } else {
            _mm_store_ss(cp, r01);
            if (mr > 1) _mm_store_ss(cp + ldc, _mm_movehl_ps(r01, r01));
            if (mr > 2) _mm_store_ss(cp + 2 * ldc, r23);
            if (mr > 3) _mm_store_ss(cp + 3 * ldc, _mm_movehl_ps(r23, r23));
        }
    }
}

/* panel_dot for mr <= MR rows: groups of at most 4. */
static void panel_dot(int mr, int N, int K, const float* a, size_t lda,
                      const float* b, size_t ldb, float* c, size_t ldc) {
    for (int m = 0; m < mr; m += 4)
        panel_dot4(MG_MIN(4, mr - m), N, K, a + (size_t)m * lda, lda, b, ldb,
                   c + (size_t)m * ldc, ldc);
}

/* One 6 x (8*NV) tile of panel_axpy (AVX2: MR = 6); `part` masks the last
 * vector. Row m of A is ar[m] (rows past mr alias the last one: computed, not
 * stored). always_inline so that NV and part fold to constants. */
static inline __attribute__((always_inline)) void
axpy_tile(int NV, int part, __m256i mk, int mr, int k0, int k1, const float* const* ar,
          size_t acs, const float* b, size_t ldb, float* c, size_t ldc, int accumulate) {
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
    __m256 acc[6][2];
    #pragma GCC unroll 6
    for (int m = 0; m < 6; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    /* ---- hot loop: 12 FMAs per 2 loads + 6 broadcasts */
    for (int k = k0; k < k1; k++) {
        const float* bk = b + (size_t)k * ldb;
        const size_t ak = (size_t)k * acs;
        __m256 y0, y1 = _mm256_setzero_ps();
        if (NV == 1) {
            y0 = part ? _mm256_maskload_ps(bk, mk) : _mm256_loadu_ps(bk);
        } else {
            y0 = _mm256_loadu_ps(bk);
            y1 = part ? _mm256_maskload_ps(bk + 8, mk) : _mm256_loadu_ps(bk + 8);
        }
        /* Keep y0, y1 in registers: otherwise gcc folds each load into every
         * FMA that uses it (18 loads per 12 FMAs), and the load ports, not the
         * FMA pipes, set the pace. */
        __asm__("" : "+x"(y0), "+x"(y1));
#define ATT_ROW(m, am)                                                      \
        {                                                                   \
            __m256 x = _mm256_broadcast_ss(am + ak);                        \
            acc[m][0] = _mm256_fmadd_ps(x, y0, acc[m][0]);                  \
            if (NV == 2) acc[m][1] = _mm256_fmadd_ps(x, y1, acc[m][1]);     \
        }
        ATT_ROW(0, a0) ATT_ROW(1, a1) ATT_ROW(2, a2)
        ATT_ROW(3, a3) ATT_ROW(4, a4) ATT_ROW(5, a5)
#undef ATT_ROW
    }
    /* constant indices into acc (rows past mr are skipped), so the
     * accumulators stay in registers */
    #pragma GCC unroll 6
    for (int m = 0; m < 6; m++) {
        if (m >= mr) break;
        float* cm = c + (size_t)m * ldc;
        #pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            __m256 r = acc[m][v];
            if (part && v == NV - 1) {
                if (accumulate) r = _mm256_add_ps(r, _mm256_maskload_ps(cm + 8 * v, mk));
                _mm256_maskstore_ps(cm + 8 * v, mk, r);
            } else {
                if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(cm + 8 * v));
                _mm256_storeu_ps(cm + 8 * v, r);
            }
        }
    }
}

/* c[m*ldc + n] (+)= sum_{k0<=k<k1} A(m,k) * B(k,n), m < mr (<= MR), n < N,
 * with A(m,k) = a[m*ars + k*acs]: (ars, acs) = (lda, 1) for A, (1, lda) for
 * A^T, or (1, MR) for a packed row block (pack_rows).
 * B(k,n) = b[(n/16)*bblk + k*ldb + n%16]: bblk = 16 for plain rows, 16*K for
 * 16-column panels (see pack_panels).
 * accumulate: add into c instead of overwriting it. */
#if defined(__AVX512F__)
/* One 4 x (16*NP) tile of panel_axpy on zmm registers: NP (1..4) 16-column
 * panels at once, 4*NP accumulators, each of one output element's 16 lanes
 * chained over k exactly as the ymm tile chains them (the same bits). The
 * last panel's valid columns are `last` (1..16). always_inline so that NP
 * folds to a constant. */
static inline __attribute__((always_inline)) void
axpy_tile16(const int NP, int last, int mr, int k0, int k1,
            const float* a0, const float* a1, const float* a2, const float* a3,
            size_t acs, const float* b, size_t ldb, size_t bblk, float* c, size_t ldc,
            int accumulate) {
    /* the last panel's columns past `last` are never read (masked loads)
     * nor written */
    const __mmask16 mlast = last == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << last) - 1);
    __m512 acc[4][4];
    #pragma GCC unroll 4
    for (int m = 0; m < 4; m++)
        #pragma GCC unroll 4
        for (int p = 0; p < NP; p++) acc[m][p] = _mm512_setzero_ps();
    /* ---- hot loop: 4*NP FMAs per NP loads + 4 broadcasts */
    for (int k = k0; k < k1; k++) {
        const float* bk = b + (size_t)k * ldb;
        const size_t ak = (size_t)k * acs;
        __m512 y[4];
        #pragma GCC unroll 4
        for (int p = 0; p < NP - 1; p++) y[p] = _mm512_loadu_ps(bk + (size_t)p * bblk);
        y[NP - 1] = _mm512_maskz_loadu_ps(mlast, bk + (size_t)(NP - 1) * bblk);
        const __m512 x0 = _mm512_set1_ps(a0[ak]), x1 = _mm512_set1_ps(a1[ak]);
        const __m512 x2 = _mm512_set1_ps(a2[ak]), x3 = _mm512_set1_ps(a3[ak]);
        #pragma GCC unroll 4
        for (int p = 0; p < NP; p++) {
            acc[0][p] = _mm512_fmadd_ps(x0, y[p], acc[0][p]);
            acc[1][p] = _mm512_fmadd_ps(x1, y[p], acc[1][p]);
            acc[2][p] = _mm512_fmadd_ps(x2, y[p], acc[2][p]);
            acc[3][p] = _mm512_fmadd_ps(x3, y[p], acc[3][p]);
        }
    }
    /* constant indices into acc (rows past mr are skipped, not indexed by
     * mr), so the accumulators stay in registers */
    #pragma GCC unroll 4
    for (int p = 0; p < NP; p++) {
        __mmask16 mk = p < NP - 1 ? (__mmask16)0xFFFF : mlast;
        #pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            if (m >= mr) break;
            float* cm = c + (size_t)m * ldc + 16 * p;
            __m512 r = acc[m][p];
            if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mk, cm));
            _mm512_mask_storeu_ps(cm, mk, r);
        }
    }
}

#endif

static void panel_axpy(int mr, int N, int k0, int k1, const float* a, size_t ars,
                       size_t acs, const float* b, size_t ldb, size_t bblk, float* c,
                       size_t ldc, int accumulate) {
    int n = 0;
#if defined(__AVX512F__)
    const float* a0 = a;
    const float* a1 = a + (size_t)MG_MIN(1, mr - 1) * ars;
    const float* a2 = a + (size_t)MG_MIN(2, mr - 1) * ars;
    const float* a3 = a + (size_t)MG_MIN(3, mr - 1) * ars;
    for (; n + 64 <= N; n += 64, b += 4 * bblk)
        axpy_tile16(4, 16, mr, k0, k1, a0, a1, a2, a3, acs, b, ldb, bblk, c + n, ldc, accumulate);
    int rest = N - n;                  /* 0..63 columns in 0..4 panels */
    int np = (rest + 15) / 16, last = rest - 16 * (np - 1);
    if (np == 4)
        axpy_tile16(4, last, mr, k0, k1, a0, a1, a2, a3, acs, b, ldb, bblk, c + n, ldc, accumulate);
    else if (np == 3)
        axpy_tile16(3, last, mr, k0, k1, a0, a1, a2, a3, acs, b, ldb, bblk, c + n, ldc, accumulate);
    else if (np == 2)
        axpy_tile16(2, last, mr, k0, k1, a0, a1, a2, a3, acs, b, ldb, bblk, c + n, ldc, accumulate);
    else if (np == 1)
        axpy_tile16(1, last, mr, k0, k1, a0, a1, a2, a3, acs, b, ldb, bblk, c + n, ldc, accumulate);
#else
    const float* ar[6];
    for (int m = 0; m < 6; m++) ar[m] = a + (size_t)MG_MIN(m, mr - 1) * ars;
    const __m256i ones = _mm256_set1_epi32(-1);
    for (; n + 16 <= N; n += 16, b += bblk)
        axpy_tile(2, 0, ones, mr, k0, k1, ar, acs, b, ldb, c + n, ldc, accumulate);
    int rest = N - n;
    if (rest > 8)
        axpy_tile(2, 1, tail_mask(rest - 8), mr, k0, k1, ar, acs, b, ldb, c + n, ldc, accumulate);
    else if (rest == 8)
        axpy_tile(1, 0, ones, mr, k0, k1, ar, acs, b, ldb, c + n, ldc, accumulate);
    else if (rest > 0)
        axpy_tile(1, 1, tail_mask(rest), mr, k0, k1, ar, acs, b, ldb, c + n, ldc, accumulate);
#endif
}

#else
/* ================================================================ portable */

static float exp_sum(float* a, int n, float mx) {
    float sum = 0.0f;
    for (int s = 0; s < n; s++) { a[s] = expf(a[s] - mx); sum += a[s]; }
    return sum;
}

static void scale_row(float* a, int n, float inv) {
    for (int s = 0; s < n; s++) a[s] *= inv;
}

static float scale_mask_max(float* a, int n, const int32_t* mask, float scale) {
    float m = -INFINITY;
    int nan = 0;
    for (int s = 0; s < n; s++) {
        float x = (mask && !mask[s]) ? -INFINITY : a[s] * scale;
        a[s] = x;
        m = x > m ? x : m;
        nan |= isnan(x);
    }
    return nan ? NAN : m;
}

static void panel_dot(int mr, int N, int K, const float* a, size_t lda,
                      const float* b, size_t ldb, float* c, size_t ldc) {
    for (int m = 0; m < mr; m++)
        for (int n = 0; n < N; n++) {
            float s = 0.0f;
            for (int i = 0; i < K; i++) s += a[m * lda + i] * b[n * ldb + i];
            c[m * ldc + n] = s;
        }
}

static void panel_axpy(int mr, int N, int k0, int k1, const float* a, size_t ars,
                       size_t acs, const float* b, size_t ldb, size_t bblk, float* c,
                       size_t ldc, int accumulate) {
    for (int m = 0; m < mr; m++) {
        float* cm = c + m * ldc;
        if (!accumulate) memset(cm, 0, (size_t)N * sizeof(float));
        for (int k = k0; k < k1; k++) {
            float w = a[m * ars + k * acs];
            for (int n = 0; n < N; n++)
                cm[n] += w * b[(size_t)(n / 16) * bblk + (size_t)k * ldb + n % 16];
        }
    }
}
#endif

/* ================================================================ softmax */

/* Row a[0..T): entries s < n hold raw scores q.k; keys s >= n are invisible
 * (causal), as are keys with mask[s] == 0. Leaves the probabilities, with
 * zeros at every invisible key; a row that sees no key becomes all zeros. */
static void softmax_row(float* a, int n, int T, const int32_t* mask, float scale) {
    float mx = scale_mask_max(a, n, mask, scale);
    if (mx == -INFINITY) {
        memset(a, 0, (size_t)T * sizeof(float));
        return;
    }
    scale_row(a, n, 1.0f / exp_sum(a, n, mx));
    if (n < T) memset(a + n, 0, (size_t)(T - n) * sizeof(float));
}

/* ================================================================ gather */

/* Per-thread copy of one head's rows, made contiguous (row stride hs instead
 * of 3C). Why: at C=384 the qkv row stride is 4608 bytes, which maps every row
 * of a head onto 8 of the 64 L1 sets, so the k/v rows the panels stream
 * through evict each other long before they are reused; contiguous rows use
 * every set and the adjacent-line prefetch. Fixed size and allocated once per
 * thread by the TLS machinery, never per call; heads that do not fit (T*hs
 * beyond ARENA/4, e.g. T > 1024 at hs = 64) use the strided rows directly. */
enum { ARENA = 4 * 65536 };
static _Thread_local float arena[ARENA];

/* Column panels of dS and P for the dk, dv sums: KB keys (one cache line of
 * each row) by up to PT queries, packed contiguous. Reading the columns in
 * place walks rows T*4 bytes apart (4096 at T=1024: one L1 set); packing
 * reads each line once. */
enum { KB = 16, PT = 2048, PACKBUF = 2 * KB * PT };
static _Thread_local float packbuf[PACKBUF];

/* dst (n,KB) = src[t][0..w) for t < n, src rows ld apart; zero beyond w. */
static void pack_cols(float* dst, const float* src, size_t ld, int n, int w) {
    for (int t = 0; t < n; t++) {
        const float* r = src + (size_t)t * ld;
        float* d = dst + (size_t)t * KB;
        if (w == KB) {
            memcpy(d, r, KB * sizeof(float));
        } else {
            for (int j = 0; j < w; j++) d[j] = r[j];
            for (int j = w; j < KB; j++) d[j] = 0.0f;
        }
    }
}

/* dst = src (T, ld) transposed into 16-row panels: dst[(s/16)*16*hs + i*16 +
 * s%16] = src[s][i], zero past T. S = q k^T then runs as broadcast-FMA over
 * contiguous 64-byte rows of keys (panel_axpy with ldb 16, bblk 16*hs) instead
 * of dot products that end in horizontal adds. Returns dst. */
static float* pack_panels(float* dst, const float* src, size_t ld, int T, int hs) {
    for (int s0 = 0; s0 < T; s0 += 16) {
        float* d = dst + (size_t)s0 * hs;
        const int w = MG_MIN(16, T - s0);
#if ATT_AVX2
        if (w == 16 && hs % 8 == 0) {   /* 8 keys x 8 dims, transposed in registers */
            for (int j0 = 0; j0 < 16; j0 += 8)
                for (int i0 = 0; i0 < hs; i0 += 8)
                    transpose8x8(d + (size_t)i0 * 16 + j0, 16, src + (size_t)(s0 + j0) * ld + i0, ld);
            continue;
        }
#endif
        for (int j = 0; j < w; j++) {
            const float* r = src + (size_t)(s0 + j) * ld;
            for (int i = 0; i < hs; i++) d[(size_t)i * 16 + j] = r[i];
        }
        for (int j = w; j < 16; j++)
            for (int i = 0; i < hs; i++) d[(size_t)i * 16 + j] = 0.0f;
    }
    return dst;
}

/* dst (n,MR): rows r < mr of src (mr, ld) interleaved, dst[k*MR + r] =
 * src[r][k]. The broadcasts of panel_axpy then read one line for MR rows. */
static float* pack_rows(float* dst, const float* src, size_t ld, int mr, int n) {
    for (int r = 0; r < mr; r++)
        for (int k = 0; k < n; k++) dst[(size_t)k * MR + r] = src[(size_t)r * ld + k];
    return dst;
}

/* dst (T,hs) = rows of src (T, ld); returns dst. */
static float* gather(float* dst, const float* src, size_t ld, int T, int hs) {
    for (int t = 0; t < T; t++)
        memcpy(dst + (size_t)t * hs, src + (size_t)t * ld, (size_t)hs * sizeof(float));
    return dst;
}

/* Softmax backward on one row, in place: d[s] = p[s] (d[s] - sum_r p[r] d[r])
 * * scale for s < n (forward: p = softmax(scale * S) over the visible keys). */
static void softmax_grad_row(float* d, const float* p, int n, float scale) {
    int s = 0;
    float dot = 0.0f;
#if ATT_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; s + 8 <= n; s += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + s), _mm256_loadu_ps(d + s), acc);
    dot = hsum(acc);
#endif
    for (; s < n; s++) dot += p[s] * d[s];
    s = 0;
#if ATT_AVX2
    const __m256 vdot = _mm256_set1_ps(dot), vs = _mm256_set1_ps(scale);
    for (; s + 8 <= n; s += 8) {
        __m256 x = _mm256_sub_ps(_mm256_loadu_ps(d + s), vdot);
        _mm256_storeu_ps(d + s, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p + s), x), vs));
    }
#endif
    for (; s < n; s++) d[s] = p[s] * (d[s] - dot) * scale;
}

/* ================================================================ forward */

mg_status mg_attention_forward(float* out, float* att, const float* qkv,
                               const int32_t* key_mask,
                               int B, int T, int C, int NH, int causal) {
    MG_TRY(check_attention_forward(__func__, out, att, qkv, B, T, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t C3 = 3 * (size_t)C;
    const int BH = B * NH;
    /* Heads too long for the per-thread areas run on the strided rows. */
    const int Tp = (T + 15) & ~15;
    const int fast = (size_t)(Tp + T) * hs <= ARENA;
    const int packA = (size_t)MR * T <= PACKBUF;
    #pragma omp parallel for schedule(static) if ((size_t)BH * T * T * hs >= MG_PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float* q = qkv + (size_t)b * T * C3 + (size_t)h * hs;   /* (T,hs), ld 3C */
        const float* k = q + C;
        const float* v = q + 2 * (size_t)C;
        float* o = out + (size_t)b * T * C + (size_t)h * hs;          /* (T,hs), ld C */
        float* A = att + (size_t)bh * T * T;                          /* (T,T) */
        const int32_t* mask = key_mask ? key_mask + (size_t)b * T : NULL;
        const float* kp = NULL;                                       /* k in panels */
        size_t ldv = C3;
        if (fast) {
            kp = pack_panels(arena, k, C3, T, hs);
            v = gather(arena + (size_t)Tp * hs, v, C3, T, hs);
            ldv = (size_t)hs;
        }
        /* Row blocks of MR queries: S, softmax and P v while the block's rows
         * of P are still in L1. Causal blocks stop at their last row's key. */
        for (int t0 = 0; t0 < T; t0 += MR) {
            const int mr = MG_MIN(MR, T - t0);
            const int nk = causal ? t0 + mr : T;
            float* Ab = A + (size_t)t0 * T;
            const float* qb = q + (size_t)t0 * C3;
            if (kp) panel_axpy(mr, nk, 0, hs, qb, C3, 1, kp, 16, 16 * (size_t)hs, Ab, (size_t)T, 0);
            else panel_dot(mr, nk, hs, qb, C3, k, C3, Ab, (size_t)T);
            for (int m = 0; m < mr; m++)
                softmax_row(Ab + (size_t)m * T, causal ? t0 + m + 1 : T, T, mask, scale);
            if (packA)
                panel_axpy(mr, hs, 0, nk, pack_rows(packbuf, Ab, (size_t)T, mr, nk), 1, MR,
                           v, ldv, 16, o + (size_t)t0 * C, (size_t)C, 0);
            else
                panel_axpy(mr, hs, 0, nk, Ab, (size_t)T, 1, v, ldv, 16, o + (size_t)t0 * C,
                           (size_t)C, 0);
        }
    }
    return MG_OK;
}

/* ================================================================ backward */

mg_status mg_attention_backward(float* dqkv, float* scratch, const float* dout,
                                const float* qkv, const float* att,
                                int B, int T, int C, int NH, int causal,
                                int accumulate) {
    MG_TRY(check_attention_backward(__func__, dqkv, scratch, dout, qkv, att, B, T, C, NH));
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t C3 = 3 * (size_t)C;
    const int BH = B * NH;
    const int Tp = (T + 15) & ~15;
    const int fast = (size_t)(3 * (size_t)T + Tp) * hs <= ARENA;
    const int packA = (size_t)MR * T <= PACKBUF;
    #pragma omp parallel for schedule(static) if ((size_t)BH * T * T * hs >= MG_PAR_MIN)
    for (int bh = 0; bh < BH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const size_t off = (size_t)b * T * C3 + (size_t)h * hs;
        const float* q = qkv + off;                      /* (T,hs), ld 3C */
        const float* k = q + C;
        const float* v = q + 2 * (size_t)C;
        float* dq = dqkv + off;
        float* dk = dq + C;
        float* dv = dq + 2 * (size_t)C;
        if (!accumulate)   /* this head's slices only: in cache, in parallel */
            for (int t = 0; t < T; t++)
                for (int part = 0; part < 3; part++)
                    memset(dq + (size_t)t * C3 + (size_t)part * C, 0, (size_t)hs * sizeof(float));
        const float* g = dout + (size_t)b * T * C + (size_t)h * hs;  /* (T,hs), ld C */
        size_t ldq = C3, ldg = (size_t)C;
        const float* vp = NULL;                                       /* v in panels */
        if (fast) {
            const size_t n = (size_t)T * hs;
            q = gather(arena, q, C3, T, hs);
            k = gather(arena + n, k, C3, T, hs);
            g = gather(arena + 2 * n, g, (size_t)C, T, hs);
            vp = pack_panels(arena + 3 * n, v, C3, T, hs);
            ldq = ldg = (size_t)hs;
        }
        const float* P = att + (size_t)bh * T * T;                    /* (T,T) */
        float* dS = scratch + (size_t)bh * T * T;                     /* (T,T) */

        /* Pass 1, per block of query rows (the rows of dS are independent).
         * Forward: o = P v           -> dP = do v^T
         * Forward: P = softmax(S)    -> dS = P * (dP - sum_s P dP)
         * Forward: S = q k^T * scale -> dq += scale * dS k
         * The scale is folded into dS. Causal: P is zero right of the
         * diagonal, so the block stops at its last row's key; the entries of
         * the block right of each row's diagonal are set to 0 because pass 2
         * and the dq panel read them. */
        for (int t0 = 0; t0 < T; t0 += MR) {
            const int mr = MG_MIN(MR, T - t0);
            const int nk = causal ? t0 + mr : T;
            float* dSb = dS + (size_t)t0 * T;
            const float* gb = g + (size_t)t0 * ldg;
            if (vp) panel_axpy(mr, nk, 0, hs, gb, ldg, 1, vp, 16, 16 * (size_t)hs, dSb, (size_t)T, 0);
            else panel_dot(mr, nk, hs, gb, ldg, v, C3, dSb, (size_t)T);
            for (int m = 0; m < mr; m++) {
                float* d = dSb + (size_t)m * T;
                const int n = causal ? t0 + m + 1 : T;
                softmax_grad_row(d, P + (size_t)(t0 + m) * T, n, scale);
                /* zeros right of the diagonal up to the block's last key
                 * (the dq panel) and to the end of the row's KB-key column
                 * block (pass 2 reads whole KB-wide blocks from t >= s0) */
                const int z = causal ? MG_MAX(nk, MG_MIN(T, ((t0 + m) / KB + 1) * KB)) : nk;
                for (int s = n; s < z; s++) d[s] = 0.0f;
            }
            if (packA)
                panel_axpy(mr, hs, 0, nk, pack_rows(packbuf, dSb, (size_t)T, mr, nk), 1, MR,
                           k, ldq, 16, dq + (size_t)t0 * C3, C3, 1);
            else
                panel_axpy(mr, hs, 0, nk, dSb, (size_t)T, 1, k, ldq, 16, dq + (size_t)t0 * C3, C3, 1);
        }
        /* Pass 2, per block of keys s (columns of dS and P), summing over the
         * queries t that see them (t >= s0 when causal).
         * Forward: S = q k^T * scale -> dk += dS^T q
         * Forward: o = P v           -> dv += P^T do */
        float* pdS = packbuf;                 /* (PT,KB) */
        float* pP = packbuf + KB * PT;        /* (PT,KB) */
        for (int s0 = 0; s0 < T; s0 += KB) {
            const int w = MG_MIN(KB, T - s0);
            /* queries in chunks of PT (the pack size); the chunks add into
             * dk, dv one after another, in a fixed order */
            for (int c0 = causal ? s0 : 0; c0 < T; c0 += PT) {
                const int n = MG_MIN(PT, T - c0);
                pack_cols(pdS, dS + (size_t)c0 * T + s0, (size_t)T, n, w);
                pack_cols(pP, P + (size_t)c0 * T + s0, (size_t)T, n, w);
                for (int j = 0; j < w; j += MR) {
                    const int mr = MG_MIN(MR, w - j);
                    /* causal: keys s0+j.. are seen by queries t >= s0+j only */
                    const int k0 = (causal && c0 == s0) ? j : 0;
                    float* dkj = dk + (size_t)(s0 + j) * C3;
                    float* dvj = dv + (size_t)(s0 + j) * C3;
                    panel_axpy(mr, hs, k0, n, pdS + j, 1, KB, q + (size_t)c0 * ldq, ldq, 16, dkj, C3, 1);
                    panel_axpy(mr, hs, k0, n, pP + j, 1, KB, g + (size_t)c0 * ldg, ldg, 16, dvj, C3, 1);
                }
            }
        }
    }
    return MG_OK;
}

/* ================================================================ decode */

// One (sequence, head) pair bh = b*NH + h of mg_attention_decode (its
// arguments, checked there); mg_gpt_decode_step runs it too.
void decode_head(float* out, float* kcache, float* vcache, float* scratch, const float* qkv,
                 int bh, int Tn, int pos, int maxT, int C, int NH) {
    const int hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t C3 = 3 * (size_t)C;
    const int b = bh / NH, h = bh % NH;
    float* kc = kcache + (size_t)bh * maxT * hs;     /* (maxT,hs) */
    float* vc = vcache + (size_t)bh * maxT * hs;
    float* a = scratch + (size_t)bh * maxT;          /* (maxT) */
    const float* x = qkv + (size_t)b * Tn * C3 + (size_t)h * hs;  /* (Tn,hs), ld 3C */
    /* All new keys first: query t then reads cache rows 0..pos+t only. */
    for (int t = 0; t < Tn; t++) {
        memcpy(kc + (size_t)(pos + t) * hs, x + (size_t)t * C3 + C, (size_t)hs * sizeof(float));
        memcpy(vc + (size_t)(pos + t) * hs, x + (size_t)t * C3 + 2 * (size_t)C,
               (size_t)hs * sizeof(float));
    }
    /* One query at a time: scratch holds a single row per (b, h). */
    for (int t = 0; t < Tn; t++) {
        const int L = pos + t + 1;
        panel_dot(1, L, hs, x + (size_t)t * C3, 0, kc, (size_t)hs, a, 0);
        softmax_row(a, L, L, NULL, scale);
        panel_axpy(1, hs, 0, L, a, 0, 1, vc, (size_t)hs, 16,
                   out + ((size_t)b * Tn + t) * C + (size_t)h * hs, 0, 0);
    }
}

mg_status mg_attention_decode(float* out, float* kcache, float* vcache,
                              float* scratch, const float* qkv,
                              int B, int Tn, int pos, int maxT, int C, int NH) {
    MG_TRY(check_attention_decode(__func__, out, kcache, vcache, scratch, qkv,
                                  B, Tn, pos, maxT, C, NH));
    const int hs = C / NH;
    const int BH = B * NH;
    #pragma omp parallel for schedule(static) if ((size_t)BH * Tn * (pos + Tn) * hs >= MG_PAR_MIN)
    for (int bh = 0; bh < BH; bh++)
        decode_head(out, kcache, vcache, scratch, qkv, bh, Tn, pos, maxT, C, NH);
    return MG_OK;
}

/* ================================================================ beam reorder */

mg_status mg_gather_rows(float* buf, float* scratch, const int32_t* src, int n, int B, int chunks,
                         size_t row_stride, size_t chunk_stride, size_t chunk_len) {
    MG_CHECK_PTR(buf); MG_CHECK_PTR(scratch); MG_CHECK_PTR(src);
    MG_CHECK(n >= 0 && n <= B, MG_ERR_SHAPE, "n=%d rows for a buffer of B=%d", n, B);
    MG_CHECK(chunks >= 0, MG_ERR_SHAPE, "chunks=%d must not be negative", chunks);
    MG_CHECK(chunks <= 1 || chunk_stride >= chunk_len, MG_ERR_SHAPE,
             "chunks of %zu floats overlap at a stride of %zu", chunk_len, chunk_stride);
    MG_CHECK(chunks == 0 || (size_t)(chunks - 1) * chunk_stride + chunk_len <= row_stride,
             MG_ERR_SHAPE, "a row's chunks overrun its stride %zu", row_stride);
    for (int r = 0; r < n; r++)
        MG_CHECK(src[r] >= 0 && src[r] < B, MG_ERR_INDEX, "src[%d] = %d outside [0, %d)", r, src[r], B);
    if (n == 0 || chunks == 0 || chunk_len == 0) return MG_OK;
    /* 1: a moved row, 2: the source of a moved row, 3: both (saved first) */
    unsigned char* role = calloc((size_t)B, 1);
    if (!role) return mg_fail(MG_ERR_NOMEM, __func__, "cannot allocate %d bytes", B);
    for (int r = 0; r < n; r++)
        if (src[r] != r) { role[r] |= 1; role[src[r]] |= 2; }
    const size_t packed_row = (size_t)chunks * chunk_len;
    const size_t items = (size_t)B * chunks;
    const int par = (size_t)n * packed_row >= MG_PAR_MIN;
    #pragma omp parallel for schedule(static) if (par)
    for (size_t t = 0; t < items; t++) {
        const int r = (int)(t / chunks), c = (int)(t % chunks);
        if (role[r] == 3)
            memcpy(scratch + r * packed_row + c * chunk_len, buf + r * row_stride + c * chunk_stride,
                   chunk_len * sizeof(float));
    }
    #pragma omp parallel for schedule(static) if (par)
    for (size_t t = 0; t < (size_t)n * chunks; t++) {
        const int r = (int)(t / chunks), c = (int)(t % chunks), s = src[r];
        if (s == r) continue;
        const float* from = role[s] == 3 ? scratch + s * packed_row + c * chunk_len
                                         : buf + s * row_stride + c * chunk_stride;
        memcpy(buf + r * row_stride + c * chunk_stride, from, chunk_len * sizeof(float));
    }
    free(role);
    return MG_OK;
}
