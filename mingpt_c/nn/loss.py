"""Softmax cross-entropy with label smoothing, for classification heads and
sequence outputs (rows whose label is ops.IGNORE_INDEX, padding, count for
nothing: the loss is the mean over the other rows).

With smoothing eps over K classes the target distribution is
q = (1 - eps) onehot(y) + eps / K (PyTorch's cross_entropy(label_smoothing=eps)):

    loss = (1 - eps) (lse - z_y) + eps * mean_k (lse - z_k)
         = nll + eps (z_y - mean_k z_k)          nll = lse - z_y (the C kernel)
    dloss/dz = p - q = (p - onehot) + eps (onehot - 1/K)

The smoothing term is written with logits, not log-probabilities, so a
probability that underflows to 0 never turns into log(0). The C kernel does
the softmax and the (p - onehot) part; the eps part is a (B, K) numpy update.
The probabilities may overwrite the logits (probs is logits): the smoothing
term is taken from the logits before the kernel runs.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import ops
from mingpt_c.errors import ShapeError

F32 = np.float32


def smoothed_crossentropy_forward(logits: np.ndarray, labels: np.ndarray, eps: float,
                                  losses: np.ndarray, probs: np.ndarray) -> float:
    """logits (B, K), labels (B,) int32 -> mean loss over the rows not
    ignored; fills losses (B), probs (B, K) (which may be logits)."""
    if not 0.0 <= eps < 1.0:
        raise ShapeError(f"label smoothing {eps} must be in [0, 1)")
    keep = labels != ops.IGNORE_INDEX
    smooth = None
    if eps > 0:   # before the kernel: probs may overwrite the logits
        z = logits[keep].astype(np.float64)
        zy = np.take_along_axis(z, labels[keep][:, None].astype(np.int64), 1)[:, 0]
        smooth = eps * (zy - z.mean(1))
    ops.crossentropy_forward(logits, labels, ops.IGNORE_INDEX, losses, probs)
    loss = losses[keep].astype(np.float64)
    if smooth is not None:
        loss = loss + smooth
    return float(loss.mean()) if loss.size else 0.0


def smoothed_crossentropy_backward(probs: np.ndarray, labels: np.ndarray, eps: float,
                                   loss_scale: float = 1.0) -> np.ndarray:
    """d(mean loss * loss_scale)/d(logits), (B, K), 0 on ignored rows;
    overwrites probs."""
    B, K = probs.shape
    keep = labels != ops.IGNORE_INDEX
    n = int(keep.sum())
    scale = loss_scale / max(n, 1)
    dlosses = np.full(B, scale, F32)
    dlogits = ops.crossentropy_backward(dlosses, probs, labels, ops.IGNORE_INDEX, probs)
    if eps > 0:
        rows = np.flatnonzero(keep)
        dlogits[rows] -= F32(eps * scale / K)
        dlogits[rows, labels[rows]] += F32(eps * scale)
    return dlogits
