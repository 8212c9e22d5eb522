"""A GPT's self-attention over a prompt, as a heatmap: row t is what token
t attends to among tokens 0..t (causal: the upper triangle is empty).

    A = mean over heads of att_layer[0, :, :, :]     (T, T), or one head's
"""
from __future__ import annotations

import numpy as np

from mingpt_c.device import to_host
from mingpt_c.errors import ShapeError
from mingpt_c.gpt.model import GPT


def self_attention(model: GPT, ids: list[int], layer: int | None = None, head: int | None = None) -> np.ndarray:
    """(T, T) attention of the prompt ids; layer, head 0-based (None: the
    last layer, the mean over heads)."""
    cfg = model.cfg
    if not ids:
        raise ShapeError("the prompt has no tokens")
    if len(ids) > cfg.block_size:
        raise ShapeError(f"the prompt has {len(ids)} tokens, the model's block is {cfg.block_size}")
    if layer is not None and not 0 <= layer < cfg.n_layer:
        raise ShapeError(f"layer {layer + 1} does not exist: the model has {cfg.n_layer} layers")
    if head is not None and not 0 <= head < cfg.n_head:
        raise ShapeError(f"head {head + 1} does not exist: each layer has {cfg.n_head} heads")
    model.forward(np.array([ids], np.int32))
    att = to_host(model.attention_maps()[cfg.n_layer - 1 if layer is None else layer])[0]   # (NH, T, T)
    return (att.mean(0) if head is None else att[head]).astype(np.float64)
