/*
 * simd_math.h — vectorised helpers shared by the kernels (private; the
 * first three need AVX2, the rest AVX2 + FMA).
 *   transpose8   an 8 x 8 block of floats transposed in registers
 *   transpose8x8 the same from rows of one array to rows of another
 *   tail_mask    the lanes of a row's last, partial vector
 *   exp_neg(x)   exp for x <= 0, about 1.4 ulp (Cephes expf polynomial)
 *   exp_neg16(x) the same on 16 lanes (AVX-512), bit for bit
 *   widen_lo/hi  lanes 0-7 / 8-15 of 16 floats, as 8 doubles (AVX-512)
 *   widen4_lo/hi the same for 8 floats (AVX2); sum_lanes16/8: the end of
 *                such a widened sum, lane by lane in order
 */
#ifndef MINGPT_SIMD_MATH_H
#define MINGPT_SIMD_MATH_H

#if defined(__AVX2__)
#include <stddef.h>
#include <immintrin.h>

/* r[0..7] rows in, r[k] = column k out: the 8 x 8 transpose in registers
 * (GEMM packing, attention key panels). */
static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* d[k*ldd + j] = s[j*lds + k] for j, k < 8: 8 rows of s in, 8 rows of d out. */
static inline void transpose8x8(float* d, size_t ldd, const float* s, size_t lds) {
    __m256 r[8];
    for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(s + j * lds);
    transpose8(r);
    for (int k = 0; k < 8; k++) _mm256_storeu_ps(d + k * ldd, r[k]);
}

/* Lanes j < n all-ones (every lane for n >= 8, none for n <= 0): masked loads
 * and stores for the tail of a row. */
static inline __m256i tail_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif /* __AVX2__ */

#if defined(__AVX2__) && defined(__FMA__)

/* exp(x) for x <= 0 (softmax arguments after subtracting the max).
 * x = n ln2 + r, |r| <= ln2/2; exp(r) = 1 + r + r^2 p(r) (Cephes expf);
 * 2^n is built in the exponent bits. max(-88, x) keeps n >= -127, and n = -127
 * gives exponent bits 0, i.e. an exact 0: that is the flush below FLT_MIN.
 * -inf (masked score) therefore maps to 0; NaN passes through max() as NaN. */
static inline __m256 exp_neg(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693145751953125f);   /* exact n*ln2_hi */
    const __m256 ln2_lo = _mm256_set1_ps(1.428606765330187e-06f);
    x = _mm256_max_ps(_mm256_set1_ps(-88.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

#if defined(__AVX512F__)
/* exp_neg on 16 lanes: the same operations in the same order, so each lane
 * gets exactly the bits exp_neg gives it. */
static inline __m512 exp_neg16(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693145751953125f);
    const __m512 ln2_lo = _mm512_set1_ps(1.428606765330187e-06f);
    x = _mm512_max_ps(_mm512_set1_ps(-88.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

/* Lanes 0-7 and 8-15 of x widened to double: sums of floats kept in 16
 * double lanes (loss, gradient norm) use one register per half. */
static inline __m512d widen_lo(__m512 x) {
    return _mm512_cvtps_pd(_mm512_castps512_ps256(x));
}
static inline __m512d widen_hi(__m512 x) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}
/* The 16 double lanes of a + b summed in lane order: the end of a float
 * sum kept in two widened accumulators. */
static inline double sum_lanes16(__m512d a, __m512d b) {
    double lanes[8], s = 0.0;
    _mm512_storeu_pd(lanes, _mm512_add_pd(a, b));
    for (int l = 0; l < 8; l++) s += lanes[l];
    return s;
}
#endif /* __AVX512F__ */

/* AVX2's halves: lanes 0-3 and 4-7 of x widened to double, and the lanes of
 * a + b summed in order. */
static inline __m256d widen4_lo(__m256 x) { return _mm256_cvtps_pd(_mm256_castps256_ps128(x)); }
static inline __m256d widen4_hi(__m256 x) { return _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)); }
static inline double sum_lanes8(__m256d a, __m256d b) {
    double lanes[4], s = 0.0;
    _mm256_storeu_pd(lanes, _mm256_add_pd(a, b));
    for (int l = 0; l < 4; l++) s += lanes[l];
    return s;
}

#endif /* __AVX2__ && __FMA__ */
#endif /* MINGPT_SIMD_MATH_H */
