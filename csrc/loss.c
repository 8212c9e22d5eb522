/*
 * loss.c — softmax cross-entropy with an ignore index, forward and backward.
 *   loss_i = -log softmax(logits_i)[target_i] = logsumexp(logits_i) - logits_i[t]
 * The max is subtracted before exp (stability); the log-sum is taken in
 * double, and the loss comes from logits directly rather than log(prob), so
 * a tiny probability does not underflow to log(0).
 * probs may alias logits: each row is read fully before it is overwritten.
 */
#include <math.h>

#include "common.h"

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
                                  int N, int V, int ignore_index) {
    MG_CHECK_PTR(losses); MG_CHECK_PTR(probs); MG_CHECK_PTR(logits); MG_CHECK_PTR(targets);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(V);
    mg_status st = check_targets(targets, N, V, ignore_index, __func__);
    if (st != MG_OK) return st;
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= MG_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float* z = logits + (size_t)i * V;
        float* p = probs + (size_t)i * V;
        int t = targets[i];
        float zmax = -INFINITY;
        for (int j = 0; j < V; j++) zmax = z[j] > zmax ? z[j] : zmax;
        float zt = (t == ignore_index) ? 0.0f : z[t];
        double sum = 0.0;
        for (int j = 0; j < V; j++) {
            float e = expf(z[j] - zmax);
            p[j] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < V; j++) p[j] *= inv;
        losses[i] = (t == ignore_index) ? 0.0f : (float)(log(sum) + zmax - zt);
    }
    return MG_OK;
}

mg_status mg_crossentropy_backward(float* dlogits, const float* dlosses,
                                   const float* probs, const int32_t* targets,
                                   int N, int V, int ignore_index) {
    MG_CHECK_PTR(dlogits); MG_CHECK_PTR(dlosses); MG_CHECK_PTR(probs); MG_CHECK_PTR(targets);
    MG_CHECK(N >= 0, MG_ERR_SHAPE, "N=%d must not be negative", N);
    MG_CHECK_POS(V);
    mg_status st = check_targets(targets, N, V, ignore_index, __func__);
    if (st != MG_OK) return st;
    int inplace = (const float*)dlogits == probs;
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= MG_PAR_MIN)
    for (int i = 0; i < N; i++) {
        /* loss = -log p[t]:  dlogits = dloss * (p - onehot(t)) */
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
        d[t] -= g;
    }
    return MG_OK;
}
