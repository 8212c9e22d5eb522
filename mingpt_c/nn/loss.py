"""Softmax cross-entropy with label smoothing, for classification heads.

With smoothing eps over K classes the target distribution is
q = (1 - eps) onehot(y) + eps / K (PyTorch's cross_entropy(label_smoothing=eps)):

    loss = (1 - eps) (lse - z_y) + eps * mean_k (lse - z_k)
         = nll + eps (z_y - mean_k z_k)          nll = lse - z_y (the C kernel)
    dloss/dz = p - q = (p - onehot) + eps (onehot - 1/K)

The smoothing term is written with logits, not log-probabilities, so a
probability that underflows to 0 never turns into log(0). The C kernel does
the softmax and the (p - onehot) part; the eps part is a (B, K) numpy update.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import ops
from mingpt_c.errors import ShapeError

F32 = np.float32


def smoothed_crossentropy_forward(logits: np.ndarray, labels: np.ndarray, eps: float,
                                  losses: np.ndarray, probs: np.ndarray) -> float:
    """logits (B, K), labels (B,) int32 -> mean loss; fills losses (B), probs (B, K)."""
    if not 0.0 <= eps < 1.0:
        raise ShapeError(f"label smoothing {eps} must be in [0, 1)")
    ops.crossentropy_forward(logits, labels, ops.IGNORE_INDEX, losses, probs)
    loss = losses.astype(np.float64)
    if eps > 0:
        z = logits.astype(np.float64)
        zy = np.take_along_axis(z, labels[:, None].astype(np.int64), 1)[:, 0]
        loss = loss + eps * (zy - z.mean(1))
    return float(loss.mean())


def smoothed_crossentropy_backward(probs: np.ndarray, labels: np.ndarray, eps: float,
                                   loss_scale: float = 1.0) -> np.ndarray:
    """d(mean loss * loss_scale)/d(logits), (B, K); overwrites probs."""
    B, K = probs.shape
    scale = loss_scale / B
    dlosses = np.full(B, scale, F32)
    dlogits = ops.crossentropy_backward(dlosses, probs, labels, ops.IGNORE_INDEX, probs)
    if eps > 0:
        dlogits -= F32(eps * scale / K)
        dlogits[np.arange(B), labels] += F32(eps * scale)
    return dlogits
