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


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of host logits, in float64 (evaluation and
    decoding scores, which sum or compare many of them)."""
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise probabilities of host logits, in float64."""
    return np.exp(log_softmax(z))


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the labels under host logits (N, K), no
    smoothing, in float64 (nan for no rows): an evaluation's loss."""
    if not len(labels):
        return float("nan")
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


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

# ------------------------------------------------------------------ soft targets (distillation)
#
# A teacher's distribution t mixed into the target, q = (1 - w) q_eps + w t
# (token-level knowledge distillation, Hinton et al. 2015; Kim & Rush 2016):
#
#     loss = (1 - w) loss_eps - w mean_rows sum_k t_k log p_k
#     dloss/dz = p - q = (p - q_eps) + w (q_eps - t)
#
# so the kernels' smoothed loss and gradient stay as they are, and the
# teacher adds a term to the loss and an offset, w (q_eps - t) / n on the
# rows that count, to the gradient: the offset does not depend on the
# student's logits, only on the labels and the teacher.

TINY = 1e-30   # log(p) of a probability that underflowed (the loss's value only; the gradient needs no log)


def soft_target_terms(probs: np.ndarray, labels: np.ndarray, eps: float, teacher: np.ndarray, w: float,
                      n: int) -> tuple[float, np.ndarray]:
    """Host probs (B, K) of the smoothed forward, labels (B,), teacher
    (B, K) rows that sum to 1 -> (the teacher's cross-entropy term, a mean
    over the n rows that count, and the gradient offset (B, K) for
    loss_scale 1); the mixed loss is (1 - w) smoothed + w teacher's term."""
    _check(eps)
    if not 0.0 <= w <= 1.0:
        raise ShapeError(f"distillation weight {w} must be in [0, 1]")
    B, K = probs.shape
    if teacher.shape != (B, K) or labels.shape != (B,):
        raise ShapeError(f"teacher {teacher.shape} and labels {labels.shape} must match probs {probs.shape}")
    keep = labels != ops.IGNORE_INDEX
    rows = np.flatnonzero(keep)
    t = teacher[rows].astype(np.float64)
    logp = np.log(np.maximum(probs[rows].astype(np.float64), TINY))
    soft = float(-(t * logp).sum()) / max(n, 1)
    q = np.full((len(rows), K), eps / K)
    q[np.arange(len(rows)), labels[rows]] += 1.0 - eps
    offset = np.zeros((B, K), np.float32)
    offset[rows] = (w / max(n, 1)) * (q - t)
    return soft, offset
