"""AdamW over the flat parameter buffer, with global gradient-norm clipping;
nanoGPT's learning-rate schedule (linear warmup, cosine decay to min_lr) and
the Transformer paper's (linear warmup, then inverse square root decay); an
exponential moving average of the weights for evaluation."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mingpt_c import ops
from mingpt_c.device import Device


def lr_at(it: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """Learning rate for iteration it (0-based)."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def inverse_sqrt_lr(it: int, lr: float, warmup: int) -> float:
    """The paper's schedule with lr as its peak: linear warmup over warmup
    steps, then lr * sqrt(warmup / step). (The paper writes it
    d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), whose peak is
    (d_model * warmup)^-0.5.)"""
    step = it + 1
    warmup = max(warmup, 1)
    return lr * min(step / warmup, (warmup / step) ** 0.5)


@dataclass
class OptimConfig:
    """The optimizer and schedule options of every training config (each
    family's dataclass derives from it and restates the defaults it changes)."""
    lr: float = 1e-3                 # peak learning rate
    min_lr: float = 1e-5             # learning rate at the end of the cosine
    warmup_iters: int = 200          # linear warmup from lr / (warmup + 1)
    weight_decay: float = 0.1        # AdamW's decoupled decay (matrices and embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # max global gradient norm; 0 disables
    ema: float = 0.0                 # decay of the weight average evaluated and saved (WeightAverage; 0: none)


@dataclass
class AdamW:
    params: np.ndarray
    decay_mask: np.ndarray
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0     # max global gradient norm; 0 disables clipping
    t: int = 0                 # steps taken

    def __post_init__(self):
        if isinstance(self.params, np.ndarray):
            self.m = np.zeros_like(self.params)
            self.v = np.zeros_like(self.params)
        else:   # a GPU buffer: the moments and the mask live beside it
            from mingpt_c import cuda
            self.m = cuda.zeros(self.params.shape)
            self.v = cuda.zeros(self.params.shape)
            if isinstance(self.decay_mask, np.ndarray):
                self.decay_mask = cuda.to_device(self.decay_mask)

    def load_moments(self, m: np.ndarray, v: np.ndarray) -> None:
        """Sets both moments from host arrays (a checkpoint's)."""
        for dst, src in ((self.m, m), (self.v, v)):
            if isinstance(dst, np.ndarray):
                dst[...] = src
            else:
                dst.copy_from(np.ascontiguousarray(src, np.float32))

    def step(self, grads: np.ndarray, lr: float) -> float:
        """One update; returns the gradient norm before clipping. A
        non-finite norm skips the update (the caller decides what to do)."""
        norm = ops.global_norm(grads)
        if not math.isfinite(norm):
            return norm
        scale = 1.0
        if self.grad_clip > 0:  # as torch.nn.utils.clip_grad_norm_
            scale = min(1.0, self.grad_clip / (norm + 1e-6))
        self.t += 1
        ops.adamw_update(self.params, grads, self.m, self.v, self.t, lr, self.beta1, self.beta2,
                         self.eps, self.weight_decay, self.decay_mask, scale)
        return norm


class WeightAverage:
    """An exponential moving average of the weights (Polyak and Juditsky
    1992), the evaluated model of a run trained with one: after optimizer
    step t,

        avg = d_t avg + (1 - d_t) params,   d_t = min(decay, (1 + t) / (10 + t))

    The ramp of d_t lets the first steps, far from where the run goes, fade
    fast (TensorFlow's ExponentialMovingAverage with num_updates). With
    decay 0.999 the average spans about the last thousand steps: late in a
    run it smooths the noise of the last updates, as the Transformer paper's
    averaging of its last checkpoints does. avg lives where params do."""

    def __init__(self, params, decay: float, avg=None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay {decay} must be in (0, 1)")
        self.decay = decay
        self._dev = Device("cpu" if isinstance(params, np.ndarray) else "cuda")
        self.avg = (ops.copy(self._dev.empty(params.shape), params) if avg is None else
                    self._dev.put(np.array(avg, np.float32).reshape(params.shape)))

    def update(self, params, t: int) -> None:
        """After optimizer step t (1-based)."""
        ops.ema_update(self.avg, params, min(self.decay, (1.0 + t) / (10.0 + t)))

    @contextmanager
    def swapped_in(self, params):
        """params hold the average inside the block, their own values after:
        evaluation reads the model's buffer, training goes on from its own
        weights."""
        own = ops.copy(self._dev.empty(params.shape), params)
        ops.copy(params, self.avg)
        try:
            yield
        finally:
            ops.copy(params, own)

