"""What every model family's class shares (GPT, Encoder, ViT, ...): its
config, its device, and one flat parameter buffer with a gradient buffer of
the same layout, their named views, and the zeroing of the gradients.

A family's class calls FlatModel.__init__ with its parameter slots and an
init() that draws a fresh buffer; it then builds its Stack (nn/stack.py),
its embeddings and its heads on the views."""
from __future__ import annotations

from typing import Callable

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device
from mingpt_c.nn.params import Layout, bind_buffers


class FlatModel:
    def __init__(self, cfg, slots: list, params: np.ndarray | None, init: Callable[[], np.ndarray],
                 device: Device = CPU):
        """params: a flat buffer to use (a checkpoint's); None: init()'s fresh
        one, drawn on the host so that every device starts from the same
        bits (init may read self.layout). device: where every buffer lives.
        Sets self.cfg, .device, .layout, .params, .grads, .p, .g."""
        self.cfg = cfg
        self.device = device
        bind_buffers(self, Layout(slots), params, init, device)

    def zero_grad(self) -> None:
        """Backward adds into the gradients: zero them before each step."""
        ops.fill(self.grads, 0)


def memory_bytes(n_params: int, cfg, B: int, T: int, train: bool, head_floats: int = 0) -> int:
    """About how many bytes a model of n_params parameters and cfg's stack
    (n_layer, n_embd, n_head) takes for batches of (B, T): the parameters
    (and, training, their gradients and AdamW's two moments), each block's
    saved activations (the T x T attention probabilities included), the
    backward's scratch and head_floats for the family's head. An estimate
    for refusing what cannot fit before anything is allocated."""
    C, L, NH = cfg.n_embd, cfg.n_layer, cfg.n_head
    per_block = B * T * 16 * C + B * NH * T * T
    floats = n_params * (4 if train else 1) + L * per_block + B * T * 4 * C + head_floats
    if train:
        floats += B * T * 12 * C + B * NH * T * T   # the backward's scratch (one block at a time)
    return 4 * floats
