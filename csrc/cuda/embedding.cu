/*
 * embedding.cu — token + position embedding on the GPU, forward and backward;
 * the twin of embedding.c (same arguments, same checks except the token
 * range; tests/reference.py is the float64 spec).
 *   out[b,t,:] = scale * wte[tokens[b,t],:] + wpe[t,:]
 *   dwte[v,:] += sum over (b,t) with tokens[b,t] == v of scale * dout[b,t,:]
 *   dwpe[t,:] += sum over b of dout[b,t,:]
 * The products are __fmul_rn (never fused into the add, as on the CPU), so
 * the bits stay the CPU's for any scale, and scale 1 changes no bit.
 *
 * Forward: one warp per (b,t) row, lanes over channels.
 *
 * Backward, deterministic without atomics and equal to the CPU bit for bit:
 * every element of dwte and dwpe is owned by one thread, which adds its
 * terms in the CPU's order (positions bt = 0, 1, ... for dwte; b = 0, 1, ...
 * for dwpe) onto the element's old value, one fp32 add at a time.
 *  - dwte: block (channel tile, vocab range [v0, v1)). The block walks all
 *    B*T positions a chunk of blockDim.x at a time, compacts the positions
 *    whose token falls in its range (in increasing order: ballot + popc),
 *    and each thread runs down that list for its channel. The running sum of
 *    the current token stays in a register until the token changes, then is
 *    stored; a token seen again later reloads its (updated) row, so the order
 *    of the adds is exactly the CPU's. dout values are loaded a batch ahead
 *    of the adds to keep several loads in flight.
 *    Cost: every block reads all B*T tokens (from L2), and a token that
 *    fills the batch is summed by one thread per channel in sequence (the
 *    price of the CPU's order).
 *  - dwpe: one thread per (t, c) element, over b in order.
 *
 * Gotchas:
 *  - Token ids are not range-checked here (device memory; the host checks
 *    them before the upload). A token outside [0, V) is skipped: the forward
 *    writes wpe[t] alone for its row (the wte term is skipped), the backward
 *    adds nothing for it; nothing is ever read or written out of bounds.
 *  - dwte or dwpe may be NULL (skipped). Rows t >= T of dwpe are untouched.
 *  - Sizes: B*T*C may exceed 2^32; offsets are size_t and the grids are
 *    capped with grid-stride loops.
 */
#include "common.cuh"

static const int EMB_THREADS = 256;
static const int EMB_WARPS = EMB_THREADS / 32;
static const unsigned EMB_MAX_BLOCKS = 65535u * 16u;  /* more work loops over the grid */
static const unsigned FULL_MASK = 0xffffffffu;
/* dwte: at most this many vocabulary ranges (blocks along y, <= 65535) */
static const int EMB_MAX_RANGES = 1024;
/* dwte: dout values loaded ahead of the adds */
static const int EMB_BATCH = 8;

/* ---------------------------------------------------------------- forward */

static __global__ void embedding_forward_kernel(float* out, const int32_t* tokens,
                                                const float* wte, const float* wpe,
                                                float scale, size_t BT, int T, int C, int V) {
    const int lane = threadIdx.x & 31;
    const size_t warps = blockDim.x >> 5;
    for (size_t bt = blockIdx.x * warps + (threadIdx.x >> 5); bt < BT;
         bt += (size_t)gridDim.x * warps) {
        const int tok = tokens[bt];
        const bool ok = tok >= 0 && tok < V;
        const float* te = wte + (ok ? (size_t)tok * C : 0);
        const float* pe = wpe + (bt % (size_t)T) * C;
        float* o = out + bt * C;
        for (int c = lane; c < C; c += 32) o[c] = ok ? __fmul_rn(scale, te[c]) + pe[c] : pe[c];
    }
}

extern "C" mg_status mg_cuda_embedding_forward(float* out, const int32_t* tokens,
                                               const float* wte, const float* wpe, float scale,
                                               int B, int T, int C, int V, int maxT) {
    MG_TRY(check_embedding_forward(__func__, out, tokens, wte, wpe, scale, B, T, C, V, maxT));
    /* unlike embedding.c, no token range check: the ids are in device memory */
    const size_t BT = (size_t)B * T;
    unsigned grid = cuda_grid(MG_MIN(BT, (size_t)EMB_MAX_BLOCKS * EMB_WARPS), EMB_WARPS);
    embedding_forward_kernel<<<grid, EMB_THREADS, 0, cuda_stream()>>>(out, tokens, wte, wpe,
                                                                      scale, BT, T, C, V);
    MG_LAUNCH_CHECK();
    return MG_OK;
}

/* ---------------------------------------------------------------- backward: dwte */

/* Block (blockIdx.x: channels c = blockIdx.x * blockDim.x + threadIdx.x,
 * blockIdx.y: tokens [v0, v0 + W) clipped to V). blockDim.x is a multiple
 * of 32, at most EMB_THREADS. */
static __global__ void embedding_dwte_kernel(float* __restrict__ dwte,
                                             const float* __restrict__ dout,
                                             const int32_t* __restrict__ tokens,
                                             float scale, size_t BT, int C, int V, int W) {
    __shared__ int s_tok[EMB_THREADS];       /* this chunk's hits, in order */
    __shared__ int s_off[EMB_THREADS];       /* their offsets in the chunk */
    __shared__ int s_count[EMB_WARPS];       /* hits per warp */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nwarps = blockDim.x >> 5;
    const int c = blockIdx.x * blockDim.x + tid;
    const long long v0 = (long long)blockIdx.y * W;
    const long long v1 = MG_MIN((long long)V, v0 + W);
    const size_t chunk = blockDim.x;

    int cur = -1;      /* the token whose running sum is in acc */
    float acc = 0.0f;
    int next = (size_t)tid < BT ? tokens[tid] : -1;
    for (size_t base = 0; base < BT; base += chunk) {
        const int tok = next;
        const bool hit = base + tid < BT && tok >= v0 && tok < v1;
        /* the next chunk's token is loaded while this one is summed */
        next = base + chunk + tid < BT ? tokens[base + chunk + tid] : -1;

        /* ordered compaction of the hits: warp ballots, then warp offsets */
        const unsigned ballot = __ballot_sync(FULL_MASK, hit);
        if (lane == 0) s_count[warp] = __popc(ballot);
        __syncthreads();
        int off = 0, n = 0;
        for (int w = 0; w < nwarps; w++) {
            int k = s_count[w];
            off += w < warp ? k : 0;
            n += k;
        }
        if (hit) {
            int k = off + __popc(ballot & ((1u << lane) - 1u));
            s_tok[k] = tok;
            s_off[k] = tid;
        }
        __syncthreads();

        if (c < C) {
            for (int k0 = 0; k0 < n; k0 += EMB_BATCH) {  /* hot loop */
                float g[EMB_BATCH];
                #pragma unroll
                for (int j = 0; j < EMB_BATCH; j++)
                    g[j] = k0 + j < n ? __fmul_rn(scale, dout[(base + s_off[k0 + j]) * C + c])
                                      : 0.0f;
                #pragma unroll
                for (int j = 0; j < EMB_BATCH; j++) {
                    if (k0 + j < n) {
                        const int t = s_tok[k0 + j];
                        if (t != cur) {
                            if (cur >= 0) dwte[(size_t)cur * C + c] = acc;
                            cur = t;
                            acc = dwte[(size_t)t * C + c];
                        }
                        acc += g[j];
                    }
                }
            }
        }
        __syncthreads();  /* s_tok, s_off, s_count are rewritten next chunk */
    }
    if (c < C && cur >= 0) dwte[(size_t)cur * C + c] = acc;
}

/* ---------------------------------------------------------------- backward: dwpe */

/* dwpe[t,c] (element e = t*C + c of the first T rows) += dout[b,t,c] over b in order */
static __global__ void embedding_dwpe_kernel(float* __restrict__ dwpe,
                                             const float* __restrict__ dout,
                                             size_t TC, int B) {
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < TC;
         e += (size_t)gridDim.x * blockDim.x) {
        float acc = dwpe[e];
        for (int b = 0; b < B; b++) acc += dout[(size_t)b * TC + e];
        dwpe[e] = acc;
    }
}

extern "C" mg_status mg_cuda_embedding_backward(float* dwte, float* dwpe, const float* dout,
                                                const int32_t* tokens, float scale,
                                                int B, int T, int C, int V, int maxT) {
    MG_TRY(check_embedding_backward(__func__, dout, tokens, scale, B, T, C, V, maxT));
    /* unlike embedding.c, no token range check: the ids are in device memory */
    cudaStream_t s = cuda_stream();
    if (dwte) {
        /* one warp more than C needs is waste; tiles of up to EMB_THREADS */
        int threads = (int)MG_MIN((size_t)EMB_THREADS, ((size_t)C + 31) / 32 * 32);
        unsigned tiles = (unsigned)(((size_t)C + threads - 1) / threads);
        int W = (int)(((size_t)V + EMB_MAX_RANGES - 1) / EMB_MAX_RANGES);
        unsigned ranges = (unsigned)(((size_t)V + W - 1) / W);
        embedding_dwte_kernel<<<dim3(tiles, ranges), threads, 0, s>>>(
            dwte, dout, tokens, scale, (size_t)B * T, C, V, W);
        MG_LAUNCH_CHECK();
    }
    if (dwpe) {
        const size_t TC = (size_t)T * C;
        unsigned grid = cuda_grid(MG_MIN(TC, (size_t)EMB_MAX_BLOCKS * EMB_THREADS), EMB_THREADS);
        embedding_dwpe_kernel<<<grid, EMB_THREADS, 0, s>>>(dwpe, dout, TC, B);
        MG_LAUNCH_CHECK();
    }
    return MG_OK;
}
