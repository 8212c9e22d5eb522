"""Decoding a trained encoder-decoder: greedy and beam search, batched.

Both encode each source once and then extend every hypothesis one token a
step through the decoder's KV cache (Seq2Seq.step_logits: the self-
attention keys and values so far per hypothesis, the cross-attention keys
and values computed once per source and shared by its beams).
`cached=False` recomputes the whole prefix every step instead
(Seq2Seq.forward), the reference the cache is tested against. A source
leaves the batch as soon as it is done (its rows are dropped from the
cache), and decode() batches the sources in order of length.

Lengths: a hypothesis is the tokens after <s> up to and including </s>; its
length |Y| counts </s>. A source of n tokens gets at most
max_len(n) = min(len_a * n + len_b, the model's target positions) of them;
at the last one only </s> may follow (the hypothesis is closed there).
<pad> and <s> are never generated.

Beam search keeps `beam` open hypotheses per source. Each step scores every
one-token extension (sum of log-probabilities), walks the 2 x beam best in
order: an extension by </s> is a finished hypothesis, scored by its length-
normalised score, the others fill the beams. Normalisation:
    gnmt   score / ((5 + |Y|) / 6)^alpha      (Wu et al., 2016; alpha 0: none)
    hf     score / |Y|^alpha                  (Hugging Face generate)
A source is done when no open hypothesis can still beat its best finished
one: log-probabilities only lower a score, and the largest normaliser is
that of max_len, so an open hypothesis of score s can reach at most
s / norm(max_len). With a beam wide enough to keep every prefix the result
is the exhaustive search's best (tests/seq2seq/test_seq2seq_decode.py).

Cost: a step's output is the logits z (rows, V), float32. Greedy takes
their argmax, which is the log-probabilities' (the softmax is monotone).
Beam search needs log p = (z - m) - L with m the row maximum and L =
log(sum exp(z - m)); m and L come from one pass of the C core over the
logits (ops.logits_stats: float32 exponentials summed in float64, L in
float64), and (z - m) - L and the hypothesis scores are float64, but
only for the few entries that can rank: within a row the extensions rank as
the logits do, so a source's 2 x beam best lie among the 2 x beam largest
logits of each of its rows. A cheap lower bound of a row's (2 x beam)-th
largest logit (the maxima of disjoint sets of 64 entries, from the same
pass; _threshold) keeps a few more than that per row, and sorting the
survivors by score, then by index, gives what a stable sort of all
beam x V scores would. The step's weights are packed once per decode call
(Seq2Seq.pack: the product skips re-packing them at every step).

An Ensemble of models with one target vocabulary decodes as one model
whose next-token logits are the mean of the models' log-probabilities (a
product of experts, renormalised: Marian's ensembling); greedy and beam
search then treat them as one model's logits. Each model keeps its own
cache; the sources are encoded once per model.

A right-to-left model (cfg.reverse_target: trained on reversed targets)
decodes as any other; decode() hands its outputs back in reading order.
rerank() pools the beam's best outputs of a model and of other models,
scores each by all of them (rescore(): teacher-forced log-probabilities,
each model in its own direction) and keeps the best mix: a right-to-left
model predicts each token from the ones after it, a view of the output
that a left-to-right model lacks, and errs on other outputs.

search="hf" runs Hugging Face generate()'s beam search instead (its
defaults: early_stopping False, forced </s> at the last position), so an
imported Marian model gives transformers' outputs token for token: of the
2 x beam best extensions only those ranked within the first `beam` may
finish; at most `beam` finished hypotheses are kept, scored by
score / |Y|^alpha; at the last position </s> is forced with log-probability
0 (its ForcedEOSTokenLogitsProcessor); a source stops once all `beam`
finished slots are full and the best open hypothesis, normalised by its
current length, cannot beat the worst of them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mingpt_c import ops
from mingpt_c.errors import ShapeError
from mingpt_c.nn.loss import log_softmax
from mingpt_c.seq2seq.data import pad_sources, pad_targets
from mingpt_c.seq2seq.model import Seq2Seq


@dataclass
class DecodeConfig:
    beam: int = 1                  # 1: greedy
    length_penalty: float = 1.0    # alpha of the length normalisation (beam search)
    norm: str = "gnmt"             # gnmt | hf
    len_a: float = 2.0             # max output length = len_a * source length + len_b
    len_b: int = 10
    batch_size: int = 64           # sources per batch
    search: str = "exact"          # beam search's rules: exact (ours) | hf (transformers' generate)
    rerank_weight: float = 0.5     # with re-scoring models: their share of a hypothesis's score (rerank)


def length_norm(length: np.ndarray | int, alpha: float, kind: str = "gnmt"):
    """The normaliser a hypothesis of `length` tokens divides its score by."""
    length = np.asarray(length, np.float64)
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "hf":
        return length ** alpha
    raise ShapeError(f"length normalisation {kind!r}: use gnmt or hf")


def max_lengths(model: Seq2Seq | Ensemble, src_lens: np.ndarray, dc: DecodeConfig) -> np.ndarray:
    cap = model.cfg.max_tgt_len
    return np.clip((dc.len_a * np.asarray(src_lens) + dc.len_b).astype(np.int64), 1, cap)


class Ensemble:
    """Models decoded together (see the module's docstring): they must
    share their vocabularies' sizes and special ids (the caller checks the
    vocabularies themselves); the longest source and output are the
    shortest of their maxima. Stands where decoding takes a model."""

    def __init__(self, models: list[Seq2Seq]):
        if not models:
            raise ShapeError("an ensemble needs at least one model")
        first = models[0].cfg
        for m in models[1:]:
            c = m.cfg
            if (c.src_vocab_size, c.tgt_vocab_size, c.pad_id, c.bos_id, c.eos_id, c.src_eos) != \
                    (first.src_vocab_size, first.tgt_vocab_size, first.pad_id, first.bos_id, first.eos_id,
                     first.src_eos):
                raise ShapeError("the models of an ensemble must share their vocabularies and special tokens: "
                                 f"{c.src_vocab_size}/{c.tgt_vocab_size} source/target tokens against "
                                 f"{first.src_vocab_size}/{first.tgt_vocab_size}")
            if c.reverse_target != first.reverse_target:
                raise ShapeError("the models of an ensemble must write in one direction: a right-to-left "
                                 "model (--reverse-target) can re-score the others' outputs (--rerank)")
        self.models = models
        self.cfg = replace(first, max_src_len=min(m.cfg.max_src_len for m in models),
                           max_tgt_len=min(m.cfg.max_tgt_len for m in models))

    def on_cpu(self) -> "Ensemble":
        return Ensemble([m.on_cpu() for m in self.models])

    def pack(self) -> list:
        return [m.pack() for m in self.models]


class _Scorer:
    """Next-token logits of the rows of hypotheses (row n * beam + k: source
    n's hypothesis k), through the KV cache (cached) or by re-running the
    whole prefix (not cached)."""

    def __init__(self, model: Seq2Seq, src: np.ndarray, mask: np.ndarray, beam: int, max_len: int,
                 cached: bool, packed=None):
        self.model, self.cached = model, cached
        if cached:
            self.cache = model.start(src, mask, max_len, beam, packed)
        else:
            rows = np.repeat(np.arange(len(src)), beam)
            self.src, self.mask = src[rows], mask[rows]

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (R, t+1), <s> first -> the logits (R, V) of token t+1, float32."""
        R, t = tokens.shape[0], tokens.shape[1] - 1
        if self.cached:
            return self.model.step_logits(self.cache, tokens[:, -1], t)
        return np.ascontiguousarray(self.model.forward(self.src, self.mask, tokens).reshape(R, t + 1, -1)[:, -1])

    def next(self, tokens: np.ndarray, n: int = 0):
        """tokens (R, t+1), <s> first -> (z, m, L, sets): the logits z (R, V)
        of token t+1, float32, with <pad> and <s> set to -inf (a buffer the
        caller may change). For a search wanting the n best of each row
        (n > 0), also the row maxima m and log-sums L of the logits before
        the masking (log-probability (z - m) - L) and _threshold's set
        maxima after it (None where the rows are all singletons)."""
        z = self.logits(tokens)
        masked = (self.model.cfg.pad_id, self.model.cfg.bos_id)
        if not n:
            z[:, masked] = -np.inf
            return z, None, None, None
        return (z, *_normalise(z, n, masked))

    def reorder(self, rows: np.ndarray) -> None:
        """Row r continues row rows[r] (fewer rows: finished sources left)."""
        if self.cached:
            self.cache.reorder(rows)
        else:
            self.src, self.mask = self.src[rows], self.mask[rows]


class _EnsembleScorer(_Scorer):
    """An Ensemble's rows: one _Scorer per model; the logits are the mean of
    their log-probabilities (float64, then float32 as a model's logits)."""

    def __init__(self, ensemble: Ensemble, src: np.ndarray, mask: np.ndarray, beam: int, max_len: int,
                 cached: bool, packed=None):
        self.model = ensemble
        self.parts = [_Scorer(m, src, mask, beam, max_len, cached, p)
                      for m, p in zip(ensemble.models, packed or [None] * len(ensemble.models))]

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        total = sum(log_softmax(part.logits(tokens)) for part in self.parts)
        return (total / len(self.parts)).astype(np.float32)

    def reorder(self, rows: np.ndarray) -> None:
        for part in self.parts:
            part.reorder(rows)


def _scorer(model, *args) -> _Scorer:
    return (_EnsembleScorer if isinstance(model, Ensemble) else _Scorer)(model, *args)


def _packed(model: Seq2Seq | Ensemble, srcs: list, dc: DecodeConfig, cached: bool):
    """The step weights packed once for a whole decoding call (model.pack),
    when its batches run more rows than the C core multiplies unpacked."""
    rows = min(len(srcs), dc.batch_size) * dc.beam
    return model.pack() if cached and rows > ops.GEMV_ROWS else None


def greedy(model: Seq2Seq | Ensemble, srcs: list[list[int]], dc: DecodeConfig, cached: bool = True) -> list[list[int]]:
    """The most likely next token each step, until </s> or max_len. The
    logits' argmax is the log-probabilities' (no softmax is needed); a
    source leaves the batch when it ends. On the CPU (a model on the GPU
    decodes through a copy of its weights)."""
    model = model.on_cpu()
    cfg = model.cfg
    out: list[list[int]] = []
    packed = _packed(model, srcs, dc, cached)
    for i in range(0, len(srcs), dc.batch_size):
        batch = srcs[i:i + dc.batch_size]
        src, mask = pad_sources(batch, model.cfg)
        limit = max_lengths(model, [len(s) for s in batch], dc)
        sc = _scorer(model, src, mask, 1, int(limit.max()) + 1, cached, packed)
        alive = np.arange(len(batch))                              # the batch's sources still decoding
        tokens = np.full((len(batch), 1), cfg.bos_id, np.int32)    # (alive, t+1)
        hyps: list[list[int]] = [[] for _ in batch]
        for t in range(int(limit.max())):
            z, _, _, _ = sc.next(tokens)
            last = np.flatnonzero(t == limit[alive] - 1)
            keep = z[last, cfg.eos_id]                             # at the last position only </s>
            z[last] = -np.inf
            z[last, cfg.eos_id] = keep
            nxt = z.argmax(1).astype(np.int32)
            for n, tok in zip(alive.tolist(), nxt.tolist()):
                if tok != cfg.eos_id:
                    hyps[n].append(tok)
            going = np.flatnonzero(nxt != cfg.eos_id)
            if not going.size:
                break
            if going.size < len(alive):
                sc.reorder(going)
            alive, tokens = alive[going], np.concatenate([tokens[going], nxt[going, None]], 1)
        out += hyps
    return out

# ---------------------------------------------------------------- beam search: the best extensions

BLOCK = 64   # entries per set whose maximum bounds a row's n-th best logit from below


def _set_count(V: int, n: int) -> int:
    """q, the number of strided sets of BLOCK entries a row of V is cut
    into when a search wants its n best; 0: a row narrower than
    4 * n * BLOCK is all singletons."""
    return V // BLOCK if V >= 4 * n * BLOCK else 0


def _normalise(z: np.ndarray, n: int, masked: tuple) -> tuple:
    """For a search wanting the n best entries of each row of logits z
    (R, V): (m, L, sets), the row maxima and log-sums of z
    (ops.logits_stats), then z[:, masked] = -inf (in place) and the maxima
    of _threshold's sets (R, q) without them (None for q = 0)."""
    q = _set_count(z.shape[1], n)
    m, L, sets = ops.logits_stats(z, q, BLOCK)
    z[:, masked] = -np.inf
    for c in masked:                                          # their sets again, without them
        if c < q * BLOCK:
            sets[:, c % q] = z[:, c % q:q * BLOCK:q].max(1)
    return m, L, sets


def _threshold(z: np.ndarray, n: int, sets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per row of z (R, V) a value no higher than its n-th largest entry:
    the n-th largest maximum of disjoint sets of entries (n distinct sets
    hold n distinct entries). The sets are the strided columns of BLOCK
    entries (j, j + q, ..., q = _set_count(V, n)), whose maxima are sets
    (R, q) (or None for q = 0), and the q * BLOCK.. tail one by one. -inf
    where a row has fewer than n finite sets. Returns (threshold (R,), the
    sets' maxima (R, q + tail), q)."""
    q = 0 if sets is None else sets.shape[1]
    M = np.concatenate([sets, z[:, q * BLOCK:]], 1) if q else z
    if M.shape[1] < n:
        return np.full(len(z), -np.inf, z.dtype), M, q
    return np.partition(M, M.shape[1] - n, axis=1)[:, M.shape[1] - n], M, q


def _best(z: np.ndarray, m: np.ndarray, L: np.ndarray, sets: np.ndarray | None, base: np.ndarray, K: int,
          n: int, forced: np.ndarray, forced_lp: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Each source's n best one-token extensions, as np.argsort(-cand,
    kind="stable")[:n] over its (K * V) candidates
        cand[k * V + j] = base[row] + log p(j | row),  row = source * K + k,
    would rank them (score descending, then flat index k * V + j
    ascending), without building the (N, K * V) array: a row's extensions
    rank in the order of its logits, so the n best of a source are among
    the n best logits of each of its rows. Each row keeps the logits at or
    above _threshold's bound (ties included, a few more than n); their
    log-probabilities (z - m) - L are computed in float64 and the survivors
    of all rows sorted. Rows at their last position (forced) have one
    extension, </s> with log-probability forced_lp; -inf candidates (masked
    tokens, rows of base -inf) come last in index order, as a stable sort
    puts them. Returns flat indices (N, n) and scores (N, n) float64."""
    R, V = z.shape
    N = R // K
    free = ~forced & (base > -np.inf)
    thr, M, q = _threshold(z, n, sets)
    ri, ci = np.nonzero((M >= thr[:, None]) & (M > -np.inf) & free[:, None])
    if q:                                                     # a set's entries: its BLOCK strided columns
        inset = ci < q
        r = np.concatenate([np.repeat(ri[inset], BLOCK), ri[~inset]])
        j = np.concatenate([(ci[inset, None] + q * np.arange(BLOCK)).ravel(), ci[~inset] - q + q * BLOCK])
    else:
        r, j = ri, ci
    v = z[r, j]
    ok = (v >= thr[r]) & (v > -np.inf)
    r, j, v = r[ok], j[ok], v[ok]
    fr = np.flatnonzero(forced & (base > -np.inf) & (forced_lp > -np.inf))
    r, j = np.concatenate([r, fr]), np.concatenate([j, np.full(len(fr), eos)])
    lp = np.concatenate([(v.astype(np.float64) - m[r[:len(v)]]) - L[r[:len(v)]], forced_lp[fr]])
    cand = base[r] + lp
    flat, src = (r % K) * V + j, r // K
    order = np.lexsort((flat, -cand, src))                   # by source, score descending, index ascending
    flat, cand, src = flat[order], cand[order], src[order]
    count = np.bincount(src, minlength=N)
    start = np.cumsum(count) - count
    if (count >= n).all():
        at = start[:, None] + np.arange(n)
        return flat[at], cand[at]
    out_flat, out_cand = np.empty((N, n), np.int64), np.full((N, n), -np.inf)
    for s in range(N):
        c = min(int(count[s]), n)
        out_flat[s, :c], out_cand[s, :c] = flat[start[s]:start[s] + c], cand[start[s]:start[s] + c]
        if c < n:   # the source has fewer finite candidates: all were kept, the -inf ones follow
            out_flat[s, c:] = _minus_inf(z, base, forced, forced_lp, s, K, n - c, eos)
    return out_flat, out_cand


def _minus_inf(z, base, forced, forced_lp, s: int, K: int, need: int, eos: int) -> np.ndarray:
    """The first `need` flat indices of source s whose candidates are -inf,
    in increasing order."""
    V = z.shape[1]
    got: list[int] = []
    for k in range(K):
        r = s * K + k
        if base[r] == -np.inf:
            cols = np.arange(V)
        elif forced[r]:
            cols = np.arange(V) if forced_lp[r] == -np.inf else np.delete(np.arange(V), eos)
        else:
            cols = np.flatnonzero(~(z[r] > -np.inf))
        got += (k * V + cols[:need - len(got)]).tolist()
        if len(got) == need:
            break
    return np.array(got, np.int64)

# ---------------------------------------------------------------- beam search


def beam_search(model: Seq2Seq | Ensemble, srcs: list[list[int]], dc: DecodeConfig, cached: bool = True,
                nbest: int = 1) -> list[list[tuple[float, list[int]]]]:
    """Per source its nbest finished hypotheses, best first, as
    (normalised score, tokens without </s>). On the CPU, as greedy()."""
    model = model.on_cpu()
    if dc.search not in ("exact", "hf"):
        raise ShapeError(f"search {dc.search!r}: use exact or hf")
    run = _beam_batch if dc.search == "exact" else _beam_batch_hf
    packed = _packed(model, srcs, dc, cached)
    out = []
    for i in range(0, len(srcs), dc.batch_size):
        out += run(model, srcs[i:i + dc.batch_size], dc, cached, nbest, packed)
    return out


def _beam_batch(model, batch, dc: DecodeConfig, cached: bool, nbest: int, packed=None):
    cfg = model.cfg
    N, K = len(batch), dc.beam
    src, mask = pad_sources(batch, model.cfg)
    limit = max_lengths(model, [len(s) for s in batch], dc)
    sc = _scorer(model, src, mask, K, int(limit.max()) + 1, cached, packed)
    alive = np.arange(N)                                                   # row a * K + k: source alive[a]
    tokens = np.full((N * K, 1), cfg.bos_id, np.int32)
    scores = np.full(N * K, -np.inf)
    scores[::K] = 0.0                                                      # one open hypothesis to start
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(N)]
    best_bound = length_norm(limit, dc.length_penalty, dc.norm)            # the largest normaliser per source
    for t in range(int(limit.max())):
        n = min(2 * K, K * model.cfg.tgt_vocab_size)
        z, m, L, sets = sc.next(tokens, n)                                 # (A*K, V)
        V = z.shape[1]
        forced = np.repeat(t == limit[alive] - 1, K)                       # only </s> may follow
        forced_lp = np.where(forced, (z[:, cfg.eos_id] - m) - L, -np.inf)
        top, cand = _best(z, m, L, sets, scores, K, n, forced, forced_lp, cfg.eos_id)
        rows, toks, new_scores, going = [], [], [], []
        for a, n in enumerate(alive.tolist()):
            k, kept = 0, []
            for j, s in zip(top[a].tolist(), cand[a].tolist()):
                if not np.isfinite(s):
                    break
                beam, tok = divmod(j, V)
                if tok == cfg.eos_id:
                    hyp = tokens[a * K + beam, 1:].tolist()
                    finished[n].append((float(s / length_norm(t + 1, dc.length_penalty, dc.norm)), hyp))
                elif k < K:
                    kept.append((a * K + beam, tok, s))
                    k += 1
            best = max((f[0] for f in finished[n]), default=-np.inf)
            reach = max(x[2] for x in kept) / best_bound[n] if k else -np.inf
            if k == 0 or best >= reach:
                continue                                                   # done: the source leaves the batch
            kept += [(a * K + i, cfg.pad_id, -np.inf) for i in range(k, K)]  # unfilled beams stay closed
            going.append(a)
            rows += [x[0] for x in kept]
            toks += [x[1] for x in kept]
            new_scores += [x[2] for x in kept]
        if not going:
            break
        rows = np.array(rows, np.int64)
        sc.reorder(rows)
        tokens = np.concatenate([tokens[rows], np.array(toks, np.int32)[:, None]], 1)
        scores, alive = np.array(new_scores, np.float64), alive[going]
    return [sorted(f, key=lambda h: -h[0])[:nbest] for f in finished]


def _beam_batch_hf(model, batch, dc: DecodeConfig, cached: bool, nbest: int, packed=None):
    """transformers' beam search (generation/utils.py _beam_search, with
    early_stopping False and a forced </s> at the last position)."""
    cfg = model.cfg
    N, K = len(batch), dc.beam
    src, mask = pad_sources(batch, model.cfg)
    limit = max_lengths(model, [len(s) for s in batch], dc)
    sc = _scorer(model, src, mask, K, int(limit.max()) + 1, cached, packed)
    alive = np.arange(N)                        # sources whose open hypotheses may still beat a finished one
    tokens = np.full((N * K, 1), cfg.bos_id, np.int32)
    running = np.full(N * K, -1e9)
    running[::K] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(N)]
    alpha = dc.length_penalty
    for t in range(int(limit.max())):
        n = min(2 * K, K * model.cfg.tgt_vocab_size)
        z, m, L, sets = sc.next(tokens, n)                                # (A*K, V)
        A, V = len(alive), z.shape[1]
        last = t == limit[alive] - 1
        forced = np.repeat(last, K)                                       # forced </s>, log-probability 0
        top, cand = _best(z, m, L, sets, running, K, n, forced, np.where(forced, 0.0, -np.inf),
                          cfg.eos_id)
        beam, tok = top // V, top % V                                     # (A, 2K)
        hits = (tok == cfg.eos_id) | last[:, None]
        adj = np.where(hits, cand - 1e9, cand)
        pick = np.argsort(-adj, axis=1, kind="stable")[:, :K]            # the K best that do not finish
        rows = np.arange(A)[:, None] * K + np.take_along_axis(beam, pick, 1)
        new_tok = np.take_along_axis(tok, pick, 1)
        new_running = np.take_along_axis(adj, pick, 1)                    # (A, K)
        scale = (t + 1) ** alpha
        for a in np.flatnonzero((hits[:, :K] & np.isfinite(cand[:, :K])).any(1)).tolist():
            n = int(alive[a])
            for j in range(K):                                            # only the first K ranks may finish
                if hits[a, j] and np.isfinite(cand[a, j]):
                    hyp = tokens[a * K + beam[a, j], 1:].tolist()
                    if tok[a, j] != cfg.eos_id:
                        hyp.append(int(tok[a, j]))
                    finished[n].append((float(cand[a, j] / scale), hyp))
            finished[n] = sorted(finished[n], key=lambda h: -h[0])[:K]
        worst = np.array([finished[n][-1][0] if len(finished[n]) == K else -1e9 for n in alive.tolist()])
        going = np.flatnonzero(new_running[:, 0] / scale > worst)
        if not going.size:
            break
        rows = rows[going].ravel()
        sc.reorder(rows)
        tokens = np.concatenate([tokens[rows], new_tok[going].reshape(-1, 1).astype(np.int32)], 1)
        running, alive = new_running[going].ravel(), alive[going]
    return [f[:nbest] for f in finished]


def decode(model: Seq2Seq | Ensemble, srcs: list[list[int]], dc: DecodeConfig, cached: bool = True,
           rescorers: list | None = None) -> list[list[int]]:
    """The best output of each source: greedy with beam 1, else beam search,
    or with rescorers the best of the beam's after rerank(). Outputs are in
    reading order whatever the model's (a right-to-left model's are
    reversed back). The sources go through in order of length (batches of
    like lengths pad little and end together), the outputs come back in
    the given order."""
    if dc.beam < 1:
        raise ShapeError(f"beam {dc.beam} must be at least 1")
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]))
    ranked = [srcs[i] for i in order]
    if rescorers:
        hyps = rerank(model, rescorers, ranked, dc, cached)
    elif dc.beam == 1:
        hyps = reading_order(model.cfg, greedy(model, ranked, dc, cached))
    else:
        hyps = reading_order(model.cfg, [h[0][1] if h else [] for h in beam_search(model, ranked, dc, cached)])
    out: list[list[int]] = [[] for _ in srcs]
    for i, h in zip(order, hyps):
        out[i] = h
    return out


def reading_order(cfg, hyps: list[list[int]]) -> list[list[int]]:
    """Outputs as the model wrote them -> in reading order (the same lists
    unless the model writes right to left); the same function maps back."""
    return [h[::-1] for h in hyps] if cfg.reverse_target else hyps


def fit_sources(cfg, srcs: list[list[int]]) -> list[list[int]]:
    """Sources cut to the model's maximum (keeping a final </s> for a model
    whose sources end with one)."""
    S = cfg.max_src_len
    return [s if len(s) <= S else s[:S - 1] + s[-1:] if cfg.src_eos else s[:S] for s in srcs]


def rescore(model: Seq2Seq | Ensemble, srcs: list[list[int]], hyps: list[list[int]],
            batch_size: int = 64) -> np.ndarray:
    """The log-probability (float64) that model gives each output hyps[i]
    (reading order, without </s>) of source srcs[i], </s> included:
    the teacher-forced decoder's, summed over the tokens (an Ensemble: the
    mean of its models'). A right-to-left model scores the reversed output.
    A source longer than the model takes is cut to its maximum (keeping a
    final </s>); an output longer than it can write scores -inf. Outputs
    of one source go through together, and the encoder reads each source
    of a batch once (Seq2Seq.forward_shared)."""
    model = model.on_cpu()
    if isinstance(model, Ensemble):
        return np.mean([rescore(m, srcs, hyps, batch_size) for m in model.models], axis=0)
    cfg = model.cfg
    srcs = [tuple(s) for s in fit_sources(cfg, srcs)]
    hyps = reading_order(cfg, hyps)
    first: dict[tuple, int] = {}
    for s in srcs:
        first.setdefault(s, len(first))
    out = np.full(len(hyps), -np.inf)
    order = sorted((i for i in range(len(hyps)) if len(hyps[i]) < cfg.max_tgt_len),
                   key=lambda i: (len(srcs[i]), first[srcs[i]], len(hyps[i])))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        row: dict[tuple, int] = {}                                         # source -> its row in this batch
        rows = [row.setdefault(srcs[j], len(row)) for j in idx]
        src, mask = pad_sources(list(row), cfg)
        tin, tout = pad_targets([hyps[j] for j in idx], cfg)
        z = model.forward_shared(src, mask, rows, tin)                     # (B*T, V) float32
        m, L, _ = ops.logits_stats(z)
        flat = tout.reshape(-1)
        lp = (z[np.arange(len(flat)), flat].astype(np.float64) - m) - L
        out[idx] = np.where(flat != cfg.pad_id, lp, 0.0).reshape(tout.shape).sum(1)
    return out


def rerank(model: Seq2Seq | Ensemble, rescorers: list, srcs: list[list[int]], dc: DecodeConfig,
           cached: bool = True) -> list[list[int]]:
    """Each source's best output after re-scoring. The candidates: the
    dc.beam best of beam search by model and by each re-scorer (in reading
    order, duplicates once). Each is scored (1 - w) * model's
    log-probability + w * the mean of the rescorers' (rescore(), w =
    dc.rerank_weight), normalised by its length as the beam normalises;
    the best wins (a tie: the first proposed, model's own first). A
    right-to-left re-scorer predicts each token from the ones after it,
    and proposes outputs that a left-to-right beam did not keep. A model's
    own proposals keep the log-probabilities its beam found (a single
    model's exact search scores as rescore() does, to float rounding);
    only the others' go through its teacher-forced decoder. Reading
    order."""
    if dc.beam < 2:
        raise ShapeError("re-scoring (--rerank) needs a beam (--beam) of at least 2: it chooses among the "
                         "beam's best outputs")
    if not 0.0 <= dc.rerank_weight <= 1.0:
        raise ShapeError(f"rerank weight {dc.rerank_weight} must be within 0 to 1")
    models = [model, *rescorers]
    cands: list[dict] = [{} for _ in srcs]                                 # output -> {model: log-probability}
    for k, m in enumerate(models):
        # an Ensemble's beam renormalises each step's mean, and hf search forces </s> with log-probability 0:
        # their scores are not rescore()'s
        keep = isinstance(m, Seq2Seq) and dc.search == "exact"
        for c, hs in zip(cands, beam_search(m, fit_sources(m.cfg, srcs), dc, cached, nbest=dc.beam)):
            for (score, _), h in zip(hs, reading_order(m.cfg, [h for _, h in hs])):
                lp = c.setdefault(tuple(h), {})
                if keep:
                    lp[k] = score * float(length_norm(len(h) + 1, dc.length_penalty, dc.norm))
    flat_src = [s for s, c in zip(srcs, cands) for _ in c]
    flat = [list(h) for c in cands for h in c]
    lps = np.full((len(models), len(flat)), np.nan)                        # (model, candidate); nan: not yet
    for i, lp in enumerate(lp for c in cands for lp in c.values()):
        lps[list(lp), i] = list(lp.values())
    for k, m in enumerate(models):
        need = np.flatnonzero(np.isnan(lps[k]))
        if need.size:
            lps[k, need] = rescore(m, [flat_src[i] for i in need], [flat[i] for i in need], dc.batch_size)
    total = ((1.0 - dc.rerank_weight) * lps[0] + dc.rerank_weight * lps[1:].mean(0)) / \
        length_norm(np.array([len(h) + 1 for h in flat]), dc.length_penalty, dc.norm)
    out, k = [], 0
    for c in cands:
        out.append(flat[k + int(np.argmax(total[k:k + len(c)]))] if c else [])
        k += len(c)
    return out
