/*
 * mingpt.h — the whole C API of mingpt-c.
 *
 * cffi reads this file as it is (preprocessor lines are skipped), so below the
 * include guard there are no macros: constants are enums.
 *
 * Conventions:
 *   - every function returns mg_status and validates its arguments before any
 *     work; mg_last_error() returns the message of the last failure (per thread);
 *   - buffers are contiguous, row-major float32 (int32 for token ids);
 *   - forward: outputs, saved-for-backward, inputs, weights, sizes, flags;
 *   - backward: gradient outputs, scratch, upstream gradient, saved tensors,
 *     sizes, flags; backward ADDS into every gradient output (caller zeroes),
 *     except where an `accumulate` flag of 0 asks it to overwrite instead
 *     (the elementwise and attention backwards: no separate zeroing pass);
 *   - kernels never allocate; parallel loops write disjoint outputs, so a
 *     given thread count fixes every bit of every result.
 * Size letters: B batch, T time, C channels, NH heads, hs = C/NH, V vocab,
 * OC output channels, N = B*T rows.
 */
#ifndef MINGPT_H
#define MINGPT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MG_OK = 0,
    MG_ERR_SHAPE = 1,    /* sizes that do not fit together */
    MG_ERR_VALUE = 2,    /* a bad scalar argument (negative size, NaN lr...) */
    MG_ERR_INDEX = 3,    /* a token id or target out of range */
    MG_ERR_NOMEM = 4,    /* an allocation failed (helpers that allocate) */
    MG_ERR_NULL = 5,     /* a required pointer is NULL */
    MG_ERR_CUDA = 6,     /* a CUDA runtime or cuBLAS error */
    MG_ERR_NO_CUDA = 7   /* this build has no CUDA path */
} mg_status;

typedef enum {
    MG_IGNORE_INDEX = -100, /* default ignore index of the cross-entropy */
    MG_GEMV_ROWS = 4        /* mg_matmul_forward of up to this many rows reads the weight
                               unpacked (dot products): a packed weight does not serve them */
} mg_constants;

/* ---------------------------------------------------------------- runtime */
const char* mg_last_error(void);
const char* mg_version(void);
const char* mg_compiler(void);
const char* mg_simd(void);          /* "avx512+avx2+fma", "avx2+fma" or "portable" */
int mg_has_openmp(void);
int mg_has_cuda(void);
int mg_get_num_threads(void);
mg_status mg_set_num_threads(int n);

/* ---------------------------------------------------------------- matmul */
/* General single-precision GEMM, row-major:
 *   Cm (M,N) = beta * Cm + A' @ B'   where A' = A (M,K) or A^T with A (K,M),
 *                                           B' = B (K,N) or B^T with B (N,K).
 * lda/ldb/ldc are row strides in elements. beta is 0 or 1 (overwrite or add).
 * Deterministic: every output element is summed over K in one fixed order. */
mg_status mg_sgemm(int transA, int transB, int M, int N, int K,
                   const float* A, int lda, const float* B, int ldb,
                   float beta, float* Cm, int ldc);

/* Linear layer, PyTorch layout: out (N,OC) = inp (N,C) @ weight^T + bias,
 * weight (OC,C), bias (OC) or NULL. */
mg_status mg_matmul_forward(float* out, const float* inp, const float* weight,
                            const float* bias, int N, int C, int OC);
/* The same product with the weight packed once for many calls (decoding
 * steps): mg_matmul_packed_size gives the floats of the packed form,
 * mg_matmul_pack writes it (packed aligned to 64 bytes), and
 * mg_matmul_forward_packed gives exactly the bits of mg_matmul_forward, for
 * which it still needs the weight (a few rows go through it unpacked). The
 * layout depends on the build's SIMD kernel: keep it in memory only. */
mg_status mg_matmul_packed_size(size_t* n, int C, int OC);
mg_status mg_matmul_pack(float* packed, size_t npacked, const float* weight, int C, int OC);
mg_status mg_matmul_forward_packed(float* out, const float* inp, const float* weight,
                                   const float* packed, size_t npacked, const float* bias,
                                   int N, int C, int OC);
/* dinp (N,C) += dout @ weight (= when overwrite_dinp: its old contents are
 * never read, the bits are those of zeroing it first); dweight (OC,C) +=
 * dout^T @ inp; dbias (OC) += sum over rows of dout. dinp, dweight or dbias
 * may be NULL. */
mg_status mg_matmul_backward(float* dinp, float* dweight, float* dbias,
                             const float* dout, const float* inp,
                             const float* weight, int N, int C, int OC,
                             int overwrite_dinp);

/* ---------------------------------------------------------------- embedding */
/* out (B,T,C) = scale * wte[tokens] + wpe[t]; tokens (B,T) in [0,V);
 * T <= maxT. scale is finite (1 for GPT-2; sqrt(C) for the Transformer and
 * Marian); scale 1 gives exactly the bits of wte[tokens] + wpe[t]. */
mg_status mg_embedding_forward(float* out, const int32_t* tokens,
                               const float* wte, const float* wpe, float scale,
                               int B, int T, int C, int V, int maxT);
/* dwte (V,C) += scale * dout scattered by token; dwpe (maxT,C) += sum of
 * dout over the batch (no scale: it multiplies wte only). dwte or dwpe may
 * be NULL (not wanted). */
mg_status mg_embedding_backward(float* dwte, float* dwpe, const float* dout,
                                const int32_t* tokens, float scale,
                                int B, int T, int C, int V, int maxT);
/* Fixed sinusoidal position table pe (maxT,C), computed in double and stored
 * as float; angle(t, i) = t / 10000^(2i/C). CPU only (it fills a host
 * buffer, once; upload it for the GPU).
 *   interleaved = 1, the paper's layout (Vaswani et al. 2017; XLM):
 *     pe[t,2i] = sin(angle(t, i)),  pe[t,2i+1] = cos(angle(t, i));
 *   interleaved = 0, the half layout (Marian, Hugging Face's
 *     MarianSinusoidalPositionalEmbedding): with h = ceil(C/2),
 *     pe[t,i] = sin(angle(t, i)) for i < h,  pe[t,h+i] = cos(angle(t, i))
 *     for i < C - h (odd C: one more sin column than cos columns). */
mg_status mg_sinusoid_table(float* pe, int maxT, int C, int interleaved);

/* ---------------------------------------------------------------- layernorm */
/* out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved.
 * eps > 0 (GPT-2 and BERT use 1e-5 and 1e-12). */
mg_status mg_layernorm_forward(float* out, float* mean, float* rstd,
                               const float* inp, const float* weight,
                               const float* bias, int N, int C, float eps);
mg_status mg_layernorm_backward(float* dinp, float* dweight, float* dbias,
                                const float* dout, const float* inp,
                                const float* weight, const float* mean,
                                const float* rstd, int N, int C);

/* ---------------------------------------------------------------- attention */
/* Multi-head self-attention on packed qkv (B,T,3C) = [q | k | v], head h uses
 * channels h*hs..(h+1)*hs of each. att (B,NH,T,T) saves the softmax
 * probabilities; out (B,T,C). causal: key s is visible to query t iff s <= t.
 * key_mask (B,T) int32 or NULL: 0 marks a padded key (never attended).
 * A query that sees no key gets a zero output. */
mg_status mg_attention_forward(float* out, float* att, const float* qkv,
                               const int32_t* key_mask,
                               int B, int T, int C, int NH, int causal);
/* dqkv (B,T,3C) += gradient (accumulate != 0) or = gradient (accumulate 0);
 * scratch (B,NH,T,T) is overwritten. */
mg_status mg_attention_backward(float* dqkv, float* scratch, const float* dout,
                                const float* qkv, const float* att,
                                int B, int T, int C, int NH, int causal,
                                int accumulate);
/* Multi-head cross-attention (encoder-decoder): queries from the decoder,
 * keys and values from the encoder. q (B,Tq,C); kv (B,Tk,2C) = [k | v],
 * head h uses channels h*hs..(h+1)*hs of q, of k and of v. att (B,NH,Tq,Tk)
 * saves the softmax probabilities; out (B,Tq,C). No causal limit: every
 * query sees every key whose key_mask (B,Tk) int32 entry is non-zero (NULL:
 * every key). scale 1/sqrt(hs). A query that sees no key (a fully padded
 * row) gets a zero output. Tq = 1 is a decoding step over precomputed kv. */
mg_status mg_cross_attention_forward(float* out, float* att, const float* q,
                                     const float* kv, const int32_t* key_mask,
                                     int B, int Tq, int Tk, int C, int NH);
/* dq (B,Tq,C) and dkv (B,Tk,2C) += gradient (accumulate != 0) or
 * = gradient (accumulate 0); scratch (B,NH,Tq,Tk) is overwritten. Padded keys
 * need no mask here: their att entries are 0, so is their gradient. */
mg_status mg_cross_attention_backward(float* dq, float* dkv, float* scratch,
                                      const float* dout, const float* q,
                                      const float* kv, const float* att,
                                      int B, int Tq, int Tk, int C, int NH,
                                      int accumulate);
/* One decoding step with a KV cache: qkv (B,Tn,3C) holds Tn new positions
 * starting at position pos; their k and v are written into kcache, vcache
 * (B,NH,maxT,hs) at pos..pos+Tn-1, then out (B,Tn,C) is causal attention of
 * each new query over cache positions 0..its own. scratch (B,NH,maxT). */
mg_status mg_attention_decode(float* out, float* kcache, float* vcache,
                              float* scratch, const float* qkv,
                              int B, int Tn, int pos, int maxT, int C, int NH);
/* Beam search's cache reorder: row r (r < n) of buf takes what row src[r]
 * (in [0, B)) held. A row is `chunks` chunks of chunk_len floats,
 * chunk_stride apart; rows are row_stride apart (a cache (B, NH, maxT, hs)
 * keeping its first length positions: NH chunks of length * hs floats,
 * maxT * hs apart). Rows with src[r] == r are not touched; a row that is
 * read and overwritten goes through scratch (room for B rows' chunks,
 * packed: B * chunks * chunk_len floats). */
mg_status mg_gather_rows(float* buf, float* scratch, const int32_t* src, int n, int B, int chunks,
                         size_t row_stride, size_t chunk_stride, size_t chunk_len);

/* ---------------------------------------------------------------- mlp */
/* GELU, tanh approximation (GPT-2):
 * out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). out may equal inp. */
mg_status mg_gelu_forward(float* out, const float* inp, size_t N);
mg_status mg_gelu_backward(float* dinp, const float* inp, const float* dout,
                           size_t N, int accumulate);
/* GELU, exact (BERT, ViT: Hugging Face "gelu"):
 * out = 0.5 x (1 + erf(x / sqrt(2))). out may equal inp. */
mg_status mg_gelu_erf_forward(float* out, const float* inp, size_t N);
mg_status mg_gelu_erf_backward(float* dinp, const float* inp, const float* dout,
                               size_t N, int accumulate);

/* ReLU (the Transformer's and Marian's MLP): out = x < 0 ? 0 : x (NaN and
 * -0 pass through). out may equal inp. Backward: dinp (+)= x <= 0 ? 0 : dout,
 * so the gradient at exactly 0 is 0 and a NaN input passes dout, as in
 * PyTorch. */
mg_status mg_relu_forward(float* out, const float* inp, size_t N);
mg_status mg_relu_backward(float* dinp, const float* inp, const float* dout,
                           size_t N, int accumulate);

/* SiLU, "swish" (MarianMT; Hugging Face "silu" and "swish"):
 * out = x sigmoid(x) = x / (1 + exp(-x)), with sigmoid taken from exp(-|x|)
 * so no exp overflows. out may equal inp. Backward:
 * dinp (+)= dout s (1 + x (1 - s)), s = sigmoid(x). NaN propagates, and
 * -inf (forward) or +-inf (backward) give NaN, as in PyTorch. */
mg_status mg_silu_forward(float* out, const float* inp, size_t N);
mg_status mg_silu_backward(float* dinp, const float* inp, const float* dout,
                           size_t N, int accumulate);

/* ---------------------------------------------------------------- residual */
/* out = inp1 + inp2; backward: dinp1 += dout, dinp2 += dout. */
mg_status mg_residual_forward(float* out, const float* inp1, const float* inp2,
                              size_t N);
mg_status mg_residual_backward(float* dinp1, float* dinp2, const float* dout,
                               size_t N);

/* ---------------------------------------------------------------- dropout */
/* out = inp * keep / (1 - p), keep drawn from a counter-based hash of
 * (seed, index): the same seed gives the same mask at any thread count.
 * mask (N) uint8 saved for backward. p in [0, 1). */
mg_status mg_dropout_forward(float* out, uint8_t* mask, const float* inp,
                             size_t N, float p, uint64_t seed);
mg_status mg_dropout_backward(float* dinp, const float* dout,
                              const uint8_t* mask, size_t N, float p,
                              int accumulate);

/* ---------------------------------------------------------------- loss */
/* Softmax cross-entropy per row against the label-smoothed target
 * q = (1 - smoothing) onehot(target) + smoothing / V (PyTorch's
 * cross_entropy(label_smoothing=)): losses (N) = -sum_j q_j log p_j
 *   = (lse - z_t) + smoothing (z_t - mean_j z_j),  lse = log sum_j exp(z_j);
 * smoothing 0: -log softmax(logits)[target]. probs (N,V) saved (may equal
 * logits: computed in place). Rows whose target is ignore_index get loss 0
 * and are skipped by the backward. smoothing in [0, 1). */
mg_status mg_crossentropy_forward(float* losses, float* probs,
                                  const float* logits, const int32_t* targets,
                                  int N, int V, int ignore_index, float smoothing);
/* dlogits (N,V) += dlosses[i] * (probs[i] - q_i), q_i the smoothed target.
 * dlogits may equal probs (then it is overwritten, not added to). */
mg_status mg_crossentropy_backward(float* dlogits, const float* dlosses,
                                   const float* probs, const int32_t* targets,
                                   int N, int V, int ignore_index, float smoothing);
/* What a search needs of logits z (R,V) to read a few log-probabilities
 * log_softmax(z)_j = (z_j - zmax) - lse, in one pass over z: per row its
 * maximum zmax (NaNs skipped) and lse = log(sum_j exp(z_j - zmax)) (float32
 * exponentials summed in double; NaN where the row has a NaN or no finite
 * maximum); and, when
 * nsets > 0, setmax (R,nsets): setmax[r][j] = the max over b < per of
 * z[r][b*nsets + j] (NaNs skipped; -inf for none), the maxima of disjoint
 * strided sets that bound a row's n-th largest entry from below. */
mg_status mg_logits_stats(float* zmax, double* lse, float* setmax, const float* z,
                          int R, int V, int nsets, int per);

/* ---------------------------------------------------------------- adamw */
/* Global L2 norm of grads (n), accumulated in double in a fixed order. */
mg_status mg_global_norm(float* norm, const float* grads, size_t n);
/* AdamW step t (1-based), decoupled weight decay, bias correction:
 *   g = grads * grad_scale            (grad_scale: clipping factor)
 *   m = b1 m + (1-b1) g ;  v = b2 v + (1-b2) g^2
 *   p -= lr * ( m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd * decay[i] * p )
 * decay_mask (n) uint8 or NULL (NULL: decay every parameter). */
mg_status mg_adamw_update(float* params, float* m, float* v, const float* grads,
                          const uint8_t* decay_mask, size_t n, float lr,
                          float beta1, float beta2, float eps,
                          float weight_decay, float grad_scale, int t);
/* Exponential moving average of the weights, one step:
 *   avg = decay * avg + (1 - decay) * x    (decay in [0, 1]; 0 copies x)
 * avg, x (n). */
mg_status mg_ema_update(float* avg, const float* x, size_t n, float decay);

/* ---------------------------------------------------------------- decode */
/* One GPT-2 block's weights (linear weights (out, in), as everywhere) and
 * its KV cache (NH, maxT, hs) for mg_gpt_decode_step. */
typedef struct {
    const float* ln_1_w;    const float* ln_1_b;    /* (C) */
    const float* attn_w;    const float* attn_b;    /* (3C, C), (3C) */
    const float* proj_w;    const float* proj_b;    /* (C, C), (C) */
    const float* ln_2_w;    const float* ln_2_b;    /* (C) */
    const float* fc_w;      const float* fc_b;      /* (4C, C), (4C) */
    const float* fcproj_w;  const float* fcproj_b;  /* (C, 4C), (C) */
    float* kcache;          float* vcache;          /* (NH, maxT, hs) */
} mg_decode_layer;

/* One position of a pre-LN GPT for one sequence, the whole stack in one call
 * (token-by-token sampling): x = wte[token] + wpe[pos], L blocks (each
 * writes its new k, v at pos and attends over cache positions 0..pos),
 * ln_f, logits (V) = ln_f(x) @ wte^T. The same kernels in the same order as
 * layernorm / matmul / attention_decode / GELU / residual calls, so the same
 * bits. work (nwork floats, at least mg_gpt_decode_workspace's count) is
 * scratch. */
mg_status mg_gpt_decode_step(float* logits, float* work, size_t nwork, const mg_decode_layer* layers,
                             const float* wte, const float* wpe, const float* lnf_w,
                             const float* lnf_b, int token, int pos, int L, int maxT,
                             int C, int NH, int V, float eps);
/* *nwork = the floats of work that mg_gpt_decode_step needs for these sizes
 * (the one place the count is written; callers ask here). */
mg_status mg_gpt_decode_workspace(size_t* nwork, int C, int NH, int maxT);

/* ---------------------------------------------------------------- bpe */
/* Byte-level BPE training (bpe.c). Tokens 0..255 are the byte values; merge i
 * creates token 256 + i from the pair merges[i] = (left, right).
 * Tie rule: the pair with the highest count is merged next; among equal
 * counts the smallest left id wins, then the smallest right id. A pair whose
 * bytes equal those of an existing token is never merged (a byte string can
 * have only one id). Training stops early when no pair has a count of at least
 * min_frequency (n_done < n_merges). These functions allocate their working
 * memory and free it before returning; MG_ERR_NOMEM if it cannot be had.
 * Continued training: the first n_init rows of merges are given, not learned;
 * they are applied in order to the chunks before learning goes on (so a
 * vocabulary learned within words can grow merges across them on a coarser
 * split). They must be valid merges: names of existing tokens, no repeated
 * byte string (MG_ERR_VALUE otherwise). n_init = 0: plain training.
 *
 * Pre-split patterns, written out by hand in C (byte-exact with the regexes
 * tiktoken uses, given the same code point classes):
 *   GPT2  '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
 *   GPT4  the cl100k_base pattern (case-insensitive contractions, \p{N}{1,3}, ...)
 *   LINES [^\n]*\n|[^\n]+   (no word split: merges may cross spaces)
 * classes (MG_BPE_N_CODEPOINTS) uint8: per code point, an OR of the CLASS bits
 * below (0 = other). Invalid UTF-8 bytes count as one "other" character. */
typedef enum {
    MG_BPE_PATTERN_GPT2 = 0,
    MG_BPE_PATTERN_GPT4 = 1,
    MG_BPE_PATTERN_LINES = 2
} mg_bpe_pattern;

typedef enum {
    MG_BPE_CLASS_LETTER = 1,        /* \p{L} */
    MG_BPE_CLASS_NUMBER = 2,        /* \p{N} */
    MG_BPE_CLASS_SPACE = 4,         /* \s: Unicode White_Space */
    MG_BPE_N_CODEPOINTS = 1114112,  /* 0x110000 */
    MG_BPE_MAX_VOCAB = 1048576      /* 2^20 token ids, specials included */
} mg_bpe_limits;

/* Splits text (n bytes) into chunks: ends (n) receives the end offset of each
 * chunk, *n_chunks their number (chunk k is ends[k-1]..ends[k]). */
mg_status mg_bpe_split(int64_t* ends, int64_t* n_chunks, const uint8_t* text,
                       int64_t n, const uint8_t* classes, int pattern);

/* Trains on given chunks: chunk k is chunks[offsets[k]..offsets[k+1]) with
 * weight counts[k] >= 0 (duplicates allowed, they add up).
 * merges (n_merges, 2) int32 out; *n_done merges were learned. */
mg_status mg_bpe_train_chunks(int32_t* merges, int32_t* n_done,
                              const uint8_t* chunks, const int64_t* offsets,
                              const int64_t* counts, int64_t n_chunks,
                              int32_t n_init, int32_t n_merges, int64_t min_frequency);

/* Pre-splits and counts, then trains: document d is
 * text[doc_offsets[d]..doc_offsets[d+1]) and no chunk crosses a document end.
 * Splitting and counting run on all threads; the result does not depend on
 * the thread count. *n_unique receives the number of distinct chunks. */
mg_status mg_bpe_train_text(int32_t* merges, int32_t* n_done, int64_t* n_unique,
                            const uint8_t* text, const int64_t* doc_offsets,
                            int64_t n_docs, const uint8_t* classes, int pattern,
                            int32_t n_init, int32_t n_merges, int64_t min_frequency);

/* ---------------------------------------------------------------- cuda */
/* The CUDA path (csrc/cuda/<block>.cu, linked by `make cuda`). Each kernel
 * mg_cuda_<block>_<pass> takes its CPU twin's arguments in the same order,
 * with device pointers for every buffer, and follows the same rules (backward
 * adds, accumulate flags, NULL for an unwanted gradient). Work is queued on
 * the runtime's one stream: a call returns once its kernels are launched, and
 * reports a bad launch itself; a fault while they run is reported by the next
 * call that synchronises (a copy to the host, mg_cuda_synchronize).
 * Token ids are not range-checked on the device (the host checks them before
 * the upload); an id out of range is skipped, never read out of bounds.
 * In a build without CUDA every function here returns MG_ERR_NO_CUDA.
 *
 * Precision of the matrix products (attention's included), set once for the
 * whole path by mg_cuda_set_math; every other kernel computes in fp32. */
typedef enum {
    MG_MATH_FP32 = 0,   /* IEEE fp32 products: the parity reference */
    MG_MATH_TF32 = 1,   /* TF32 tensor cores, fp32 accumulation */
    MG_MATH_BF16 = 2    /* bf16 tensor cores, fp32 accumulation */
} mg_math_mode;

typedef enum {
    MG_COPY_H2D = 1,    /* host to device */
    MG_COPY_D2H = 2,    /* device to host (waits for the stream) */
    MG_COPY_D2D = 3     /* device to device (queued on the stream) */
} mg_copy_kind;

typedef struct {
    int device_count;       /* visible GPUs */
    int device;             /* the one in use */
    char name[256];
    int major, minor;       /* compute capability */
    int multiprocessors;
    size_t total_mem, free_mem;         /* bytes */
    int runtime_version, driver_version; /* 13000 = 13.0 */
    int math_mode;          /* mg_math_mode in force */
} mg_cuda_info;

/* Fills info; MG_ERR_CUDA (with the driver's message) if no GPU is usable. */
mg_status mg_cuda_get_info(mg_cuda_info* info);
mg_status mg_cuda_set_math(int mode);
/* Device memory. Out of memory is MG_ERR_NOMEM naming the bytes asked for
 * and the bytes free. Pinned host memory (mg_cuda_malloc_host) lets a copy
 * in run beside the kernels. */
mg_status mg_cuda_malloc(void** ptr, size_t bytes);
mg_status mg_cuda_free(void* ptr);
mg_status mg_cuda_malloc_host(void** ptr, size_t bytes);
mg_status mg_cuda_free_host(void* ptr);
mg_status mg_cuda_memcpy(void* dst, const void* src, size_t bytes, int kind);
mg_status mg_cuda_memset(void* ptr, int value, size_t bytes);
mg_status mg_cuda_synchronize(void);
/* x (n) = value. */
mg_status mg_cuda_fill(float* x, float value, size_t n);
/* *sum = the sum of x (n) in double, in a fixed order (waits for the stream). */
mg_status mg_cuda_sum(double* sum, const float* x, size_t n);

mg_status mg_cuda_sgemm(int transA, int transB, int M, int N, int K,
                        const float* A, int lda, const float* B, int ldb,
                        float beta, float* Cm, int ldc);
mg_status mg_cuda_matmul_forward(float* out, const float* inp, const float* weight,
                                 const float* bias, int N, int C, int OC);
mg_status mg_cuda_matmul_backward(float* dinp, float* dweight, float* dbias,
                                  const float* dout, const float* inp,
                                  const float* weight, int N, int C, int OC,
                                  int overwrite_dinp);
mg_status mg_cuda_embedding_forward(float* out, const int32_t* tokens,
                                    const float* wte, const float* wpe, float scale,
                                    int B, int T, int C, int V, int maxT);
mg_status mg_cuda_embedding_backward(float* dwte, float* dwpe, const float* dout,
                                     const int32_t* tokens, float scale,
                                     int B, int T, int C, int V, int maxT);
mg_status mg_cuda_layernorm_forward(float* out, float* mean, float* rstd,
                                    const float* inp, const float* weight,
                                    const float* bias, int N, int C, float eps);
mg_status mg_cuda_layernorm_backward(float* dinp, float* dweight, float* dbias,
                                     const float* dout, const float* inp,
                                     const float* weight, const float* mean,
                                     const float* rstd, int N, int C);
mg_status mg_cuda_attention_forward(float* out, float* att, const float* qkv,
                                    const int32_t* key_mask,
                                    int B, int T, int C, int NH, int causal);
mg_status mg_cuda_attention_backward(float* dqkv, float* scratch, const float* dout,
                                     const float* qkv, const float* att,
                                     int B, int T, int C, int NH, int causal,
                                     int accumulate);
/* Fused self-attention (flash_attention.cu, the GPU only): the forward and
 * backward of mg_cuda_attention_forward/backward without the (B,NH,T,T)
 * probabilities; the forward saves lse (B,NH,T), each query's log-sum-exp
 * of its visible scaled scores (-inf for a query that sees no key), and the
 * backward recomputes the probabilities from it and the forward's out.
 * fp32, head sizes 16, 32, 48, 64; memory linear in T. */
mg_status mg_cuda_flash_attention_forward(float* out, float* lse, const float* qkv,
                                          const int32_t* key_mask,
                                          int B, int T, int C, int NH, int causal);
mg_status mg_cuda_flash_attention_backward(float* dqkv, const float* dout,
                                           const float* out, const float* lse,
                                           const float* qkv, const int32_t* key_mask,
                                           int B, int T, int C, int NH, int causal,
                                           int accumulate);
mg_status mg_cuda_cross_attention_forward(float* out, float* att, const float* q,
                                          const float* kv, const int32_t* key_mask,
                                          int B, int Tq, int Tk, int C, int NH);
mg_status mg_cuda_cross_attention_backward(float* dq, float* dkv, float* scratch,
                                           const float* dout, const float* q,
                                           const float* kv, const float* att,
                                           int B, int Tq, int Tk, int C, int NH,
                                           int accumulate);
mg_status mg_cuda_attention_decode(float* out, float* kcache, float* vcache,
                                   float* scratch, const float* qkv,
                                   int B, int Tn, int pos, int maxT, int C, int NH);
mg_status mg_cuda_gelu_forward(float* out, const float* inp, size_t N);
mg_status mg_cuda_gelu_backward(float* dinp, const float* inp, const float* dout,
                                size_t N, int accumulate);
mg_status mg_cuda_gelu_erf_forward(float* out, const float* inp, size_t N);
mg_status mg_cuda_gelu_erf_backward(float* dinp, const float* inp, const float* dout,
                                    size_t N, int accumulate);
mg_status mg_cuda_relu_forward(float* out, const float* inp, size_t N);
mg_status mg_cuda_relu_backward(float* dinp, const float* inp, const float* dout,
                                size_t N, int accumulate);
mg_status mg_cuda_silu_forward(float* out, const float* inp, size_t N);
mg_status mg_cuda_silu_backward(float* dinp, const float* inp, const float* dout,
                                size_t N, int accumulate);
mg_status mg_cuda_residual_forward(float* out, const float* inp1, const float* inp2,
                                   size_t N);
mg_status mg_cuda_residual_backward(float* dinp1, float* dinp2, const float* dout,
                                    size_t N);
mg_status mg_cuda_dropout_forward(float* out, uint8_t* mask, const float* inp,
                                  size_t N, float p, uint64_t seed);
mg_status mg_cuda_dropout_backward(float* dinp, const float* dout,
                                   const uint8_t* mask, size_t N, float p,
                                   int accumulate);
mg_status mg_cuda_crossentropy_forward(float* losses, float* probs,
                                       const float* logits, const int32_t* targets,
                                       int N, int V, int ignore_index, float smoothing);
mg_status mg_cuda_crossentropy_backward(float* dlogits, const float* dlosses,
                                        const float* probs, const int32_t* targets,
                                        int N, int V, int ignore_index, float smoothing);
/* *norm (a host float) = the global L2 norm (waits for the stream). */
mg_status mg_cuda_global_norm(float* norm, const float* grads, size_t n);
mg_status mg_cuda_adamw_update(float* params, float* m, float* v, const float* grads,
                               const uint8_t* decay_mask, size_t n, float lr,
                               float beta1, float beta2, float eps,
                               float weight_decay, float grad_scale, int t);
mg_status mg_cuda_ema_update(float* avg, const float* x, size_t n, float decay);

#endif /* MINGPT_H */
