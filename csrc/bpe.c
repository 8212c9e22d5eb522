/*
 * bpe.c — byte-level BPE training: regex pre-split, unique-chunk counting and
 * merge learning with incrementally updated pair counts.
 *
 * Reference: Sennrich et al. 2016 (BPE for words), Radford et al. 2019 (GPT-2
 * byte-level BPE with a regex pre-split); the patterns are tiktoken's
 * r50k_base ("gpt2") and cl100k_base ("gpt4").
 *
 * Why pre-split in C: the regex module in Python needs ~6 s to split and count
 * the 33 MB IMDB corpus, far more than the merges themselves. The two patterns
 * are simple enough to write out as code over a code point class table that
 * Python builds from the same regex engine (so \p{L}, \p{N} and \s agree).
 *
 * Merge learning (the hot part):
 *   - every distinct chunk is a "word" of symbols with a weight (its count);
 *   - count[pair] is the weighted number of adjacent occurrences, and
 *     where[pair] lists the words that contained the pair when it appeared
 *     (entries go stale; a stale word is simply found not to contain it);
 *   - a max-heap orders pairs by (count desc, left asc, right asc). Counts
 *     only go up for pairs that contain the newest token, and those are pushed
 *     after each merge; counts that went down leave a stale, too-high entry
 *     that is re-pushed with the true count when it reaches the top. So the
 *     first entry whose count is current is the true best pair.
 *   - applying merge (a,b) -> z rewrites only the words in where[(a,b)] and
 *     updates only the pairs next to each occurrence:
 *       (prev,a) -= c, (prev,z) += c, (b,next) -= c, (z,next) += c.
 *     prev is read from the rewritten output, so runs like "a b a b" and
 *     "a a a" (pair (a,a)) come out exact without a recount.
 * Counts are int64 and exact, so the result is the same at any thread count.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---------------------------------------------------------------- utf-8 */

enum { INVALID_CP = 0x7FFFFFFF, L = MG_BPE_CLASS_LETTER, N = MG_BPE_CLASS_NUMBER,
       S = MG_BPE_CLASS_SPACE };

static inline int is_cont(uint8_t c) { return (c & 0xC0) == 0x80; }

/* Decodes the code point at s[i] (i < n); *len gets its byte length. Invalid
 * or truncated sequences decode as INVALID_CP of length 1. */
static inline uint32_t decode(const uint8_t* s, int64_t i, int64_t n, int* len) {
    uint8_t c = s[i];
    if (c < 0x80) { *len = 1; return c; }
    if (c >= 0xC2 && c < 0xE0 && i + 1 < n && is_cont(s[i + 1])) {
        *len = 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
    if (c >= 0xE0 && c < 0xF0 && i + 2 < n && is_cont(s[i + 1]) && is_cont(s[i + 2])) {
        uint32_t cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6)
                      | (s[i + 2] & 0x3F);
        if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) { *len = 3; return cp; }
    }
    if (c >= 0xF0 && c < 0xF5 && i + 3 < n && is_cont(s[i + 1]) && is_cont(s[i + 2])
        && is_cont(s[i + 3])) {
        uint32_t cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12)
                      | ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
        if (cp >= 0x10000 && cp < 0x110000) { *len = 4; return cp; }
    }
    *len = 1;
    return INVALID_CP;
}

static inline int klass(const uint8_t* cls, uint32_t cp) {
    return cp < (uint32_t)MG_BPE_N_CODEPOINTS ? cls[cp] : 0;
}

/* Class of the code point at i, and its length. */
static inline int class_at(const uint8_t* s, int64_t i, int64_t n, const uint8_t* cls,
                           int* len) {
    return klass(cls, decode(s, i, n, len));
}

/* End of the run of code points starting at p whose class has a bit of mask
 * (mask 0: the run of "other" code points, class 0). */
static int64_t run_of(const uint8_t* s, int64_t p, int64_t n, const uint8_t* cls, int mask) {
    while (p < n) {
        int len, c = class_at(s, p, n, cls, &len);
        if (mask ? !(c & mask) : c != 0) break;
        p += len;
    }
    return p;
}

static int64_t run_crlf(const uint8_t* s, int64_t p, int64_t n) {
    while (p < n && (s[p] == '\r' || s[p] == '\n')) p++;
    return p;
}

/* ---------------------------------------------------------------- pre-split */

/* Whitespace at i (class S): end of the run, and where its last char starts. */
static int64_t ws_run(const uint8_t* s, int64_t i, int64_t n, const uint8_t* cls,
                      int64_t* last) {
    int64_t p = i;
    *last = i;
    while (p < n) {
        int len, c = class_at(s, p, n, cls, &len);
        if (!(c & S)) break;
        *last = p;
        p += len;
    }
    return p;
}

/* '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s */
static int64_t match_gpt2(const uint8_t* s, int64_t i, int64_t n, const uint8_t* cls) {
    int l0, c0 = class_at(s, i, n, cls, &l0);
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t b = s[i + 1];
        if (b == 's' || b == 'd' || b == 'm' || b == 't') return i + 2;
        if (i + 2 < n) {
            uint8_t b2 = s[i + 2];
            if ((b == 'l' && b2 == 'l') || (b == 'v' && b2 == 'e') || (b == 'r' && b2 == 'e'))
                return i + 3;
        }
    }
    if (s[i] == ' ' && i + 1 < n) {
        int l1, c1 = class_at(s, i + 1, n, cls, &l1);
        if (c1 & L) return run_of(s, i + 1 + l1, n, cls, L);
        if (c1 & N) return run_of(s, i + 1 + l1, n, cls, N);
        if (c1 == 0) return run_of(s, i + 1 + l1, n, cls, 0);
    }
    if (c0 & L) return run_of(s, i + l0, n, cls, L);
    if (c0 & N) return run_of(s, i + l0, n, cls, N);
    if (c0 == 0) return run_of(s, i + l0, n, cls, 0);
    int64_t last, end = ws_run(s, i, n, cls, &last);
    if (end == n) return n;             /* \s++$ */
    if (last > i) return last;          /* \s+(?!\S): all but the last */
    return i + l0;                      /* \s */
}

/* '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|
 *  ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s */
static int64_t match_gpt4(const uint8_t* s, int64_t i, int64_t n, const uint8_t* cls) {
    int l0, c0 = class_at(s, i, n, cls, &l0);
    uint8_t b0 = s[i];
    if (b0 == '\'' && i + 1 < n) {
        uint8_t b = s[i + 1] | 0x20;   /* ASCII lower case; checked letters only */
        if (b == 's' || b == 'd' || b == 'm' || b == 't') return i + 2;
        /* case folding: U+017F LATIN SMALL LETTER LONG S matches (?i)s */
        if (i + 2 < n && s[i + 1] == 0xC5 && s[i + 2] == 0xBF) return i + 3;
        if (i + 2 < n) {
            uint8_t b2 = s[i + 2] | 0x20;
            if ((b == 'l' && b2 == 'l') || (b == 'v' && b2 == 'e') || (b == 'r' && b2 == 'e'))
                return i + 3;
        }
    }
    if (c0 & L) return run_of(s, i + l0, n, cls, L);
    if (!(c0 & (L | N)) && b0 != '\r' && b0 != '\n' && i + l0 < n) {
        int l1, c1 = class_at(s, i + l0, n, cls, &l1);
        if (c1 & L) return run_of(s, i + l0 + l1, n, cls, L);
    }
    if (c0 & N) {
        int64_t p = i + l0;
        for (int k = 1; k < 3 && p < n; k++) {
            int len, c = class_at(s, p, n, cls, &len);
            if (!(c & N)) break;
            p += len;
        }
        return p;
    }
    if (b0 == ' ' && i + 1 < n) {
        int l1, c1 = class_at(s, i + 1, n, cls, &l1);
        if (c1 == 0) return run_crlf(s, run_of(s, i + 1 + l1, n, cls, 0), n);
    }
    if (c0 == 0) return run_crlf(s, run_of(s, i + l0, n, cls, 0), n);
    int64_t last, end = ws_run(s, i, n, cls, &last);
    if (end == n) return n;                         /* \s++$ */
    for (int64_t p = end - 1; p >= i; p--)          /* \s*[\r\n]: the last one */
        if (s[p] == '\r' || s[p] == '\n') return p + 1;
    if (last > i) return last;                      /* \s+(?!\S) */
    return i + l0;                                  /* \s */
}

/* [^\n]*\n|[^\n]+ */
static int64_t match_lines(const uint8_t* s, int64_t i, int64_t n) {
    const uint8_t* nl = memchr(s + i, '\n', (size_t)(n - i));
    return nl ? (int64_t)(nl - s) + 1 : n;
}

static inline int64_t match_at(const uint8_t* s, int64_t i, int64_t n,
                               const uint8_t* cls, int pattern) {
    if (pattern == MG_BPE_PATTERN_GPT2) return match_gpt2(s, i, n, cls);
    if (pattern == MG_BPE_PATTERN_GPT4) return match_gpt4(s, i, n, cls);
    return match_lines(s, i, n);
}

mg_status mg_bpe_split(int64_t* ends, int64_t* n_chunks, const uint8_t* text,
                       int64_t n, const uint8_t* classes, int pattern) {
    MG_CHECK_PTR(ends);
    MG_CHECK_PTR(n_chunks);
    MG_CHECK_PTR(classes);
    MG_CHECK(n >= 0, MG_ERR_SHAPE, "n=%lld must be >= 0", (long long)n);
    MG_CHECK(n == 0 || text != NULL, MG_ERR_NULL, "text is NULL");
    MG_CHECK(pattern >= MG_BPE_PATTERN_GPT2 && pattern <= MG_BPE_PATTERN_LINES,
             MG_ERR_VALUE, "unknown pattern %d", pattern);
    int64_t k = 0;
    for (int64_t i = 0; i < n;) {
        i = match_at(text, i, n, classes, pattern);
        ends[k++] = i;
    }
    *n_chunks = k;
    return MG_OK;
}

/* ---------------------------------------------------------------- chunk counting */

/* Open-addressing table of distinct chunks, keyed by their bytes in the text
 * (stored as offset + length: no copies). */
enum { INLINE = 16 };

typedef struct {
    uint64_t hash;   /* 0 marks an empty slot */
    int64_t off;
    int64_t count;
    int32_t len;
    uint8_t inl[INLINE];  /* a copy of short chunks: comparing against the first
                             occurrence in the text would be a cache miss */
} chunk_slot;

typedef struct {
    chunk_slot* slots;
    size_t cap, used;  /* cap is a power of two */
} chunk_table;

static inline uint64_t hash_bytes(const uint8_t* p, int64_t len) {
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)len;   /* FNV-1a, then a mix */
    for (int64_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33;
    return h | 1;  /* never 0 */
}

static int chunk_table_init(chunk_table* t, size_t cap) {
    t->slots = calloc(cap, sizeof *t->slots);
    t->cap = cap;
    t->used = 0;
    return t->slots ? 0 : -1;
}

static void chunk_insert_slot(chunk_slot* slots, size_t cap, const chunk_slot* e) {
    size_t m = cap - 1, j = (size_t)e->hash & m;
    while (slots[j].hash) j = (j + 1) & m;
    slots[j] = *e;
}

static int chunk_table_grow(chunk_table* t) {
    size_t cap = t->cap * 2;
    chunk_slot* slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (size_t j = 0; j < t->cap; j++)
        if (t->slots[j].hash) chunk_insert_slot(slots, cap, &t->slots[j]);
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

/* Adds count to the chunk text[off..off+len). -1 when out of memory. */
static int chunk_add(chunk_table* t, const uint8_t* text, uint64_t h, int64_t off,
                     int32_t len, int64_t count) {
    size_t m = t->cap - 1, j = (size_t)h & m;
    for (;; j = (j + 1) & m) {
        chunk_slot* e = &t->slots[j];
        if (!e->hash) break;
        if (e->hash == h && e->len == len
            && memcmp(len <= INLINE ? e->inl : text + e->off, text + off, (size_t)len) == 0) {
            e->count += count;
            return 0;
        }
    }
    if ((t->used + 1) * 2 > t->cap) {
        if (chunk_table_grow(t)) return -1;
        m = t->cap - 1;
        for (j = (size_t)h & m; t->slots[j].hash; j = (j + 1) & m) {}
    }
    chunk_slot* e = &t->slots[j];
    e->hash = h;
    e->off = off;
    e->count = count;
    e->len = len;
    if (len <= INLINE) memcpy(e->inl, text + off, (size_t)len);
    t->used++;
    return 0;
}

/* A document longer than 2 BLOCKs is cut into blocks so that threads can
 * share it. A cut goes only at "x\nA": x a printable ASCII non-space, A a
 * letter. No match of any pattern spans such a point, and the '\n' is a
 * chunk of its own (gpt2) or ends one (gpt4, lines) whether or not the text
 * ends after it (\s++$), so the chunks are exactly those of the uncut text. */
enum { BLOCK = 1 << 20 };

static int64_t next_cut(const uint8_t* s, int64_t from, int64_t end, const uint8_t* cls) {
    for (int64_t p = from; p < end; p++) {
        if (s[p - 1] != '\n' || s[p - 2] <= ' ' || s[p - 2] > '~') continue;
        int len;
        if (class_at(s, p, end, cls, &len) & L) return p;
    }
    return end;
}

/* ---------------------------------------------------------------- merge learning */

typedef struct { int32_t* w; int32_t n, cap; } word_list;
typedef struct { int64_t count; int32_t pair; } heap_entry;

typedef struct {
    /* words: symbols of word w are sym[wstart[w] .. wstart[w] + wlen[w]) */
    int32_t* sym;
    int64_t* wstart;
    int32_t* wlen;
    int64_t* wcount;
    int64_t n_words;
    /* pairs, indexed by pair id */
    uint64_t* pkey;       /* (left << 32) | right */
    int64_t* pcount;
    word_list* pwhere;
    int32_t* pstamp;      /* merge step that last put the pair in `touched` */
    uint8_t* pbanned;
    int32_t n_pairs, cap_pairs;
    /* pair key -> pair id, open addressing; empty slots hold -1 */
    uint64_t* mkey;
    int32_t* mval;
    size_t mcap;
    /* heap */
    heap_entry* heap;
    int64_t heap_n, heap_cap;
    /* token bytes, for the duplicate-bytes rule */
    uint8_t* tbytes;
    int64_t* toff;
    int32_t* tlen;
    int64_t tbytes_n, tbytes_cap;
    int32_t n_tokens;
    uint64_t* tset_hash;  /* set of token byte strings: hash, 0 = empty */
    int32_t* tset_tok;
    size_t tset_cap;
    /* pairs whose count rose during the current merge */
    int32_t* touched;
    int32_t n_touched, cap_touched;
} trainer;

static void trainer_free(trainer* t) {
    if (t->pwhere)
        for (int32_t p = 0; p < t->n_pairs; p++) free(t->pwhere[p].w);
    free(t->sym); free(t->wstart); free(t->wlen); free(t->wcount);
    free(t->pkey); free(t->pcount); free(t->pwhere); free(t->pstamp); free(t->pbanned);
    free(t->mkey); free(t->mval); free(t->heap);
    free(t->tbytes); free(t->toff); free(t->tlen); free(t->tset_hash); free(t->tset_tok);
    free(t->touched);
    memset(t, 0, sizeof *t);
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int pair_map_rehash(trainer* t, size_t cap) {
    uint64_t* keys = malloc(cap * sizeof *keys);
    int32_t* vals = malloc(cap * sizeof *vals);
    if (!keys || !vals) { free(keys); free(vals); return -1; }
    memset(vals, 0xFF, cap * sizeof *vals);
    for (size_t j = 0; j < t->mcap; j++) {
        if (t->mval[j] < 0) continue;
        size_t k = (size_t)mix64(t->mkey[j]) & (cap - 1);
        while (vals[k] >= 0) k = (k + 1) & (cap - 1);
        keys[k] = t->mkey[j];
        vals[k] = t->mval[j];
    }
    free(t->mkey); free(t->mval);
    t->mkey = keys; t->mval = vals; t->mcap = cap;
    return 0;
}

/* realloc that keeps the old block on failure; GROW returns -1 from the caller. */
static int grow_array(void* pptr, size_t n, size_t elem) {
    void** pp = (void**)pptr;
    void* q = realloc(*pp, n * elem);
    if (!q) return -1;
    *pp = q;
    return 0;
}
#define GROW(ptr, n) do { if (grow_array(&(ptr), (size_t)(n), sizeof *(ptr))) return -1; } while (0)

/* Id of pair (a,b), created with count 0 if new; -1 when out of memory. */
static int32_t pair_get(trainer* t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t m = t->mcap - 1, j = (size_t)mix64(key) & m;
    for (; t->mval[j] >= 0; j = (j + 1) & m)
        if (t->mkey[j] == key) return t->mval[j];
    if (t->n_pairs == t->cap_pairs) {
        int32_t cap = t->cap_pairs * 2;
        GROW(t->pkey, cap); GROW(t->pcount, cap); GROW(t->pwhere, cap);
        GROW(t->pstamp, cap); GROW(t->pbanned, cap);
        t->cap_pairs = cap;
    }
    int32_t p = t->n_pairs++;
    t->pkey[p] = key;
    t->pcount[p] = 0;
    t->pwhere[p] = (word_list){NULL, 0, 0};
    t->pstamp[p] = -1;
    t->pbanned[p] = 0;
    t->mkey[j] = key;
    t->mval[j] = p;
    if ((size_t)t->n_pairs * 2 > t->mcap && pair_map_rehash(t, t->mcap * 2)) return -1;
    return p;
}

static int where_add(word_list* l, int32_t w) {
    if (l->n && l->w[l->n - 1] == w) return 0;
    if (l->n == l->cap) {
        int32_t cap = l->cap ? l->cap * 2 : 4;
        GROW(l->w, cap);
        l->cap = cap;
    }
    l->w[l->n++] = w;
    return 0;
}

/* Heap order: higher count first, then smaller (left, right). */
static inline int heap_before(const trainer* t, heap_entry x, heap_entry y) {
    if (x.count != y.count) return x.count > y.count;
    return t->pkey[x.pair] < t->pkey[y.pair];
}

static void sift_down(trainer* t, int64_t i) {
    heap_entry* h = t->heap;
    int64_t n = t->heap_n;
    heap_entry e = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_before(t, h[c + 1], h[c])) c++;
        if (!heap_before(t, h[c], e)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = e;
}

static int heap_push(trainer* t, int64_t count, int32_t pair) {
    if (t->heap_n == t->heap_cap) {
        int64_t cap = t->heap_cap * 2;
        GROW(t->heap, cap);
        t->heap_cap = cap;
    }
    heap_entry e = {count, pair};
    int64_t i = t->heap_n++;
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!heap_before(t, e, t->heap[parent])) break;
        t->heap[i] = t->heap[parent];
        i = parent;
    }
    t->heap[i] = e;
    return 0;
}

static void heap_pop(trainer* t) {
    t->heap[0] = t->heap[--t->heap_n];
    if (t->heap_n) sift_down(t, 0);
}

/* Token byte strings: a set, to refuse a merge that would give one byte
 * string two ids (tiktoken's ranks are keyed by bytes). */
static int tset_find(const trainer* t, const uint8_t* b, int32_t len, uint64_t h) {
    size_t m = t->tset_cap - 1;
    for (size_t j = (size_t)h & m; t->tset_hash[j]; j = (j + 1) & m) {
        int32_t tok = t->tset_tok[j];
        if (t->tset_hash[j] == h && t->tlen[tok] == len
            && memcmp(t->tbytes + t->toff[tok], b, (size_t)len) == 0)
            return 1;
    }
    return 0;
}

static void tset_put(uint64_t* hs, int32_t* toks, size_t cap, uint64_t h, int32_t tok) {
    size_t j = (size_t)h & (cap - 1);
    while (hs[j]) j = (j + 1) & (cap - 1);
    hs[j] = h;
    toks[j] = tok;
}

/* Appends token a+b (its bytes) as the next token id. */
static int token_add(trainer* t, int32_t a, int32_t b) {
    int32_t len = t->tlen[a] + t->tlen[b];
    if (t->tbytes_n + len > t->tbytes_cap) {
        int64_t cap = (t->tbytes_cap + len) * 2;
        GROW(t->tbytes, cap);
        t->tbytes_cap = cap;
    }
    int32_t z = t->n_tokens++;
    uint8_t* dst = t->tbytes + t->tbytes_n;
    memcpy(dst, t->tbytes + t->toff[a], (size_t)t->tlen[a]);
    memcpy(dst + t->tlen[a], t->tbytes + t->toff[b], (size_t)t->tlen[b]);
    t->toff[z] = t->tbytes_n;
    t->tlen[z] = len;
    t->tbytes_n += len;
    tset_put(t->tset_hash, t->tset_tok, t->tset_cap, hash_bytes(dst, len), z);
    return 0;
}

static int trainer_tokens_init(trainer* t, int32_t n_merges) {
    int32_t n = 256 + n_merges;
    t->toff = malloc((size_t)n * sizeof *t->toff);
    t->tlen = malloc((size_t)n * sizeof *t->tlen);
    t->tbytes_cap = 4096;
    t->tbytes = malloc((size_t)t->tbytes_cap);
    t->tset_cap = 1024;
    while (t->tset_cap < (size_t)n * 2) t->tset_cap *= 2;
    t->tset_hash = calloc(t->tset_cap, sizeof *t->tset_hash);
    t->tset_tok = malloc(t->tset_cap * sizeof *t->tset_tok);
    if (!t->toff || !t->tlen || !t->tbytes || !t->tset_hash || !t->tset_tok) return -1;
    for (int32_t i = 0; i < 256; i++) {
        t->tbytes[i] = (uint8_t)i;
        t->toff[i] = i;
        t->tlen[i] = 1;
        tset_put(t->tset_hash, t->tset_tok, t->tset_cap, hash_bytes(t->tbytes + i, 1), i);
    }
    t->tbytes_n = 256;
    t->n_tokens = 256;
    return 0;
}

/* Adds delta to pair (a,b). If it is a pair with the new token (grow != 0),
 * records word w in its where-list and marks it touched for the heap. */
static int pair_delta(trainer* t, int32_t a, int32_t b, int64_t delta, int32_t w,
                      int grow, int32_t step) {
    int32_t p = pair_get(t, a, b);
    if (p < 0) return -1;
    t->pcount[p] += delta;
    if (!grow) return 0;
    if (where_add(&t->pwhere[p], w)) return -1;
    if (t->pstamp[p] != step) {
        t->pstamp[p] = step;
        if (t->n_touched == t->cap_touched) {
            int32_t cap = t->cap_touched * 2;
            GROW(t->touched, cap);
            t->cap_touched = cap;
        }
        t->touched[t->n_touched++] = p;
    }
    return 0;
}

/* Initial pair counts over all words, then the heap. */
static int trainer_count_pairs(trainer* t) {
    t->cap_pairs = 1024;
    t->pkey = malloc((size_t)t->cap_pairs * sizeof *t->pkey);
    t->pcount = malloc((size_t)t->cap_pairs * sizeof *t->pcount);
    t->pwhere = malloc((size_t)t->cap_pairs * sizeof *t->pwhere);
    t->pstamp = malloc((size_t)t->cap_pairs * sizeof *t->pstamp);
    t->pbanned = malloc((size_t)t->cap_pairs);
    t->mcap = 4096;
    t->mkey = malloc(t->mcap * sizeof *t->mkey);
    t->mval = malloc(t->mcap * sizeof *t->mval);
    t->cap_touched = 1024;
    t->touched = malloc((size_t)t->cap_touched * sizeof *t->touched);
    if (!t->pkey || !t->pcount || !t->pwhere || !t->pstamp || !t->pbanned || !t->mkey
        || !t->mval || !t->touched)
        return -1;
    memset(t->mval, 0xFF, t->mcap * sizeof *t->mval);
    for (int64_t w = 0; w < t->n_words; w++) {
        const int32_t* s = t->sym + t->wstart[w];
        for (int32_t i = 0; i + 1 < t->wlen[w]; i++) {
            int32_t p = pair_get(t, s[i], s[i + 1]);
            if (p < 0) return -1;
            t->pcount[p] += t->wcount[w];
            if (where_add(&t->pwhere[p], (int32_t)w)) return -1;
        }
    }
    t->heap_cap = t->n_pairs > 16 ? t->n_pairs : 16;
    t->heap = malloc((size_t)t->heap_cap * sizeof *t->heap);
    if (!t->heap) return -1;
    for (int32_t p = 0; p < t->n_pairs; p++)
        if (t->pcount[p] > 0) t->heap[t->heap_n++] = (heap_entry){t->pcount[p], p};
    for (int64_t i = t->heap_n / 2 - 1; i >= 0; i--) sift_down(t, i);
    return 0;
}

/* Rewrites every word holding pair p = (a,b) with the new token z. */
static int apply_merge(trainer* t, int32_t p, int32_t a, int32_t b, int32_t z, int32_t step) {
    word_list where = t->pwhere[p];  /* p's list is not appended to below */
    t->n_touched = 0;
    for (int32_t k = 0; k < where.n; k++) {                 /* hot loop */
        int32_t w = where.w[k];
        int32_t* s = t->sym + t->wstart[w];
        int32_t n = t->wlen[w], i = 0, j = 0;
        int64_t c = t->wcount[w];
        while (i + 1 < n && !(s[i] == a && s[i + 1] == b)) i++;
        if (i + 1 >= n) continue;                           /* stale entry */
        j = i;
        while (i < n) {
            if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                if (j > 0) {
                    if (pair_delta(t, s[j - 1], a, -c, w, 0, step)) return -1;
                    if (pair_delta(t, s[j - 1], z, c, w, 1, step)) return -1;
                }
                if (i + 2 < n) {
                    if (pair_delta(t, b, s[i + 2], -c, w, 0, step)) return -1;
                    if (pair_delta(t, z, s[i + 2], c, w, 1, step)) return -1;
                }
                t->pcount[p] -= c;
                s[j++] = z;
                i += 2;
            } else {
                s[j++] = s[i++];
            }
        }
        t->wlen[w] = j;
    }
    free(t->pwhere[p].w);
    t->pwhere[p] = (word_list){NULL, 0, 0};
    for (int32_t k = 0; k < t->n_touched; k++) {
        int32_t q = t->touched[k];
        if (t->pcount[q] > 0 && heap_push(t, t->pcount[q], q)) return -1;
    }
    return 0;
}

/* 1 if the bytes of a then b already form a token, 0 if not, -1 when out of memory. */
static int pair_is_token(const trainer* t, int32_t a, int32_t b) {
    int32_t len = t->tlen[a] + t->tlen[b];
    uint8_t tmp[256];
    uint8_t* cat = len <= (int32_t)sizeof tmp ? tmp : malloc((size_t)len);
    if (!cat) return -1;
    memcpy(cat, t->tbytes + t->toff[a], (size_t)t->tlen[a]);
    memcpy(cat + t->tlen[a], t->tbytes + t->toff[b], (size_t)t->tlen[b]);
    int found = tset_find(t, cat, len, hash_bytes(cat, len));
    if (cat != tmp) free(cat);
    return found;
}

/* Merge m: pair p = (a, b) becomes token 256 + m in the vocabulary, in
 * merges, and in every word that holds it. */
static int make_merge(trainer* t, int32_t* merges, int32_t m, int32_t p, int32_t a, int32_t b) {
    if (token_add(t, a, b)) return -1;
    merges[2 * (int64_t)m] = a;
    merges[2 * (int64_t)m + 1] = b;
    return apply_merge(t, p, a, b, 256 + m, m);
}

/* The merge loop: first replays the n_init given merges, then learns the
 * rest. Returns -1 when out of memory, 1 when a given merge repeats the bytes
 * of an earlier token (its index in *n_done). */
static int trainer_run(trainer* t, int32_t* merges, int32_t* n_done, int32_t n_init,
                       int32_t n_merges, int64_t min_frequency) {
    int32_t m = 0;
    if (trainer_tokens_init(t, n_merges)) return -1;
    for (; m < n_init; m++) {
        int32_t a = merges[2 * (int64_t)m], b = merges[2 * (int64_t)m + 1];
        int dup = pair_is_token(t, a, b);
        if (dup < 0) return -1;
        if (dup) { *n_done = m; return 1; }
        int32_t p = pair_get(t, a, b);
        if (p < 0 || make_merge(t, merges, m, p, a, b)) return -1;
    }
    while (m < n_merges && t->heap_n > 0) {
        heap_entry top = t->heap[0];
        int32_t p = top.pair;
        if (t->pbanned[p] || top.count != t->pcount[p]) {   /* stale entry */
            heap_pop(t);
            if (!t->pbanned[p] && t->pcount[p] > 0 && heap_push(t, t->pcount[p], p))
                return -1;
            continue;
        }
        if (top.count < min_frequency || top.count <= 0) break;
        int32_t a = (int32_t)(t->pkey[p] >> 32), b = (int32_t)(t->pkey[p] & 0xFFFFFFFFu);
        int dup = pair_is_token(t, a, b);
        if (dup < 0) return -1;
        heap_pop(t);
        if (dup) { t->pbanned[p] = 1; continue; }
        if (make_merge(t, merges, m, p, a, b)) return -1;
        m++;
    }
    *n_done = m;
    return 0;
}

/* Words from chunks: only chunks of two or more bytes can hold a pair. */
static int trainer_words(trainer* t, const uint8_t* base, const int64_t* offs,
                         const int32_t* lens, const int64_t* counts, int64_t n_chunks) {
    int64_t n_words = 0, n_sym = 0;
    for (int64_t k = 0; k < n_chunks; k++)
        if (lens[k] >= 2 && counts[k] > 0) { n_words++; n_sym += lens[k]; }
    MG_CHECK(n_words < INT32_MAX, MG_ERR_SHAPE, "%lld distinct chunks: too many",
             (long long)n_words);
    t->sym = malloc((size_t)(n_sym ? n_sym : 1) * sizeof *t->sym);
    t->wstart = malloc((size_t)(n_words ? n_words : 1) * sizeof *t->wstart);
    t->wlen = malloc((size_t)(n_words ? n_words : 1) * sizeof *t->wlen);
    t->wcount = malloc((size_t)(n_words ? n_words : 1) * sizeof *t->wcount);
    if (!t->sym || !t->wstart || !t->wlen || !t->wcount) return -1;
    int64_t w = 0, pos = 0;
    for (int64_t k = 0; k < n_chunks; k++) {
        if (lens[k] < 2 || counts[k] <= 0) continue;
        t->wstart[w] = pos;
        t->wlen[w] = lens[k];
        t->wcount[w] = counts[k];
        for (int32_t i = 0; i < lens[k]; i++) t->sym[pos + i] = base[offs[k] + i];
        pos += lens[k];
        w++;
    }
    t->n_words = n_words;
    return 0;
}

static mg_status train_common(trainer* t, int32_t* merges, int32_t* n_done, int32_t n_init,
                              int32_t n_merges, int64_t min_frequency) {
    int rc = trainer_count_pairs(t);
    if (!rc) rc = trainer_run(t, merges, n_done, n_init, n_merges, min_frequency);
    trainer_free(t);
    if (rc > 0)
        return mg_fail(MG_ERR_VALUE, "mg_bpe_train", "given merge %d makes a token that already "
                       "exists (its bytes repeat an earlier token's)", *n_done);
    if (rc < 0)
        return mg_fail(MG_ERR_NOMEM, "mg_bpe_train", "out of memory while learning merges");
    return MG_OK;
}

/* Given merges must name tokens that exist when they are made. */
#define CHECK_TRAIN_ARGS() do { \
    MG_CHECK_PTR(merges); MG_CHECK_PTR(n_done); \
    MG_CHECK(n_merges >= 0 && n_merges <= MG_BPE_MAX_VOCAB - 256, MG_ERR_VALUE, \
             "n_merges=%d must be in [0, %d]", n_merges, MG_BPE_MAX_VOCAB - 256); \
    MG_CHECK(n_init >= 0 && n_init <= n_merges, MG_ERR_VALUE, \
             "n_init=%d must be in [0, n_merges=%d]", n_init, n_merges); \
    for (int32_t i_ = 0; i_ < 2 * n_init; i_++) \
        MG_CHECK(merges[i_] >= 0 && merges[i_] < 256 + i_ / 2, MG_ERR_VALUE, \
                 "given merge %d names token %d, which does not exist yet", i_ / 2, merges[i_]); \
    } while (0)

mg_status mg_bpe_train_chunks(int32_t* merges, int32_t* n_done,
                              const uint8_t* chunks, const int64_t* offsets,
                              const int64_t* counts, int64_t n_chunks,
                              int32_t n_init, int32_t n_merges, int64_t min_frequency) {
    CHECK_TRAIN_ARGS();
    MG_CHECK_PTR(offsets);
    MG_CHECK(n_chunks >= 0, MG_ERR_SHAPE, "n_chunks=%lld must be >= 0", (long long)n_chunks);
    MG_CHECK(n_chunks == 0 || counts != NULL, MG_ERR_NULL, "counts is NULL");
    MG_CHECK(n_chunks == 0 || offsets[n_chunks] == offsets[0] || chunks != NULL,
             MG_ERR_NULL, "chunks is NULL");
    for (int64_t k = 0; k < n_chunks; k++) {
        int64_t len = offsets[k + 1] - offsets[k];
        MG_CHECK(len >= 0 && len < INT32_MAX, MG_ERR_SHAPE,
                 "chunk %lld has length %lld", (long long)k, (long long)len);
        MG_CHECK(counts[k] >= 0, MG_ERR_VALUE, "chunk %lld has count %lld < 0",
                 (long long)k, (long long)counts[k]);
    }
    *n_done = 0;
    trainer t;
    memset(&t, 0, sizeof t);
    int32_t* lens = malloc((size_t)(n_chunks > 0 ? n_chunks : 1) * sizeof *lens);
    if (!lens) return mg_fail(MG_ERR_NOMEM, __func__, "out of memory");
    for (int64_t k = 0; k < n_chunks; k++) lens[k] = (int32_t)(offsets[k + 1] - offsets[k]);
    int rc = trainer_words(&t, chunks, offsets, lens, counts, n_chunks);
    free(lens);
    if (rc) {
        trainer_free(&t);
        return rc < 0 ? mg_fail(MG_ERR_NOMEM, __func__, "out of memory") : (mg_status)rc;
    }
    return train_common(&t, merges, n_done, n_init, n_merges, min_frequency);
}

/* Splits and counts the segments [seg[2i], seg[2i+1]) on all threads: one
 * chunk table per thread, merged into table 0 in thread order. */
static mg_status count_segments(chunk_table* out, const uint8_t* text, const int64_t* seg,
                                int64_t n_seg, const uint8_t* cls, int pattern) {
    int nt = omp_get_max_threads();
    if (nt < 1) nt = 1;
    if (nt > n_seg) nt = n_seg > 0 ? (int)n_seg : 1;
    chunk_table* tables = calloc((size_t)nt, sizeof *tables);
    if (!tables) return mg_fail(MG_ERR_NOMEM, "mg_bpe_train_text", "out of memory");
    int oom = 0;
    for (int k = 0; k < nt; k++)
        if (chunk_table_init(&tables[k], 1 << 16)) oom = 1;
    if (!oom) {
        /* Each thread works on a private copy of its table header: adjacent
         * headers in `tables` would share a cache line on every insert. */
        #pragma omp parallel num_threads(nt) reduction(|:oom)
        {
            chunk_table tab = tables[omp_get_thread_num()];
            #pragma omp for schedule(dynamic, 1)
            for (int64_t g = 0; g < n_seg; g++) {
                int64_t i = seg[2 * g], end = seg[2 * g + 1];
                while (i < end && !oom) {                    /* hot loop */
                    int64_t j = match_at(text, i, end, cls, pattern);
                    if (j - i > INT32_MAX) { oom = 2; break; }  /* a 2 GiB line ("none") */
                    if (chunk_add(&tab, text, hash_bytes(text + i, j - i), i, (int32_t)(j - i), 1))
                        oom = 1;
                    i = j;
                }
            }
            tables[omp_get_thread_num()] = tab;
        }
    }
    for (int k = 1; k < nt && !oom; k++) {
        for (size_t j = 0; j < tables[k].cap && !oom; j++) {
            const chunk_slot* e = &tables[k].slots[j];
            if (e->hash && chunk_add(&tables[0], text, e->hash, e->off, e->len, e->count))
                oom = 1;
        }
    }
    for (int k = 1; k < nt; k++) free(tables[k].slots);
    *out = tables[0];
    free(tables);
    if (oom) {
        free(out->slots);
        out->slots = NULL;
        if (oom & 2)
            return mg_fail(MG_ERR_SHAPE, "mg_bpe_train_text",
                           "a pre-split chunk is longer than 2 GiB: use a splitting pattern");
        return mg_fail(MG_ERR_NOMEM, "mg_bpe_train_text", "out of memory while counting chunks");
    }
    return MG_OK;
}

mg_status mg_bpe_train_text(int32_t* merges, int32_t* n_done, int64_t* n_unique,
                            const uint8_t* text, const int64_t* doc_offsets,
                            int64_t n_docs, const uint8_t* classes, int pattern,
                            int32_t n_init, int32_t n_merges, int64_t min_frequency) {
    CHECK_TRAIN_ARGS();
    MG_CHECK_PTR(n_unique);
    MG_CHECK_PTR(doc_offsets);
    MG_CHECK_PTR(classes);
    MG_CHECK(n_docs >= 0, MG_ERR_SHAPE, "n_docs=%lld must be >= 0", (long long)n_docs);
    MG_CHECK(pattern >= MG_BPE_PATTERN_GPT2 && pattern <= MG_BPE_PATTERN_LINES,
             MG_ERR_VALUE, "unknown pattern %d", pattern);
    for (int64_t d = 0; d < n_docs; d++)
        MG_CHECK(doc_offsets[d + 1] >= doc_offsets[d], MG_ERR_SHAPE,
                 "doc_offsets must not decrease (document %lld)", (long long)d);
    MG_CHECK(n_docs == 0 || doc_offsets[n_docs] == doc_offsets[0] || text != NULL,
             MG_ERR_NULL, "text is NULL");
    *n_done = 0;
    *n_unique = 0;

    /* Segments: documents, long ones cut at safe points (see next_cut). */
    int64_t n_seg = 0, cap_seg = n_docs + 16;
    int64_t* seg = malloc((size_t)cap_seg * 2 * sizeof *seg);
    if (!seg) return mg_fail(MG_ERR_NOMEM, __func__, "out of memory");
    for (int64_t d = 0; d < n_docs; d++) {
        int64_t a = doc_offsets[d], end = doc_offsets[d + 1];
        while (a < end) {
            int64_t b = end - a > 2 * (int64_t)BLOCK ? next_cut(text, a + BLOCK, end, classes) : end;
            if (n_seg == cap_seg) {
                cap_seg *= 2;
                int64_t* q = realloc(seg, (size_t)cap_seg * 2 * sizeof *seg);
                if (!q) { free(seg); return mg_fail(MG_ERR_NOMEM, __func__, "out of memory"); }
                seg = q;
            }
            seg[2 * n_seg] = a;
            seg[2 * n_seg + 1] = b;
            n_seg++;
            a = b;
        }
    }
    chunk_table tab = {NULL, 0, 0};
    mg_status st = count_segments(&tab, text, seg, n_seg, classes, pattern);
    free(seg);
    if (st != MG_OK) return st;

    /* Distinct chunks, in table order (the result does not depend on it). */
    int64_t n_chunks = (int64_t)tab.used;
    int64_t* offs = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *offs);
    int64_t* counts = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *counts);
    int32_t* lens = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *lens);
    if (!offs || !counts || !lens) {
        free(offs); free(counts); free(lens); free(tab.slots);
        return mg_fail(MG_ERR_NOMEM, __func__, "out of memory");
    }
    int64_t k = 0;
    for (size_t j = 0; j < tab.cap; j++) {
        if (!tab.slots[j].hash) continue;
        offs[k] = tab.slots[j].off;
        lens[k] = tab.slots[j].len;
        counts[k] = tab.slots[j].count;
        k++;
    }
    free(tab.slots);
    *n_unique = n_chunks;
    trainer t;
    memset(&t, 0, sizeof t);
    int rc = trainer_words(&t, text, offs, lens, counts, n_chunks);
    free(offs); free(counts); free(lens);
    if (rc) {
        trainer_free(&t);
        return rc < 0 ? mg_fail(MG_ERR_NOMEM, __func__, "out of memory") : (mg_status)rc;
    }
    return train_common(&t, merges, n_done, n_init, n_merges, min_frequency);
}
