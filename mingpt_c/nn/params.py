"""One flat float32 buffer with named views.

Parameters, gradients and the two AdamW moments share one layout, so the
optimizer, the gradient norm and clipping are single calls over one buffer.
Names are the Hugging Face GPT2LMHeadModel names; linear weights are stored
here in PyTorch's (out, in) layout, and checkpoint.py transposes the four
Conv1D weights GPT-2 keeps as (in, out).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mingpt_c.errors import ShapeError


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple
    offset: int
    decay: bool   # weight decay applies (matrices and embeddings, not biases or norms)
    kind: str     # "embed", "embed_zero" (an embedding that starts at zero), "weight",
                  # "proj" (residual projection), "bias", "ln_w", "ln_b"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class Layout:
    """Where each named tensor lives in the flat buffer."""

    def __init__(self, slots: list[tuple[str, tuple, str]]):
        self.slots: dict[str, Slot] = {}
        off = 0
        for name, shape, kind in slots:
            slot = Slot(name, tuple(shape), off, kind in ("embed", "embed_zero", "weight", "proj"), kind)
            self.slots[name] = slot
            off += slot.size
        self.size = off

    def views(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        """Named views of buf (a numpy array or a GPU DeviceArray)."""
        assert buf.dtype == np.float32 and buf.size == self.size
        return {n: buf[s.offset:s.offset + s.size].reshape(s.shape) for n, s in self.slots.items()}

    def zeros(self) -> np.ndarray:
        return np.zeros(self.size, np.float32)

    def decay_mask(self) -> np.ndarray:
        mask = np.zeros(self.size, np.uint8)
        for s in self.slots.values():
            if s.decay:
                mask[s.offset:s.offset + s.size] = 1
        return mask

    def init(self, cfg, rng: np.random.Generator, embd_std: float = 0.02) -> np.ndarray:
        """GPT-2 initialisation (cfg: any config with n_layer): N(0, 0.02), residual projections scaled by
        1/sqrt(2 n_layer), biases 0, layernorm weights 1. embd_std sets the
        token and position embeddings' spread apart (GPT-2: 0.02 too)."""
        buf = self.zeros()
        views = self.views(buf)
        for name, s in self.slots.items():
            if s.kind == "embed":
                views[name][...] = rng.normal(0.0, embd_std, s.shape)
            elif s.kind == "weight":
                views[name][...] = rng.normal(0.0, 0.02, s.shape)
            elif s.kind == "proj":
                views[name][...] = rng.normal(0.0, 0.02 / np.sqrt(2 * cfg.n_layer), s.shape)
            elif s.kind == "ln_w":
                views[name][...] = 1.0
        return buf

    def count(self, exclude_positions: bool = True) -> int:
        n = self.size
        if exclude_positions and "transformer.wpe.weight" in self.slots:
            n -= self.slots["transformer.wpe.weight"].size
        return n


def bind_buffers(model, layout: Layout, params: np.ndarray | None, init, device=None) -> None:
    """Gives a model its one flat parameter buffer (the one passed, or init()'s),
    a zeroed gradient buffer of the same layout, and the named views of both:
    model.layout, .params, .grads, .p, .g. Shared by the GPT, encoder and ViT.
    With a GPU device (mingpt_c.device) both buffers are copied to / made in
    its memory, and the views are views of those."""
    model.layout = layout  # init() may read it
    if params is None:
        params = init()
    if params.dtype != np.float32 or params.size != layout.size:
        raise ShapeError(f"parameter buffer has {params.size} values, the model needs {layout.size}")
    if device is not None and device.is_cuda:
        model.params, model.grads = device.put(params), device.zeros((layout.size,))
    else:
        model.params, model.grads = params, layout.zeros()
    model.p, model.g = layout.views(model.params), layout.views(model.grads)


def sub_views(views: dict, prefix: str) -> dict:
    """The views whose names start with prefix, keyed by the rest of the name
    (one block's tensors, named as nn/block.py reads them)."""
    return {k[len(prefix):]: v for k, v in views.items() if k.startswith(prefix)}
