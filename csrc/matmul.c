/*
 * matmul.c — single-precision GEMM and the linear layer built on it.
 *   mg_sgemm:           Cm (M,N) = beta*Cm + A' (M,K) @ B' (K,N), row-major
 *   mg_matmul_forward:  out (N,OC) = inp (N,C) @ weight^T (C,OC) + bias (OC)
 *   mg_matmul_backward: dinp += dout @ weight; dweight += dout^T @ inp;
 *                       dbias += column sums of dout
 *   mg_matmul_pack, mg_matmul_forward_packed: the forward with its weight
 *                       packed once for many calls (decoding)
 *
 * Design (the BLIS/GotoBLAS layering, with the K loop moved inside a unit):
 *   for jc in N by nc          chunk of B: K x nc packed at once (<= 16 MiB, L3);
 *   (for kr in K by kr)        a very long K (narrow chunks) is cut instead
 *     pack B' (K x nc)         threads together: NR-wide column panels per
 *                              K block, zero-padded; then one barrier
 *     for (ic, slice) units    M block x column slice, taken dynamically
 *       for pc in K by kc      kc depends on K only (see below)
 *         pack A' (mc x kc)    into MR-tall row panels (L2), per thread
 *         for jr by NR, ir by MR:  micro-kernel MR x NR, kc deep (hot loop)
 * Packing all of K before computing costs one barrier per chunk instead of
 * two per K block; that matters on shared 2-core machines, where a thread
 * that spins at a barrier can sit on the core its partner needs.
 * The micro-kernel holds an MR x NR tile of C in registers. With AVX2+FMA
 * (the target: Zen 3) it is 6 x 16 = 12 ymm accumulators + 2 for B + 1
 * broadcast of A, 15 of the 16 ymm registers; 12 independent FMA chains
 * cover the 4-cycle FMA latency on 2 FMA pipes, and each k step's 2 loads of
 * B + 6 broadcasts of A fit the load ports. Where the compiler targets
 * AVX-512 (-march=native on such a host) the same design runs 8 x 48 on zmm
 * registers (24 accumulators of 16 floats); broadcasts cost more than plain
 * loads there, so the wide tile with the fewest broadcasts per FMA wins. Both
 * kernels prefetch their C tile before the k loop: the tile's rows are far
 * apart, too many streams for the hardware prefetcher (docs/performance.md
 * has the measurement).
 * Without AVX2 a plain-C kernel over the same packed layout is used.
 * Packing turns every transpose combination into the same unit-stride
 * stream, so there is one kernel per ISA. Every pack reads its source along
 * rows, in address order: B (K,N) a row at a time across all panels, a
 * transposed A (K,M) likewise, and the row-major layouts that must be
 * transposed (A (M,K), and the weight (OC,C) as B) by 8x8 in-register
 * transposes. Edge tiles (fewer than MR rows or NR columns): on AVX-512 the
 * narrowest kernel that covers the columns (16, 32 or 48) stores the valid
 * rows and columns with masks; elsewhere the kernel writes a small stack
 * tile and the valid part is copied out.
 *
 * Numerics and determinism: each output element is the sum over K in one
 * fixed order: K is cut into blocks whose size depends on K alone; within a
 * block the products are chained with FMA in k order starting from zero, and
 * the block sums are added to C in block order (the first block overwrites C
 * when beta = 0, or adds to bias when a bias is fused). The cut of M and N
 * among threads never changes that order, so results are bitwise identical
 * across runs and across thread counts. Threads write disjoint C tiles: no
 * atomics, no reductions across threads.
 *
 * Memory: the packing buffers are one aligned workspace per calling thread,
 * grown on demand and kept (so steady-state calls do not allocate); OpenMP
 * workers use slices of the caller's workspace. A failed allocation returns
 * MG_ERR_NOMEM. The workspace of a thread that exits is not freed (about
 * 4-5 MiB, once per thread that ever called a GEMM).
 * Parallelism: one parallel region per call; threads pack B panels together,
 * then take (M block, column slice) units. Up to 64M multiply-adds
 * (SPLIT_MNK) each thread instead runs the serial path on its own share of
 * rows, and a linear backward on two threads runs its two products side by
 * side. Below ~1M multiply-adds, or when called from inside a parallel
 * region, the call runs serially.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "simd_math.h"

#ifndef _OPENMP
static inline int omp_in_parallel(void) { return 0; }
#endif

#if (defined(__AVX2__) && defined(__FMA__)) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define MG_GEMM_AVX2 1
#else
#define MG_GEMM_AVX2 0
#endif

// ---------------------------------------------------------------- blocking

#if defined(__AVX512F__)
// 8 x 48: 24 zmm accumulators + 3 for B + 1 broadcast of 32 zmm registers;
// 8 broadcasts and 3 loads feed 24 FMAs per k. A 12 x 32 tile needs 12
// broadcasts per k for the same 24 FMAs, and measured about a third slower
// with both panels in L1 (docs/performance.md). The B micro-panel, kc*NR*4 =
// 48 KiB, is read from L1/L2 while the A panel streams past it.
enum { MR = 8, NR = 48, KC_MAX = 256, MC_MAX = 192 };
#else
enum {
    MR = 6,          // micro-tile rows (A broadcasts)
    NR = 16,         // micro-tile columns (two 8-float vectors)
    KC_MAX = 256,    // B micro-panel kc*NR*4 = 16 KiB stays in a 32 KiB L1d
    MC_MAX = 144     // A block mc*kc*4 = 144 KiB, well inside a 1 MiB L2
};
#endif
enum { ALIGN = 64 };

// Packed B is kept for all of K at once, up to this many floats (16 MiB):
// the whole weight of most transformer layers, well inside a 32 MiB L3.
#define B_CAP ((size_t)4 << 20)

// Narrowest chunk of B worth packing all of K for; below it, K is cut instead.
enum { NC_MIN = 768 };

// Fewest NR-column panels in a column slice of a parallel work unit.
enum { SLICE_MIN = 8 };

// Below this many multiply-adds a parallel region costs more than it saves.
#define SERIAL_MNK ((double)96 * 96 * 96)

// Up to this many multiply-adds a product is too small for the shared
// packing and the dynamic units to pay for their barrier and bookkeeping
// (the baby config's products: 768 x 128 x 512 at most): each thread takes
// a fixed share and runs the serial path on it. A linear backward on two
// threads runs its two products side by side; a single product splits its
// rows.
#define SPLIT_MNK ((double)64 * 1024 * 1024)

// kc for a given K: the fewest blocks of at most KC_MAX, evened out so the
// last block is not a sliver. Depends on K alone: this fixes the summation
// order of every output element whatever the thread count.
static inline int k_block(int K) {
    int nk = (K + KC_MAX - 1) / KC_MAX;
    return (K + nk - 1) / nk;
}

// ---------------------------------------------------------------- workspace

static _Thread_local float* ws_buf;   // packed B block, then one A block per thread
static _Thread_local size_t ws_cap;   // in floats

static float* workspace(size_t nfloats) {
    if (nfloats <= ws_cap) return ws_buf;
    void* p = NULL;
    if (posix_memalign(&p, ALIGN, nfloats * sizeof(float)) != 0) return NULL;
    free(ws_buf);
    ws_buf = p;
    ws_cap = nfloats;
    return ws_buf;
}

// ---------------------------------------------------------------- packing

#if MG_GEMM_AVX2
// Packing a transposed operand goes 8 x 8 at a time (transpose8x8, from
// simd_math.h), so it streams rows instead of single floats.
// d[k*6 + j] = s[j*lds + k] for j < 6, k < 8: transpose8x8 with two zero
// rows, for the 6-row panels of the AVX2 kernel. Column k is stored whole (8
// floats) at stride 6 in increasing k, so each store's two extra floats are
// overwritten by the next; the last stores only its six.
static inline void transpose_6x8(float* restrict d, const float* restrict s, size_t lds) {
    __m256 r[8];
    for (int j = 0; j < 6; j++) r[j] = _mm256_loadu_ps(s + j * lds);
    r[6] = r[7] = _mm256_setzero_ps();
    transpose8(r);
    for (int k = 0; k < 7; k++) _mm256_storeu_ps(d + k * 6, r[k]);
    _mm256_maskstore_ps(d + 7 * 6, tail_mask(6), r[7]);
}
#endif

// d[0:w] = s[0:n], then zeros (n <= w). w is a constant at each call, so a
// full copy compiles to vector moves.
static inline void copy_padded(float* restrict d, const float* restrict s, int n, int w) {
    if (n == w) {
        memcpy(d, s, (size_t)w * sizeof(float));
        return;
    }
    for (int c = 0; c < n; c++) d[c] = s[c];
    for (int c = n; c < w; c++) d[c] = 0.0f;
}

// Rows ahead that pack_a prefetches in a transposed A.
enum { PF_ROWS = 8 };

// Packs the mc x kc block of A' at (i0, p0) into MR-row panels:
// dst[(i/MR)*kc*MR + k*MR + i%MR] = A'(i0+i, p0+k); rows past mc are zero.
// Both layouts are read along their rows, so the source streams through
// the cache lines in order; fixed-size copies compile to vector moves.
static void pack_a(float* restrict dst, const float* restrict A, size_t lda,
                   int transA, int i0, int p0, int mc, int kc) {
    if (transA) {       // A is (K,M): row k of A holds k of every A' row
        for (int k = 0; k < kc; k++) {
            const float* s = A + (size_t)(p0 + k) * lda + (size_t)i0;
            // The rows are lda apart (a whole activation row: kilobytes),
            // mc floats of each: too short a run for the hardware prefetcher,
            // so each row would arrive one miss at a time. Ask ahead.
            if (k + PF_ROWS < kc) {
                const char* f = (const char*)(s + (size_t)PF_ROWS * lda);
                for (int b = 0; b < mc * 4; b += 64) __builtin_prefetch(f + b, 0, 3);
                __builtin_prefetch(f + mc * 4 - 1, 0, 3);
            }
            for (int ip = 0; ip < mc; ip += MR) {
                copy_padded(dst + (size_t)ip * kc + (size_t)k * MR, s + ip,
                            MG_MIN(MR, mc - ip), MR);
            }
        }
        return;
    }
    // A is (M,K): MR row streams per panel, transposed 8 x 8 where possible
    for (int ip = 0; ip < mc; ip += MR) {
        int mr = MG_MIN(MR, mc - ip);
        float* d = dst + (size_t)ip * kc;
        const float* a = A + (size_t)(i0 + ip) * lda + (size_t)p0;
        int k0 = 0;
#if MG_GEMM_AVX2
        if (MR % 8 == 0 && mr == MR) {
            for (; k0 + 8 <= kc; k0 += 8)
                for (int r = 0; r < MR; r += 8)
                    transpose8x8(d + (size_t)k0 * MR + r, MR, a + (size_t)r * lda + k0, lda);
        } else if (MR == 6 && mr == MR) {
            for (; k0 + 8 <= kc; k0 += 8) transpose_6x8(d + (size_t)k0 * MR, a + k0, lda);
        }
#endif
        for (int r = 0; r < MR; r++) {
            const float* s = a + (size_t)MG_MIN(r, mr - 1) * lda;
            for (int k = k0; k < kc; k++) d[(size_t)k * MR + r] = r < mr ? s[k] : 0.0f;
        }
    }
}

// Packs NR-column panel q of the kc x nc block of B' at (p0, j0), for a
// transposed B (N,K), whose columns of B' are contiguous rows:
// dst[k*NR + j] = B'(p0+k, j0+q*NR+j); columns past nc are zero.
static void pack_bt_panel(float* restrict d, const float* restrict B, size_t ldb,
                          int p0, int j0, int nr, int kc) {
    int k0 = 0;
#if MG_GEMM_AVX2
    if (nr == NR) {
        for (; k0 + 8 <= kc; k0 += 8)
            for (int j = 0; j < NR; j += 8)
                transpose8x8(d + (size_t)k0 * NR + j, NR,
                              B + (size_t)(j0 + j) * ldb + (size_t)(p0 + k0), ldb);
    }
#endif
    for (int j = 0; j < nr; j++) {
        const float* s = B + (size_t)(j0 + j) * ldb + (size_t)p0;
        for (int k = k0; k < kc; k++) d[(size_t)k * NR + j] = s[k];
    }
    for (int j = nr; j < NR; j++)
        for (int k = k0; k < kc; k++) d[(size_t)k * NR + j] = 0.0f;
}

// Packs row k of B (K,N), columns j0..j0+nc, into its place in every NR-column
// panel of its K block (panels of kc rows from bblk): a row streams through
// the cache in order. Columns past nc are zero.
static void pack_b_row(float* restrict bblk, const float* restrict B, size_t ldb,
                       int k, int kk, int kc, int j0, int nc) {
    const float* s = B + (size_t)k * ldb + (size_t)j0;
    for (int j = 0; j < nc; j += NR) {
        copy_padded(bblk + (size_t)(j / NR) * kc * NR + (size_t)kk * NR, s + j,
                    MG_MIN(NR, nc - j), NR);
    }
}

// ---------------------------------------------------------------- micro-kernel

// How a finished kc-deep tile sum acc meets C:
//   STORE_SET: C = acc (+ bias[j] when bias is given)    first K block, beta 0
//   STORE_ADD: C = C + acc                                 later blocks, beta 1
enum { STORE_SET = 0, STORE_ADD = 1 };

#if defined(__AVX512F__)

// acc (8, 16*NV) = a (kc,8 packed) @ the first 16*NV columns of b (kc,48
// packed), then its first mr rows and nr columns stored per mode into c (row
// stride ldc). bias (nr) or NULL (STORE_SET only). NV (1..3) is a constant at
// each call, so every loop over v unrolls away; edge tiles (nr < 48 or
// mr < 8) run the narrowest kernel that covers them and store with masks,
// so no product is computed twice and C is never touched outside the matrix.
static inline __attribute__((always_inline))
void kernel_nv(const int NV, int kc, const float* restrict a, const float* restrict b,
               float* restrict c, size_t ldc, int mr, int nr, int mode,
               const float* restrict bias) {
    __m512 acc[MR][3];
    // C is read (STORE_ADD) or written only after the kc-deep loop: ask for
    // its rows now, so the stores do not wait on cache misses.
    for (int r = 0; r < mr; r++) {
        const char* cr = (const char*)(c + (size_t)r * ldc);
        for (int j = 0; j < nr; j += 16) _mm_prefetch(cr + 4 * j, _MM_HINT_T0);
        _mm_prefetch(cr + 4 * (nr - 1), _MM_HINT_T0);
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    // ---- hot loop: 8*NV FMAs per k, operands streamed from the packed panels
    #pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        __m512 bv[3];
        for (int v = 0; v < NV; v++) bv[v] = _mm512_load_ps(b + 16 * v);
        #pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 av = _mm512_set1_ps(a[r]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
        a += MR;
        b += NR;
    }
    for (int v = 0; v < NV; v++) {
        int w = nr - 16 * v;                  // valid columns in vector v
        __mmask16 m = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1);
        __m512 bias_v = _mm512_setzero_ps();
        if (mode == STORE_SET && bias) bias_v = _mm512_maskz_loadu_ps(m, bias + 16 * v);
        for (int r = 0; r < mr; r++) {
            float* cv = c + (size_t)r * ldc + 16 * v;
            __m512 x = acc[r][v];
            x = _mm512_add_ps(mode == STORE_ADD ? _mm512_maskz_loadu_ps(m, cv) : bias_v, x);
            _mm512_mask_storeu_ps(cv, m, x);
        }
    }
}

// A possibly partial tile: mr <= MR rows, nr <= NR columns.
static inline void tile(int kc, const float* a, const float* b, float* c, size_t ldc,
                        int mr, int nr, int mode, const float* bias) {
    if (nr > 32)      kernel_nv(3, kc, a, b, c, ldc, mr, nr, mode, bias);
    else if (nr > 16) kernel_nv(2, kc, a, b, c, ldc, mr, nr, mode, bias);
    else              kernel_nv(1, kc, a, b, c, ldc, mr, nr, mode, bias);
}

#elif MG_GEMM_AVX2

// acc (6,16) = a (kc,6 packed) @ b (kc,16 packed), then stored per mode into
// c (6,16) with row stride ldc. bias (16) or NULL, used only by STORE_SET.
static void kernel(int kc, const float* restrict a, const float* restrict b,
                        float* restrict c, size_t ldc, int mode,
                        const float* restrict bias) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    // C is read (STORE_ADD) or written only after the kc-deep loop: ask for
    // its lines now, so the stores do not wait on cache misses.
    for (int r = 0; r < MR; r++) {
        const char* cr = (const char*)(c + (size_t)r * ldc);
        _mm_prefetch(cr, _MM_HINT_T0);
        _mm_prefetch(cr + 4 * (NR - 1), _MM_HINT_T0);
    }
    // ---- hot loop: 12 FMAs per k, operands streamed from the packed panels
    #pragma GCC unroll 4
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b);
        __m256 b1 = _mm256_load_ps(b + 8);
        __m256 av;
        av = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
        a += MR;
        b += NR;
    }
    __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                         {c30, c31}, {c40, c41}, {c50, c51}};
    if (mode == STORE_ADD) {
        for (int r = 0; r < MR; r++) {
            float* cr = c + (size_t)r * ldc;
            _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), acc[r][0]));
            _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), acc[r][1]));
        }
    } else if (bias) {
        __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
        for (int r = 0; r < MR; r++) {
            float* cr = c + (size_t)r * ldc;
            _mm256_storeu_ps(cr, _mm256_add_ps(b0, acc[r][0]));
            _mm256_storeu_ps(cr + 8, _mm256_add_ps(b1, acc[r][1]));
        }
    } else {
        for (int r = 0; r < MR; r++) {
            float* cr = c + (size_t)r * ldc;
            _mm256_storeu_ps(cr, acc[r][0]);
            _mm256_storeu_ps(cr + 8, acc[r][1]);
        }
    }
}

#else  // portable: plain C, the same packed layout and the same store rule

static void kernel(int kc, const float* restrict a, const float* restrict b,
                        float* restrict c, size_t ldc, int mode,
                        const float* restrict bias) {
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    // ---- hot loop (the compiler vectorises the j loop)
    for (int k = 0; k < kc; k++) {
        for (int r = 0; r < MR; r++) {
            float ar = a[r];
            for (int j = 0; j < NR; j++) acc[r][j] += ar * b[j];
        }
        a += MR;
        b += NR;
    }
    for (int r = 0; r < MR; r++) {
        float* cr = c + (size_t)r * ldc;
        for (int j = 0; j < NR; j++)
            cr[j] = mode == STORE_ADD ? cr[j] + acc[r][j]
                  : bias ? bias[j] + acc[r][j] : acc[r][j];
    }
}

#endif

#if !defined(__AVX512F__)
// A possibly partial tile: mr <= MR rows, nr <= NR columns. Partial tiles go
// through a stack tile so the kernel never touches C outside the matrix.
static inline void tile(int kc, const float* a, const float* b, float* c, size_t ldc,
                        int mr, int nr, int mode, const float* bias) {
    if (mr == MR && nr == NR) {
        kernel(kc, a, b, c, ldc, mode, bias);
        return;
    }
    float t[MR * NR] __attribute__((aligned(64)));
    kernel(kc, a, b, t, NR, STORE_SET, NULL);
    for (int r = 0; r < mr; r++) {
        float* cr = c + (size_t)r * ldc;
        const float* tr = t + r * NR;
        for (int j = 0; j < nr; j++)
            cr[j] = mode == STORE_ADD ? cr[j] + tr[j]
                  : bias ? bias[j] + tr[j] : tr[j];
    }
}

#endif

// ---------------------------------------------------------------- driver

// Cm (M,N) = beta*Cm + A' @ B' (+ bias (N) broadcast over rows, beta 0 only).
// Sizes are validated and non-zero (K >= 1) here.
// ---------------------------------------------------------------- chunks of B

// The cut of B' (K,N) into chunks packed at once: ncb columns (a multiple of
// NR) by kcr rows. Chunks span all of K and cut N where that leaves them
// wide, at most about B_CAP floats, so a chunk costs two synchronisations
// (after the packing, and the join) instead of two per K block. When K is so
// long that they would be narrow (the head's dinp: K = 50257, N = 768), they
// span NC_MIN columns and cut K at block boundaries instead, because every N
// chunk packs A anew and a narrow chunk would pack all of a huge A many times
// over. Depends on N and K alone: a weight packed ahead of time
// (mg_matmul_pack) has the layout every call would build.
static void b_chunks(int N, int K, int* ncb_out, int* kcr_out) {
    const int kcb = k_block(K);
    int kcr = K;
    int ncb = (int)MG_MIN((size_t)N, MG_MAX((size_t)NR, B_CAP / (size_t)K));
    if (ncb < MG_MIN(N, NC_MIN)) {
        ncb = MG_MIN(N, NC_MIN);
        kcr = (int)MG_MIN((size_t)K, MG_MAX((size_t)1, B_CAP / (size_t)ncb / (size_t)kcb) * (size_t)kcb);
    }
    int nnb = (N + ncb - 1) / ncb;
    ncb = (N + nnb - 1) / nnb;
    *ncb_out = ((ncb + NR - 1) / NR) * NR;
    *kcr_out = kcr;
}

// Floats of one packed chunk: columns jc.. (nc of them) and K rows kr..kend,
// as NR-wide zero-padded panels per K block.
static inline size_t chunk_floats(int nc, int kr, int kend) {
    return (size_t)(kend - kr) * (size_t)((nc + NR - 1) / NR) * NR;
}

// Packs the chunk (columns jc..jc+nc, K rows kr..kend) of B' into bpack,
// shared among the team (orphaned worksharing loops; the end is a barrier).
// K block pc's panels start at bpack + (pc-kr)*npan*NR (blocks before it are
// full), panel q at + q*kc*NR.
static void pack_b_chunk(float* bpack, const float* B, size_t ldb, int transB, int K,
                         int jc, int nc, int kr, int kend) {
    const int kcb = k_block(K);
    const int npan = (nc + NR - 1) / NR;
    const int nkb = (kend - kr + kcb - 1) / kcb;
    if (transB) {
        #pragma omp for schedule(dynamic, 4)
        for (int t = 0; t < nkb * npan; t++) {
            int pc = kr + (t / npan) * kcb, q = t % npan;
            int kc = MG_MIN(kcb, K - pc);
            pack_bt_panel(bpack + (size_t)(pc - kr) * npan * NR + (size_t)q * kc * NR,
                          B, ldb, pc, jc + q * NR, MG_MIN(NR, nc - q * NR), kc);
        }
    } else {
        #pragma omp for schedule(static)
        for (int k = kr; k < kend; k++) {
            int pc = k / kcb * kcb;
            pack_b_row(bpack + (size_t)(pc - kr) * npan * NR, B, ldb, k, k - pc,
                       MG_MIN(kcb, K - pc), jc, nc);
        }
    }
}

// ---------------------------------------------------------------- the product

// Cm (M,N) = beta*Cm + A' @ B' (+ bias on the first K block). packed: B'
// packed ahead of time by mg_matmul_pack (every chunk, in loop order), or
// NULL to pack it here.
static mg_status gemm(int transA, int transB, int M, int N, int K,
                      const float* A, size_t lda, const float* B, size_t ldb,
                      float beta, float* Cm, size_t ldc, const float* bias,
                      const float* packed) {
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    int parallel = nt > 1 && (double)M * N * K >= SERIAL_MNK;
    if (!parallel) nt = 1;

    if (parallel && (double)M * N * K <= SPLIT_MNK && M >= 2 * MR) {
        // Rows in nt shares of whole MR panels, each a serial product (it
        // sees the enclosing region): each packs its own copy of B, no
        // barrier until the join. Every element keeps its summation order.
        int share = ((M + nt - 1) / nt + MR - 1) / MR * MR;
        int failed = 0;
        #pragma omp parallel num_threads(nt) reduction(|: failed)
        {
            int n = omp_get_num_threads(), t = omp_get_thread_num();
            int per = n == nt ? share : ((M + n - 1) / n + MR - 1) / MR * MR;
            int r0 = t * per, r1 = MG_MIN(M, r0 + per);
            if (r0 < r1)
                failed |= gemm(transA, transB, r1 - r0, N, K,
                               A + (transA ? (size_t)r0 : (size_t)r0 * lda), lda, B, ldb,
                               beta, Cm + (size_t)r0 * ldc, ldc, bias, packed) != MG_OK;
        }
        if (failed)   // recorded by the thread that failed
            return mg_fail(MG_ERR_NOMEM, "mg_sgemm", "cannot allocate the packing workspace");
        return MG_OK;
    }

    const int kcb = k_block(K);
    // M blocks of at most MC_MAX rows, evened out and rounded to MR.
    int nmb = (M + MC_MAX - 1) / MC_MAX;
    nmb = ((nmb + nt - 1) / nt) * nt;
    int mcb = (M + nmb - 1) / nmb;
    mcb = ((mcb + MR - 1) / MR) * MR;
    nmb = (M + mcb - 1) / mcb;
    int ncb, kcr;                                       // chunks of B: ncb columns, kcr K rows
    b_chunks(N, K, &ncb, &kcr);
    // Work units are (M block, column slice). Threads take them dynamically:
    // on a shared machine a thread can lose its core for a while, and the
    // other then takes its units instead of waiting for it. At least 4 units
    // per thread keep that balancing fine-grained; which thread computes a
    // tile never changes its bits.
    int njs = nt > 1 ? MG_MAX(1, (4 * nt + nmb - 1) / nmb) : 1;

    size_t b_size = packed ? 0 : (size_t)kcr * (size_t)ncb;   // one packed chunk of B
    size_t a_size = (size_t)KC_MAX * (MC_MAX + MR);     // one packed A block
    float* ws = workspace(b_size + (size_t)nt * a_size);
    if (!ws) return mg_fail(MG_ERR_NOMEM, "mg_sgemm",
                            "cannot allocate %zu bytes of packing workspace",
                            (b_size + (size_t)nt * a_size) * sizeof(float));
    float* bpack = ws;

    #pragma omp parallel num_threads(nt) if (parallel)
    {
        float* apack = ws + b_size + (size_t)omp_get_thread_num() * a_size;
        const float* next = packed;                     // the next prepacked chunk
        for (int jc = 0; jc < N; jc += ncb)
        for (int kr = 0; kr < K; kr += kcr) {
            int nc = MG_MIN(ncb, N - jc), kend = MG_MIN(K, kr + kcr);
            int npan = (nc + NR - 1) / NR;
            const float* chunk = next;
            if (packed) {
                next += chunk_floats(nc, kr, kend);
            } else {
                pack_b_chunk(bpack, B, ldb, transB, K, jc, nc, kr, kend);
                chunk = bpack;
                // (the loops' implicit barrier: B is packed before anyone reads it)
            }

            // Each unit packs its own A block, so a slice keeps at least
            // SLICE_MIN panels: thinner slices would pack A more than they save.
            int nsl = MG_MAX(1, MG_MIN(njs, npan / SLICE_MIN));
            #pragma omp for schedule(dynamic, 1)
            for (int u = 0; u < nmb * nsl; u++) {
                int ib = u / nsl, js = u % nsl;
                int ic = ib * mcb, mc = MG_MIN(mcb, M - ic);
                int q0 = (int)((long)npan * js / nsl);
                int q1 = (int)((long)npan * (js + 1) / nsl);
                // K blocks in order (and chunks of K in order, one after the
                // other): this fixes each element's summation order.
                for (int pc = kr; pc < kend; pc += kcb) {
                    int kc = MG_MIN(kcb, K - pc);
                    int mode = (pc == 0 && beta == 0.0f) ? STORE_SET : STORE_ADD;
                    const float* bias_p = (mode == STORE_SET) ? bias : NULL;
                    const float* bblk = chunk + (size_t)(pc - kr) * npan * NR;
                    pack_a(apack, A, lda, transA, ic, pc, mc, kc);
                    for (int q = q0; q < q1; q++) {
                        int j = q * NR;
                        int nr = MG_MIN(NR, nc - j);
                        const float* bp = bblk + (size_t)q * kc * NR;
                        const float* bq = bias_p ? bias_p + jc + j : NULL;
                        for (int i = 0; i < mc; i += MR)
                            tile(kc, apack + (size_t)i * kc, bp,
                                 Cm + (size_t)(ic + i) * ldc + (size_t)(jc + j), ldc,
                                 MG_MIN(MR, mc - i), nr, mode, bq);
                    }
                }
            }
            // (implicit barrier: the next chunk's packing reuses bpack)
        }
    }
    return MG_OK;
}

// K = 0: Cm = beta*Cm (+ bias).
static void scale_c(int M, int N, float beta, float* Cm, size_t ldc, const float* bias) {
    if (beta != 0.0f && !bias) return;
    for (int i = 0; i < M; i++) {
        float* c = Cm + (size_t)i * ldc;
        for (int j = 0; j < N; j++)
            c[j] = (beta != 0.0f ? c[j] : 0.0f) + (bias ? bias[j] : 0.0f);
    }
}

// ---------------------------------------------------------------- API

mg_status mg_sgemm(int transA, int transB, int M, int N, int K,
                   const float* A, int lda, const float* B, int ldb,
                   float beta, float* Cm, int ldc) {
    MG_TRY(check_sgemm(__func__, transA, transB, M, N, K, A, lda, B, ldb, beta, Cm, ldc));
    if (M == 0 || N == 0) return MG_OK;
    if (K == 0) { scale_c(M, N, beta, Cm, (size_t)ldc, NULL); return MG_OK; }
    return gemm(transA, transB, M, N, K, A, (size_t)lda, B, (size_t)ldb,
                beta, Cm, (size_t)ldc, NULL, NULL);
}

// A few rows (token-by-token decoding): every weight row is read once, so the
// product is bound by memory, and packing the whole weight per call would
// triple the traffic. Dot products straight from the (OC,C) rows instead,
// parallel over output channels.
enum { GEMV_ROWS = MG_GEMV_ROWS };

static inline float dot(const float* restrict a, const float* restrict b, int n) {
    int k = 0;
    float s = 0.0f;
#if MG_GEMM_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; k + 16 <= n; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
    }
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    s = _mm_cvtss_f32(h);
#endif
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

#if MG_GEMM_AVX2
static inline float hsum8(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
#endif

// Four dot products of x against four consecutive weight rows: eight
// independent FMA chains, and each load of x feeds four of them. prefetch:
// also ask for the rows two blocks on (once per block, not per input row).
static inline void dot4(float s[4], const float* restrict x, const float* restrict w, size_t ldw,
                        int n, int prefetch) {
    int k = 0;
    s[0] = s[1] = s[2] = s[3] = 0.0f;
    (void)prefetch;   // the plain loop below does not prefetch
#if MG_GEMM_AVX2
    const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(),
           b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    // The rows two blocks on: weight rows are short streams (1.5 KB at C=384)
    // that the hardware prefetcher does not get ahead of. Prefetches past the
    // matrix's end never fault.
    const float* next = w + 8 * ldw;
    for (; k + 16 <= n; k += 16) {
        if (prefetch) {
            _mm_prefetch((const char*)(next + k), _MM_HINT_T0);
            _mm_prefetch((const char*)(next + ldw + k), _MM_HINT_T0);
            _mm_prefetch((const char*)(next + 2 * ldw + k), _MM_HINT_T0);
            _mm_prefetch((const char*)(next + 3 * ldw + k), _MM_HINT_T0);
        }
        __m256 xa = _mm256_loadu_ps(x + k), xb = _mm256_loadu_ps(x + k + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), xa, a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k + 8), xb, b0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), xa, a1);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k + 8), xb, b1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), xa, a2);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k + 8), xb, b2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), xa, a3);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k + 8), xb, b3);
    }
    s[0] = hsum8(_mm256_add_ps(a0, b0));
    s[1] = hsum8(_mm256_add_ps(a1, b1));
    s[2] = hsum8(_mm256_add_ps(a2, b2));
    s[3] = hsum8(_mm256_add_ps(a3, b3));
#endif
    for (; k < n; k++)
        for (int r = 0; r < 4; r++) s[r] += x[k] * w[(size_t)r * ldw + k];
}

int gemv_items(int OC) { return OC / 4 + OC % 4; }

// Work item q of a GEMV: output channels 4q..4q+3 (blocks of four, whose
// weight rows stay in L1 while the at most GEMV_ROWS input rows go past
// them), or past the last full block one leftover channel.
void gemv_item(float* out, const float* inp, const float* weight, const float* bias,
               int N, int C, int OC, int q) {
    int nquads = OC / 4;
    if (q < nquads) {
        int o = 4 * q;
        const float* w = weight + (size_t)o * C;
        for (int i = 0; i < N; i++) {
            float s[4];
            dot4(s, inp + (size_t)i * C, w, (size_t)C, C, i == 0);
            float* y = out + (size_t)i * OC + o;
            for (int r = 0; r < 4; r++) y[r] = s[r] + (bias ? bias[o + r] : 0.0f);
        }
    } else {
        int o = 4 * nquads + (q - nquads);
        const float* w = weight + (size_t)o * C;
        for (int i = 0; i < N; i++)
            out[(size_t)i * OC + o] = dot(inp + (size_t)i * C, w, C) + (bias ? bias[o] : 0.0f);
    }
}

static void gemv_rows(float* out, const float* inp, const float* weight,
                      const float* bias, int N, int C, int OC) {
    const int n = gemv_items(OC);
    #pragma omp parallel for schedule(static) if ((double)OC * C >= 1 << 16)
    for (int q = 0; q < n; q++) gemv_item(out, inp, weight, bias, N, C, OC, q);
}

mg_status mg_matmul_forward(float* out, const float* inp, const float* weight,
                            const float* bias, int N, int C, int OC) {
    MG_TRY(check_matmul_forward(__func__, out, inp, weight, N, C, OC));
    if (N == 0) return MG_OK;
    if (N <= GEMV_ROWS) { gemv_rows(out, inp, weight, bias, N, C, OC); return MG_OK; }
    // out (N,OC) = inp (N,C) @ weight^T; the bias rides on the first K block's store.
    return gemm(0, 1, N, OC, C, inp, (size_t)C, weight, (size_t)C,
                0.0f, out, (size_t)OC, bias, NULL);
}

// ---------------------------------------------------------------- a weight packed ahead

// Decoding multiplies the same weight by a few hundred rows at every step;
// packing it (a read and a write of the whole weight) then costs as much as
// a good part of the product: the 512 x 58,101 output projection of a
// translation model packs 119 MB per step. Packed once, every step reads it
// as the product would have packed it, so the bits are the same.
mg_status mg_matmul_packed_size(size_t* n, int C, int OC) {
    MG_CHECK_PTR(n);
    MG_CHECK_POS(C); MG_CHECK_POS(OC);
    int ncb, kcr;
    b_chunks(OC, C, &ncb, &kcr);
    size_t total = 0;
    for (int jc = 0; jc < OC; jc += ncb)
        for (int kr = 0; kr < C; kr += kcr)
            total += chunk_floats(MG_MIN(ncb, OC - jc), kr, MG_MIN(C, kr + kcr));
    *n = total;
    return MG_OK;
}

// Failures are recorded under the public function's name (func), as in checks.c.
#undef MG_FUNC
#define MG_FUNC func
static mg_status check_packed(const char* func, const float* packed, size_t npacked, int C, int OC) {
    MG_CHECK_PTR(packed);
    MG_CHECK(((uintptr_t)packed % ALIGN) == 0, MG_ERR_VALUE,
             "packed must be aligned to %d bytes", (int)ALIGN);
    size_t need = 0;
    MG_TRY(mg_matmul_packed_size(&need, C, OC));
    MG_CHECK(npacked == need, MG_ERR_SHAPE, "packed has %zu floats, a (%d, %d) weight packs to %zu",
             npacked, OC, C, need);
    return MG_OK;
}
#undef MG_FUNC
#define MG_FUNC __func__

mg_status mg_matmul_pack(float* packed, size_t npacked, const float* weight, int C, int OC) {
    MG_CHECK_PTR(weight);
    MG_TRY(check_packed(__func__, packed, npacked, C, OC));
    int ncb, kcr;
    b_chunks(OC, C, &ncb, &kcr);
    #pragma omp parallel if ((double)OC * C >= SERIAL_MNK)
    {
        float* chunk = packed;
        for (int jc = 0; jc < OC; jc += ncb)
            for (int kr = 0; kr < C; kr += kcr) {
                int nc = MG_MIN(ncb, OC - jc), kend = MG_MIN(C, kr + kcr);
                pack_b_chunk(chunk, weight, (size_t)C, 1, C, jc, nc, kr, kend);
                chunk += chunk_floats(nc, kr, kend);
            }
    }
    return MG_OK;
}

mg_status mg_matmul_forward_packed(float* out, const float* inp, const float* weight,
                                   const float* packed, size_t npacked, const float* bias,
                                   int N, int C, int OC) {
    MG_TRY(check_matmul_forward(__func__, out, inp, weight, N, C, OC));
    MG_TRY(check_packed(__func__, packed, npacked, C, OC));
    if (N == 0) return MG_OK;
    if (N <= GEMV_ROWS) { gemv_rows(out, inp, weight, bias, N, C, OC); return MG_OK; }
    return gemm(0, 1, N, OC, C, inp, (size_t)C, weight, (size_t)C,
                0.0f, out, (size_t)OC, bias, packed);
}

// dbias (OC) += sum over rows of dout (N,OC). Parallel over column slices so
// each column is summed by one thread in row order (deterministic); a slice
// of 64 partial sums stays in registers while the rows stream past.
static void column_sums(float* dbias, const float* dout, int N, int OC) {
    enum { CS = 64 };
    int nslices = (OC + CS - 1) / CS;
    #pragma omp parallel for schedule(static) if ((double)N * OC >= 1 << 16)
    for (int s = 0; s < nslices; s++) {
        int o0 = s * CS, w = MG_MIN(CS, OC - o0);
        float acc[CS] = {0};
        for (int i = 0; i < N; i++) {
            const float* row = dout + (size_t)i * OC + (size_t)o0;
            for (int o = 0; o < w; o++) acc[o] += row[o];
        }
        for (int o = 0; o < w; o++) dbias[o0 + o] += acc[o];
    }
}

// The products of a linear backward: part 0 dinp (N,C) (+)= dout (N,OC) @
// weight (OC,C); part 1 dweight (OC,C) += dout^T (OC,N) @ inp (N,C) and
// dbias += column sums of dout; part 2 both, in that order.
static mg_status backward_part(int part, float* dinp, float* dweight, float* dbias,
                               const float* dout, const float* inp, const float* weight,
                               int N, int C, int OC, float dinp_beta) {
    mg_status st = MG_OK;
    if (part != 1 && dinp)
        st = gemm(0, 0, N, C, OC, dout, (size_t)OC, weight, (size_t)C, dinp_beta, dinp,
                  (size_t)C, NULL, NULL);
    if (part != 0 && st == MG_OK) {
        if (dweight)
            st = gemm(1, 0, OC, C, N, dout, (size_t)OC, inp, (size_t)C, 1.0f, dweight,
                      (size_t)C, NULL, NULL);
        if (st == MG_OK && dbias) column_sums(dbias, dout, N, OC);
    }
    return st;
}

mg_status mg_matmul_backward(float* dinp, float* dweight, float* dbias,
                             const float* dout, const float* inp,
                             const float* weight, int N, int C, int OC,
                             int overwrite_dinp) {
    MG_TRY(check_matmul_backward(__func__, dout, inp, weight, N, C, OC));
    if (N == 0) return MG_OK;
    // forward: out = inp @ weight^T + bias
    const float dinp_beta = overwrite_dinp ? 0.0f : 1.0f;
    // On two threads small products run side by side (see SPLIT_MNK): dinp
    // on one thread, dweight and dbias on the other, each gemm serial because
    // it sees the enclosing region, with the bits it has at any thread count.
    // Otherwise one after the other, each on all threads (called outside any
    // region: a gemm inside even an inactive one would start a nested team).
    if (!(dinp && dweight && !omp_in_parallel() && omp_get_max_threads() == 2 &&
          (double)N * C * OC <= SPLIT_MNK))
        return backward_part(2, dinp, dweight, dbias, dout, inp, weight, N, C, OC, dinp_beta);
    mg_status st[2] = {MG_OK, MG_OK};
    #pragma omp parallel num_threads(2)
    {
        const int id = omp_get_thread_num(), n = omp_get_num_threads();
        st[id] = backward_part(n == 1 ? 2 : id, dinp, dweight, dbias, dout, inp, weight,
                               N, C, OC, dinp_beta);
    }
    if (st[0] != MG_OK || st[1] != MG_OK)   // the message went to the thread that failed
        return mg_fail(MG_ERR_NOMEM, "mg_matmul_backward", "cannot allocate the packing workspace");
    return MG_OK;
}
