"""Decoding a trained encoder-decoder: greedy and beam search, batched.

Both encode each source once and then extend every hypothesis one token a
step through the decoder's KV cache (Seq2Seq.step: the self-attention keys
and values so far, the cross-attention keys and values of the source
computed once). `cached=False` recomputes the whole prefix every step
instead (Seq2Seq.logprobs), the reference the cache is tested against.

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

from dataclasses import dataclass

import numpy as np

from mingpt_c.errors import ShapeError
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


def length_norm(length: np.ndarray | int, alpha: float, kind: str = "gnmt"):
    """The normaliser a hypothesis of `length` tokens divides its score by."""
    length = np.asarray(length, np.float64)
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "hf":
        return length ** alpha
    raise ShapeError(f"length normalisation {kind!r}: use gnmt or hf")


def max_lengths(model: Seq2Seq, src_lens: np.ndarray, dc: DecodeConfig) -> np.ndarray:
    cap = model.cfg.max_tgt_len
    return np.clip((dc.len_a * np.asarray(src_lens) + dc.len_b).astype(np.int64), 1, cap)


def _pad(seqs: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    S = max(1, max(len(s) for s in seqs))
    ids = np.full((len(seqs), S), pad, np.int32)
    mask = np.zeros((len(seqs), S), np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return ids, mask


class _Scorer:
    """Next-token log-probabilities of R rows of hypotheses, through the KV
    cache (cached) or by re-running the whole prefix (not cached)."""

    def __init__(self, model: Seq2Seq, src: np.ndarray, mask: np.ndarray, max_len: int, cached: bool):
        self.model, self.cached = model, cached
        self.src, self.mask = src, mask
        self.cache = model.start(src, mask, max_len) if cached else None

    def next(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (R, t+1), <s> first -> log-probabilities (R, V) of token t+1."""
        t = tokens.shape[1] - 1
        if self.cached:
            lp = self.model.step(self.cache, tokens[:, -1], t)
        else:
            lp = self.model.logprobs(self.src, self.mask, tokens)[:, -1]
        cfg = self.model.cfg
        lp[:, cfg.pad_id] = lp[:, cfg.bos_id] = -np.inf
        return lp

    def reorder(self, rows: np.ndarray) -> None:
        self.src, self.mask = self.src[rows], self.mask[rows]
        if self.cached:
            self.cache.reorder(rows)


def _only_eos(lp: np.ndarray, rows: np.ndarray, eos: int) -> None:
    """At a hypothesis' last position only </s> may follow."""
    keep = lp[rows, eos]
    lp[rows] = -np.inf
    lp[rows, eos] = keep


def _source_pad(model: Seq2Seq) -> int:
    cfg = model.cfg
    return cfg.pad_id if cfg.pad_id < cfg.src_vocab_size else 0


def greedy(model: Seq2Seq, srcs: list[list[int]], dc: DecodeConfig, cached: bool = True) -> list[list[int]]:
    """The most likely next token each step, until </s> or max_len."""
    cfg = model.cfg
    out: list[list[int]] = []
    for i in range(0, len(srcs), dc.batch_size):
        batch = srcs[i:i + dc.batch_size]
        src, mask = _pad(batch, _source_pad(model))
        limit = max_lengths(model, [len(s) for s in batch], dc)
        sc = _Scorer(model, src, mask, int(limit.max()) + 1, cached)
        tokens = np.full((len(batch), 1), cfg.bos_id, np.int32)
        done = np.zeros(len(batch), bool)
        for t in range(int(limit.max())):
            lp = sc.next(tokens)
            _only_eos(lp, t == limit - 1, cfg.eos_id)
            nxt = np.where(done, cfg.pad_id, lp.argmax(1)).astype(np.int32)
            tokens = np.concatenate([tokens, nxt[:, None]], 1)
            done |= nxt == cfg.eos_id
            if done.all():
                break
        for row in tokens[:, 1:]:
            row = list(row)
            out.append(row[:row.index(cfg.eos_id)] if cfg.eos_id in row else row)
    return out


def beam_search(model: Seq2Seq, srcs: list[list[int]], dc: DecodeConfig, cached: bool = True,
                nbest: int = 1) -> list[list[tuple[float, list[int]]]]:
    """Per source its nbest finished hypotheses, best first, as
    (normalised score, tokens without </s>)."""
    if dc.search not in ("exact", "hf"):
        raise ShapeError(f"search {dc.search!r}: use exact or hf")
    run = _beam_batch if dc.search == "exact" else _beam_batch_hf
    out = []
    for i in range(0, len(srcs), dc.batch_size):
        out += run(model, srcs[i:i + dc.batch_size], dc, cached, nbest)
    return out


def _beam_batch(model, batch, dc: DecodeConfig, cached: bool, nbest: int):
    cfg = model.cfg
    N, K = len(batch), dc.beam
    src, mask = _pad(batch, _source_pad(model))
    limit = max_lengths(model, [len(s) for s in batch], dc)
    rows = np.repeat(np.arange(N), K)                                     # row n*K + k: source n, beam k
    sc = _Scorer(model, src[rows], mask[rows], int(limit.max()) + 1, cached)
    tokens = np.full((N * K, 1), cfg.bos_id, np.int32)
    scores = np.full((N, K), -np.inf)
    scores[:, 0] = 0.0                                                     # one open hypothesis to start
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(N)]
    done = np.zeros(N, bool)
    best_bound = length_norm(limit, dc.length_penalty, dc.norm)            # the largest normaliser per source
    for t in range(int(limit.max())):
        lp = sc.next(tokens)                                               # (N*K, V)
        V = lp.shape[1]
        _only_eos(lp, np.repeat(t == limit - 1, K), cfg.eos_id)
        cand = (scores.reshape(-1, 1) + lp).reshape(N, K * V)
        order = np.argsort(-cand, axis=1, kind="stable")[:, :2 * K]
        keep_rows = np.arange(N * K)                                       # done sources keep their rows
        new_tok = np.full(N * K, cfg.pad_id, np.int32)
        new_scores = np.full((N, K), -np.inf)
        for n in range(N):
            if done[n]:
                continue
            k = 0
            for j in order[n]:
                s = cand[n, j]
                if not np.isfinite(s):
                    break
                beam, tok = divmod(int(j), V)
                if tok == cfg.eos_id:
                    hyp = [int(x) for x in tokens[n * K + beam, 1:]]
                    finished[n].append((float(s / length_norm(t + 1, dc.length_penalty, dc.norm)), hyp))
                elif k < K:
                    keep_rows[n * K + k], new_tok[n * K + k], new_scores[n, k] = n * K + beam, tok, s
                    k += 1
            best = max((f[0] for f in finished[n]), default=-np.inf)
            reach = new_scores[n].max() / best_bound[n] if k else -np.inf
            done[n] = k == 0 or best >= reach
        if done.all():
            break
        sc.reorder(keep_rows)
        tokens = np.concatenate([tokens[keep_rows], new_tok[:, None]], 1)
        scores = new_scores
    return [sorted(f, key=lambda h: -h[0])[:nbest] for f in finished]


def _beam_batch_hf(model, batch, dc: DecodeConfig, cached: bool, nbest: int):
    """transformers' beam search (generation/utils.py _beam_search, with
    early_stopping False and a forced </s> at the last position)."""
    cfg = model.cfg
    N, K = len(batch), dc.beam
    src, mask = _pad(batch, _source_pad(model))
    limit = max_lengths(model, [len(s) for s in batch], dc)
    sc = _Scorer(model, src[np.repeat(np.arange(N), K)], mask[np.repeat(np.arange(N), K)],
                 int(limit.max()) + 1, cached)
    tokens = np.full((N * K, 1), cfg.bos_id, np.int32)
    running = np.full((N, K), -1e9)
    running[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(N)]
    open_ = np.ones(N, bool)                    # an open hypothesis may still beat a finished one
    alpha = dc.length_penalty
    for t in range(int(limit.max())):
        lp = sc.next(tokens)                                              # (N*K, V)
        V = lp.shape[1]
        last = np.repeat(t == limit - 1, K)
        lp[last] = -np.inf                                               # forced </s>, log-probability 0
        lp[last, cfg.eos_id] = 0.0
        cand = (running.reshape(-1, 1) + lp).reshape(N, K * V)
        top = np.argsort(-cand, axis=1, kind="stable")[:, :2 * K]
        keep_rows = np.arange(N * K)
        new_tok = np.full(N * K, cfg.pad_id, np.int32)
        new_running = np.full((N, K), -1e9)
        for n in range(N):
            scores = cand[n, top[n]]
            beam, tok = top[n] // V, top[n] % V
            hits = (tok == cfg.eos_id) | (t == limit[n] - 1)
            for k, j in enumerate(np.argsort(-np.where(hits, scores - 1e9, scores), kind="stable")[:K]):
                keep_rows[n * K + k], new_tok[n * K + k] = n * K + beam[j], tok[j]
                new_running[n, k] = scores[j] - (1e9 if hits[j] else 0.0)
            if open_[n]:
                for j in range(K):                                      # only the first K ranks may finish
                    if hits[j] and np.isfinite(scores[j]):
                        hyp = [int(x) for x in tokens[n * K + beam[j], 1:]]
                        if tok[j] != cfg.eos_id:
                            hyp.append(int(tok[j]))
                        finished[n].append((float(scores[j] / (t + 1) ** alpha), hyp))
                finished[n] = sorted(finished[n], key=lambda h: -h[0])[:K]
            full = len(finished[n]) == K
            worst = finished[n][-1][0] if full else -1e9
            open_[n] &= bool(new_running[n, 0] / (t + 1) ** alpha > worst)
        if not open_.any() or bool((t == limit - 1).all()):
            break
        sc.reorder(keep_rows)
        tokens = np.concatenate([tokens[keep_rows], new_tok[:, None]], 1)
        running = new_running
    return [f[:nbest] for f in finished]


def decode(model: Seq2Seq, srcs: list[list[int]], dc: DecodeConfig, cached: bool = True) -> list[list[int]]:
    """The best output of each source: greedy with beam 1, else beam search."""
    if dc.beam < 1:
        raise ShapeError(f"beam {dc.beam} must be at least 1")
    if dc.beam == 1:
        return greedy(model, srcs, dc, cached)
    return [h[0][1] if h else [] for h in beam_search(model, srcs, dc, cached)]
