/*
 * loss.c — softmax cross-entropy with an ignore index and label smoothing,
 * forward and backward. With smoothing eps over V classes the target is
 * q = (1 - eps) onehot(t) + eps / V, and
 *   loss_i = -sum_j q_j log p_j = (lse - z_t) + eps (z_t - mean_j z_j)
 *   dlogits_i = dloss_i (p - q) = dloss_i (p - onehot(t)) - dloss_i eps (1/V - onehot(t))
 * (eps 0: loss_i = -log softmax(logits_i)[t] = logsumexp(logits_i) - z_t).
 * The max is subtracted before exp (stability); the log-sum and the mean
 * logit are taken in double, and the loss (its smoothing term too) comes
 * from logits directly rather than log(prob), so a tiny probability does
 * not underflow to log(0).
 * probs may alias logits: each row is read fully before it is overwritten.
 * With AVX2 (AVX-512) the row max and the exponentials run 8 (16) lanes at a
 * time through exp_neg (about 1.4 ulp; simd_math.h), each lane's float
 * exponentials summed in double in a fixed lane order: a 50257-wide row was
 * otherwise one scalar expf and one dependent double add per entry.
 * mg_logits_stats gives a search the row max and log-sum of logits without
 * writing probabilities (and the maxima of strided column sets, for a
 * top-k bound), in one read of the row from memory.
 */
#include <math.h>

#include "common.h"
#include "simd_math.h"

/* p[j] = exp(z[j] - zmax) for j < V (p NULL: not stored); returns the sum
 * (in double). */
static double exp_row(float* p, const float* z, int V, float zmax) {
    int j = 0;
    double sum = 0.0;
#if defined(__AVX512F__)
    const __m512 vm = _mm512_set1_ps(zmax), ninf = _mm512_set1_ps(-INFINITY);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (; j < V; j += 16) {
        /* the tail's missing lanes read as -inf: exp gives 0 and adds 0 */
        __mmask16 m = V - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (V - j)) - 1);
        __m512 e = exp_neg16(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, m, z + j), vm));
        if (p) _mm512_mask_storeu_ps(p + j, m, e);
        s0 = _mm512_add_pd(s0, widen_lo(e));
        s1 = _mm512_add_pd(s1, widen_hi(e));
    }
    sum = sum_lanes16(s0, s1);
#elif defined(__AVX2__) && defined(__FMA__)
    const __m256 vm = _mm256_set1_ps(zmax);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (; j + 8 <= V; j += 8) {
        __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(z + j), vm));
        if (p) _mm256_storeu_ps(p + j, e);
        s0 = _mm256_add_pd(s0, widen4_lo(e));
        s1 = _mm256_add_pd(s1, widen4_hi(e));
    }
    sum = sum_lanes8(s0, s1);
#endif
    for (; j < V; j++) {
        float e = expf(z[j] - zmax);
        if (p) p[j] = e;
        sum += e;
    }
    return sum;
}

/* sum of z[0..V) in double, in a fixed lane order (the smoothing term's
 * mean logit) */
static double row_sum(const float* z, int V) {
    int j = 0;
    double sum = 0.0;
#if defined(__AVX512F__)
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (; j + 16 <= V; j += 16) {
        __m512 v = _mm512_loadu_ps(z + j);
        s0 = _mm512_add_pd(s0, widen_lo(v));
        s1 = _mm512_add_pd(s1, widen_hi(v));
    }
    sum = sum_lanes16(s0, s1);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (; j + 8 <= V; j += 8) {
        __m256 v = _mm256_loadu_ps(z + j);
        s0 = _mm256_add_pd(s0, widen4_lo(v));
        s1 = _mm256_add_pd(s1, widen4_hi(v));
    }
    sum = sum_lanes8(s0, s1);
#endif
    for (; j < V; j++) sum += z[j];
    return sum;
}

/* max over z[0..V), NaNs skipped (as the scalar z > m test skips them) */
static float row_max(const float* z, int V) {
    int j = 0;
    float m = -INFINITY;
#if defined(__AVX512F__)
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (; j + 16 <= V; j += 16) vmax = _mm512_max_ps(_mm512_loadu_ps(z + j), vmax);
    m = _mm512_reduce_max_ps(vmax);
#endif
    for (; j < V; j++) m = z[j] > m ? z[j] : m;
    return m;
}

static mg_status check_targets(const int32_t* targets, int N, int V, int ignore_index,
                               const char* fn) {
    for (int i = 0; i < N; i++) {
        int t = targets[i];
        if (t != ignore_index && (t < 0 || t >= V))
            return mg_fail(MG_ERR_INDEX, fn, "target %d at row %d outside [0, %d)", t, i, V);
    }
    return MG_OK;
}

mg_status mg_crossentropy_forward(float* losses, float* probs,
                                  const float* logits, const int32_t* targets,
                                  int N, int V, int ignore_index, float smoothing) {
    MG_TRY(check_crossentropy_forward(__func__, losses, probs, logits, targets, N, V, smoothing));
    MG_TRY(check_targets(targets, N, V, ignore_index, __func__));   /* host only */
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= MG_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float* z = logits + (size_t)i * V;
        float* p = probs + (size_t)i * V;
        int t = targets[i];
        /* everything read of the row before exp_row may overwrite it */
        float zmax = row_max(z, V);
        float zt = (t == ignore_index) ? 0.0f : z[t];
        double zmean = smoothing > 0.0f && t != ignore_index ? row_sum(z, V) / V : 0.0;
        double sum = exp_row(p, z, V, zmax);
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < V; j++) p[j] *= inv;
        double loss = log(sum) + zmax - zt;
        if (smoothing > 0.0f) loss += (double)smoothing * (zt - zmean);
        losses[i] = (t == ignore_index) ? 0.0f : (float)loss;
    }
    return MG_OK;
}

mg_status mg_crossentropy_backward(float* dlogits, const float* dlosses,
                                   const float* probs, const int32_t* targets,
                                   int N, int V, int ignore_index, float smoothing) {
    MG_TRY(check_crossentropy_backward(__func__, dlogits, dlosses, probs, targets, N, V, smoothing));
    MG_TRY(check_targets(targets, N, V, ignore_index, __func__));   /* host only */
    int inplace = (const float*)dlogits == probs;
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= MG_PAR_MIN)
    for (int i = 0; i < N; i++) {
        /* dlogits = dloss * (p - q), q = (1 - eps) onehot(t) + eps / V:
         * dloss * p, then - dloss * eps / V everywhere (a second pass only
         * when smoothing: eps 0 keeps the bits of the unsmoothed loss), then
         * - dloss * (1 - eps) at t */
        const float* p = probs + (size_t)i * V;
        float* d = dlogits + (size_t)i * V;
        int t = targets[i];
        if (t == ignore_index) {
            if (inplace) for (int j = 0; j < V; j++) d[j] = 0.0f;
            continue;
        }
        float g = dlosses[i];
        if (inplace) {
            for (int j = 0; j < V; j++) d[j] = g * p[j];
        } else {
            for (int j = 0; j < V; j++) d[j] += g * p[j];
        }
        if (smoothing > 0.0f) {
            float gs = g * smoothing / (float)V;
            for (int j = 0; j < V; j++) d[j] -= gs;
        }
        d[t] -= g * (1.0f - smoothing);
    }
    return MG_OK;
}

/* m[j] = max(m[j], s[j]) for j < n, NaNs in s skipped */
static void max_into(float* m, const float* s, int n) {
    int j = 0;
#if defined(__AVX512F__)
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(m + j, _mm512_max_ps(_mm512_loadu_ps(s + j), _mm512_loadu_ps(m + j)));
#endif
    for (; j < n; j++) m[j] = s[j] > m[j] ? s[j] : m[j];
}

mg_status mg_logits_stats(float* zmax, double* lse, float* setmax, const float* z,
                          int R, int V, int nsets, int per) {
    MG_CHECK_PTR(zmax); MG_CHECK_PTR(lse); MG_CHECK_PTR(z);
    MG_CHECK(R >= 0, MG_ERR_SHAPE, "R=%d must not be negative", R);
    MG_CHECK_POS(V);
    MG_CHECK(nsets >= 0 && per >= 0, MG_ERR_SHAPE, "nsets=%d and per=%d must not be negative", nsets, per);
    MG_CHECK(nsets == 0 || setmax, MG_ERR_NULL, "setmax is NULL");
    MG_CHECK((size_t)nsets * (size_t)per <= (size_t)V, MG_ERR_SHAPE,
             "%d sets of %d entries do not fit a row of %d", nsets, per, V);
    #pragma omp parallel for schedule(static) if ((size_t)R * V >= MG_PAR_MIN)
    for (int i = 0; i < R; i++) {
        const float* zi = z + (size_t)i * V;
        float m = row_max(zi, V);
        if (nsets > 0) {
            float* sm = setmax + (size_t)i * nsets;
            for (int j = 0; j < nsets; j++) sm[j] = -INFINITY;
            for (int b = 0; b < per; b++) max_into(sm, zi + (size_t)b * nsets, nsets);
        }
        double sum = exp_row(NULL, zi, V, m);
        zmax[i] = m;
        lse[i] = log(sum);
    }
    return MG_OK;
}
