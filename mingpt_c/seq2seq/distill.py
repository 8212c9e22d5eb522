"""Knowledge distillation: a student trained on what trained checkpoints
(the teachers; several are an ensemble) make of the training pairs.

- Sequence level (Kim & Rush, 2016): every distinct training source is
  paired with the teachers' output for it, decoded greedily or with a beam,
  in place of its references. Nothing changes in the training itself.
- Token level (Hinton et al., 2015; Sun et al., 2019 for G2P): the teachers
  read each reference teacher-forced, and their mean next-token
  distribution t is mixed into the student's target,
  q = (1 - w) smoothed one-hot + w t (the loss in nn/loss.py). The student
  shares the teachers' vocabularies, since t is indexed by them. Each
  position keeps the teachers' TOP_K most likely tokens, renormalised: the
  rest of a trained model's distribution is noise, and the table stays
  small for large vocabularies.

Both are computed once, when a run starts, and kept in its directory, so
that --resume trains on the same targets without the teachers.
"""
from __future__ import annotations

import numpy as np

from mingpt_c.errors import CheckpointError
from mingpt_c.seq2seq.decode import Ensemble
from mingpt_c.nn.loss import log_softmax

TOP_K = 8


def _members(model) -> list:
    return model.models if isinstance(model, Ensemble) else [model]


class TokenTargets:
    """The teachers' distributions along every training pair's target
    (its tokens and </s>): rows offsets[i]:offsets[i + 1] belong to pair i,
    each with TOP_K token ids and their probabilities (summing to 1)."""

    def __init__(self, ids: np.ndarray, probs: np.ndarray, offsets: np.ndarray, vocab_size: int):
        self.ids, self.probs, self.offsets, self.vocab_size = ids, probs, offsets, int(vocab_size)

    @classmethod
    def compute(cls, teacher, batch_of, lengths, batch_size: int = 256) -> "TokenTargets":
        """teacher: a Seq2Seq or an Ensemble on the CPU; batch_of(indices)
        -> (src, src_mask, tgt_in, tgt_out) of those pairs, padded;
        lengths: a length per pair to batch them by."""
        n_pairs = len(lengths)
        members = _members(teacher)
        V = teacher.cfg.tgt_vocab_size
        k = min(TOP_K, V)
        rows: list = [None] * n_pairs
        order = np.argsort(lengths, kind="stable")   # batches of similar lengths: little padding
        for start in range(0, n_pairs, batch_size):
            idx = order[start:start + batch_size]
            s, m, tin, tout = batch_of(idx)
            B, T = tout.shape
            mean = np.zeros((B * T, V), np.float64)
            for model in members:
                mean += np.exp(log_softmax(model.forward(s, m, tin).reshape(B * T, V)))
            mean /= len(members)
            top = np.argpartition(-mean, k - 1, axis=1)[:, :k]
            p = np.take_along_axis(mean, top, axis=1)
            p /= p.sum(axis=1, keepdims=True)
            n_tok = (tout != teacher.cfg.pad_id).sum(axis=1)
            for b, i in enumerate(idx):
                r = slice(b * T, b * T + int(n_tok[b]))
                rows[i] = (top[r].astype(np.int32), p[r].astype(np.float32))
        offsets = np.zeros(n_pairs + 1, np.int64)
        offsets[1:] = np.cumsum([len(r[0]) for r in rows])
        return cls(np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]), offsets, V)

    def save(self, f) -> None:
        """Into the open binary file f (.npz)."""
        np.savez(f, ids=self.ids, probs=self.probs, offsets=self.offsets, vocab_size=self.vocab_size)

    @classmethod
    def load(cls, path, n_pairs: int, vocab_size: int) -> "TokenTargets":
        try:
            with np.load(path) as z:
                t = cls(z["ids"], z["probs"], z["offsets"], int(z["vocab_size"]))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: not the teachers' distributions this run saved ({e})") from None
        if len(t.offsets) != n_pairs + 1 or t.vocab_size != vocab_size or t.offsets[-1] != len(t.ids):
            raise CheckpointError(f"{path}: made for {len(t.offsets) - 1:,} pairs and {t.vocab_size} tokens, not "
                                  f"this run's {n_pairs:,} and {vocab_size}")
        return t

    def dense(self, pairs, T: int) -> np.ndarray:
        """(len(pairs) * T, V) float32: row b * T + j is the distribution
        at position j of pair pairs[b]; padding rows are 0."""
        out = np.zeros((len(pairs) * T, self.vocab_size), np.float32)
        for b, i in enumerate(pairs):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            r = np.arange(b * T, b * T + hi - lo)
            out[r[:, None], self.ids[lo:hi]] = self.probs[lo:hi]
        return out
