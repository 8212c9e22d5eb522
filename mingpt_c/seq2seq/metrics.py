"""Scores of the encoder-decoder's outputs against one or more references
per source: BLEU and chrF (sacrebleu), and for symbol outputs (phonemes,
characters) the word and phoneme error rates of grapheme-to-phoneme work.

Definitions, over N sources, each with an output h and references r_1..r_k
(tokens as tokens_of gives them; d is the Levenshtein distance: the fewest
insertions, deletions and substitutions turning one sequence into the other):

  wer    share of sources whose h equals none of its references (the word
         error rate of G2P papers: a "word" is a whole output)
  exact  1 - wer
  per    sum over sources of d(h, r*) / sum over sources of len(r*), where
         r* is the reference closest to h (smallest d; the first listed on
         a tie): the phoneme error rate (Bisani & Ney 2008; Yao & Zweig
         2015). 0 when every output is right; it can exceed 1 when outputs
         are longer than their references.
  bleu   sacrebleu.corpus_bleu with every reference of each source (sacrebleu
         takes reference streams: stream j holds each source's j-th
         reference, None where a source has fewer). Symbol outputs are
         tokenized on whitespace as given (tokenize="none"), text with 13a.
  chrf   sacrebleu.corpus_chrf (character 6-grams, beta 2), same references.

bleu and chrf are sacrebleu's 0-100 scores; wer, per and exact fractions.
"""
from __future__ import annotations

from typing import Callable, Sequence

from mingpt_c.errors import DataError, ShapeError


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences of symbols (unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))   # row i-1 of the table, over b's prefixes
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """refs per source -> sacrebleu's reference streams (None where a source
    has fewer references than the most any source has)."""
    k = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(k)]


def score(hyps: list[str], refs: list[list[str]], tokens_of: Callable[[str], list] = str.split,
          symbols: bool = False) -> dict:
    """{"n", "bleu", "chrf"} of outputs hyps against refs (a list of
    references per output); with symbols also {"wer", "per", "exact"}
    (see the module docstring)."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise ShapeError(f"{len(hyps)} outputs but {len(refs)} reference lists")
    if not hyps:
        raise DataError("nothing to score: no outputs")
    empty = next((i for i, r in enumerate(refs) if not r), None)
    if empty is not None:
        raise DataError(f"source {empty + 1} has no reference")
    refs = [list(r) for r in refs]
    streams = reference_streams(refs)
    out = {"n": len(hyps),
           "bleu": float(sacrebleu.corpus_bleu(hyps, streams, tokenize="none" if symbols else "13a").score),
           "chrf": float(sacrebleu.corpus_chrf(hyps, streams).score)}
    if symbols:
        wrong = errors = length = 0
        for h, rs in zip(hyps, refs):
            ht = tokens_of(h)
            rts = [tokens_of(r) for r in rs]
            d, best = min((edit_distance(ht, rt), j) for j, rt in enumerate(rts))
            wrong += d > 0                    # d is 0 exactly when h equals a reference
            errors += d
            length += len(rts[best])
        out["wer"] = wrong / len(hyps)
        out["exact"] = 1.0 - out["wer"]
        out["per"] = errors / length if length else float(errors > 0)
    return out
