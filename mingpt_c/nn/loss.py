"""Softmax cross-entropy with label smoothing, averaged over the rows that
count: classification heads (ViT) and sequence outputs (seq2seq), whose
padding rows carry the label ops.IGNORE_INDEX and count for nothing.

The C kernels do the work on either device (csrc/loss.c, csrc/cuda/loss.cu).
With smoothing eps over K classes the target distribution is
q = (1 - eps) onehot(y) + eps / K (PyTorch's cross_entropy(label_smoothing=eps)):

    loss = (1 - eps) (lse - z_y) + eps * mean_k (lse - z_k)
         = (lse - z_y) + eps (z_y - mean_k z_k)
    dloss/dz = p - q

The smoothing term is written with logits, not log-probabilities, so a
probability that underflows to 0 never turns into log(0). Here: the mean
over the n rows not ignored (the forward sums the per-row losses in
float64; the backward gives each row the weight loss_scale / n). n comes
from the labels on the host (count_rows), before they go to the device.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import ops
from mingpt_c.errors import ShapeError


def count_rows(labels: np.ndarray) -> int:
    """The rows of host labels that count (not ops.IGNORE_INDEX)."""
    return int(np.count_nonzero(np.asarray(labels) != ops.IGNORE_INDEX))


def _check(eps: float) -> None:
    if not 0.0 <= eps < 1.0:
        raise ShapeError(f"label smoothing {eps} must be in [0, 1)")


def smoothed_crossentropy_forward(logits, labels, eps: float, losses, probs, n: int) -> float:
    """logits (B, K), labels (B,) int32, on one device -> the mean loss over
    the n rows not ignored; fills losses (B) and probs (B, K) (which may be
    logits: in place)."""
    _check(eps)
    ops.crossentropy_forward(logits, labels, ops.IGNORE_INDEX, losses, probs, smoothing=eps)
    return ops.total(losses) / max(n, 1)


def smoothed_crossentropy_backward(probs, labels, eps: float, n: int, dlosses, loss_scale: float = 1.0):
    """d(mean loss * loss_scale)/d(logits) (B, K), 0 on ignored rows,
    written over probs; dlosses (B): scratch on the same device."""
    _check(eps)
    ops.fill(dlosses, loss_scale / max(n, 1))
    return ops.crossentropy_backward(dlosses, probs, labels, ops.IGNORE_INDEX, probs, smoothing=eps)
