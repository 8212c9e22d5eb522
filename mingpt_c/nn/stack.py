"""The block stack: n_layer transformer blocks of one kind, run in order.

    x_0 = the embeddings' output                      (B, T, C)
    x_{i+1} = block_i(x_i)   for i in 0..n_layer-1    nn/block.py
    out = x_n_layer                                   (B, T, C); (B, 1, C) with cls_only

The only place the loops over layers are written. The GPT, the encoder and
the ViT each hand a Stack their per-layer views and flags (causal, pre- or
post-LN, the GELU) and keep only what comes before it (embeddings) and after
it (heads, losses). The order of the layers inside a block is nn/block.py's;
the C core's one-call decode step (gpt/sample.py) is its twin, tested bit
for bit against this forward (tests/gpt/test_sample.py).

Dropout: block i draws its two masks from mix_seed(seed, 2i + 1) and that
seed + 1 (nn/seeds.py; site 0 is the embeddings'), so a step's seed fixes
every mask on any device and thread count. The backward runs the blocks in
reverse with two (B, T, C) buffers taking turns as dout and dx
(block_backward writes dx, it does not add).

cls_only (ViT): the head reads the last block's output at the first token
only, so the last block computes only what reaches it: layernorm, qkv and
attention for every token (all are keys and values of the first token's
query; the attention kernel is a small share of the block), then the
projection and the MLP on the first row alone. The output is the first row
of the full block's; a 4-layer, width-64 ViT training step on 28x28 images
with patch 7 took about 12% less time. Pre-LN blocks only: in a post-LN
block every row is needed up to the first layernorm's input.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device
from mingpt_c.errors import ShapeError
from mingpt_c.nn.block import (ACTS, BlockActs, BlockGrads, after_attention_backward,
                               after_attention_forward, attention_half_backward,
                               attention_half_forward, block_acts, block_backward, block_forward)
from mingpt_c.nn.seeds import mix_seed

# ---------------------------------------------------------------- buffers


class _FirstRowBlock:
    """Buffers of the last block with cls_only. ln_1, qkv and the attention
    run on all T rows; `rest`, a block of one row per sequence, holds
    everything from the first token's attention output on, and `grads` its
    backward scratch. The first rows (row b*T of a (B*T, C) buffer) are
    gathered as embedding lookups (ids `rows`, a zero position row) and
    scattered back by the embedding backward, on either device."""

    def __init__(self, B: int, T: int, C: int, NH: int, dropout: float, with_grads: bool,
                 dev: Device = CPU):
        e = lambda *s: dev.empty(s)
        self.ln1, self.ln1_mean, self.ln1_rstd = e(B, T, C), e(B, T), e(B, T)
        self.qkv = e(B, T, 3 * C)
        self.atty = e(B, T, C)
        self.att = e(B, NH, T, T)
        self.x_cls = e(B, 1, C)         # the first token's input: the first residual's
        self.rows = dev.put(np.arange(B, dtype=np.int32)[:, None] * T)   # (B, 1)
        self.zero_row = dev.zeros((1, C))
        self.rest = BlockActs(B, 1, C, NH, dropout, dev=dev)
        self.grads = BlockGrads(B, 1, C, NH, dev) if with_grads else None
        self.dx_cls = e(B, 1, C) if with_grads else None
        self.datty = e(B, T, C) if with_grads else None  # zeroed each step: rows > 0 stay 0


class StackActs:
    """A stack's buffers for one (B, T), on its device; a model's own
    activations (embeddings, heads) subclass it.

    blocks   BlockActs of the layers run on every row: all of them, or all
             but the last with cls_only (block_acts: GELU buffer and
             projection outputs shared when that saves memory)
    last     the first-row last block with cls_only, else None
    grads    one block's backward scratch, shared by the layers
    dx       the backward's two (B, T, C) ping-pong buffers
    dout     where the caller puts d(loss)/d(stack output) before backward:
             dx[0] (B, T, C), or a (B, 1, C) buffer with cls_only
    (grads, dx and dout only with_grads.)"""

    def __init__(self, stack: "Stack", B: int, T: int, with_grads: bool, dev=None):
        """dev: where the buffers come from (default the stack's device;
        a model rebuilding them at many shapes passes its Arena)."""
        C, NH, drop = stack.n_embd, stack.n_head, stack.dropout
        dev = dev or stack.device
        self.B, self.T = B, T
        n_full = stack.n_layer - 1 if stack.cls_only else stack.n_layer
        self.blocks = block_acts(n_full, B, T, C, NH, drop, stack.pre_ln, dev)
        self.last = _FirstRowBlock(B, T, C, NH, drop, with_grads, dev) if stack.cls_only else None
        self.grads = BlockGrads(B, T, C, NH, dev) if with_grads else None
        self.dx = self.dout = None
        if with_grads:
            self.dx = [dev.empty((B, T, C)) for _ in range(2)]
            self.dout = dev.zeros((B, 1, C)) if stack.cls_only else self.dx[0]
        self.stack_in, self.stack_drop = None, 0.0   # the last forward's input and rate

    @property
    def stack_out(self):
        """The last forward's output: (B, T, C), or (B, 1, C) with cls_only."""
        return self.last.rest.out if self.last is not None else self.blocks[-1].out

    def attention_maps(self) -> list:
        """Each layer's attention probabilities (B, NH, T, T) from the last
        forward, on the device."""
        return [ba.att for ba in self.blocks] + ([self.last.att] if self.last is not None else [])

# ---------------------------------------------------------------- the stack


class Stack:
    """n_layer blocks of one kind: their parameter and gradient views
    (layer_p, layer_g), the recipe of their buffers (StackActs) and the
    loops over them (forward, backward)."""

    def __init__(self, cfg, params, grads, views: Callable[[object, int], dict], *, causal: bool,
                 act: str = "gelu_tanh", pre_ln: bool = True, cls_only: bool = False,
                 device: Device = CPU):
        """cfg: any model config with n_layer, n_embd, n_head, layer_norm_eps
        and dropout (the training rate, which sizes the mask buffers).
        views(params, i), views(grads, i): layer i's tensors under
        nn/block.py's short names (params and grads are whatever views reads:
        a model's flat buffers or their named views)."""
        if act not in ACTS:
            raise ShapeError(f"activation {act!r} is not one of {', '.join(ACTS)}")
        if cls_only and not pre_ln:
            raise ShapeError("cls_only needs pre-LN blocks")
        self.n_layer, self.n_embd, self.n_head = cfg.n_layer, cfg.n_embd, cfg.n_head
        self.eps, self.dropout = cfg.layer_norm_eps, cfg.dropout
        self.causal, self.act, self.pre_ln, self.cls_only = causal, act, pre_ln, cls_only
        self.device = device
        self.layer_p = [views(params, i) for i in range(self.n_layer)]
        self.layer_g = [views(grads, i) for i in range(self.n_layer)]

    # ------------------------------------------------------------ forward

    def forward(self, a: StackActs, x, dropout: float = 0.0, seed: int = 0, key_mask=None):
        """x (B, T, C), the embeddings' output -> the last block's output
        (a.stack_out). dropout: this pass's rate (0 to evaluate); seed: the
        step's; key_mask (B, T) int32, 1 = token, or None. x must stay
        unchanged until the backward, which reads it."""
        a.stack_in, a.stack_drop = x, dropout
        for i, ba in enumerate(a.blocks):
            x = block_forward(ba, x, self.layer_p[i], self.n_head, self.eps, self.causal, key_mask,
                              dropout, mix_seed(seed, 2 * i + 1), self.act, self.pre_ln)   # (B, T, C)
        if a.last is not None:
            L = self.n_layer - 1
            x = self._first_row_forward(a.last, x, self.layer_p[L], dropout, mix_seed(seed, 2 * L + 1),
                                        key_mask)                                        # (B, 1, C)
        return x

    def _first_row_forward(self, lb: _FirstRowBlock, x, p: dict, dropout: float, seed: int, key_mask):
        """The last block at the first token: x (B, T, C) -> (B, 1, C)."""
        B, T, C = x.shape
        attention_half_forward(lb, x, p, self.n_head, self.eps, self.causal, key_mask)
        # the first rows of the attention output and of the input
        ops.embedding_forward(lb.rows, lb.atty.reshape(B * T, C), lb.zero_row, lb.rest.atty)
        ops.embedding_forward(lb.rows, x.reshape(B * T, C), lb.zero_row, lb.x_cls)
        return after_attention_forward(lb.rest, lb.x_cls, p, self.eps, dropout, seed, self.act)

    # ------------------------------------------------------------ backward

    def backward(self, a: StackActs):
        """a.dout = d(loss)/d(stack output) -> d(loss)/d(stack input), for the
        last forward (with its dropout rate). Returns (dx, free): dx (B, T, C)
        holds that gradient, free is the other ping-pong buffer, scratch now.
        Parameter gradients are added into the layer_g views."""
        dx, dnext = a.dx
        drop = a.stack_drop
        blocks = a.blocks
        if a.last is not None:
            L = len(blocks)
            x_in = blocks[-1].out if blocks else a.stack_in
            self._first_row_backward(dx, a.dout, a.last, x_in, self.layer_p[L], self.layer_g[L],
                                     a.grads, drop)
        for i in range(len(blocks) - 1, -1, -1):
            x_in = blocks[i - 1].out if i > 0 else a.stack_in
            block_backward(dnext, dx, blocks[i], x_in, self.layer_p[i], self.layer_g[i], a.grads,
                           self.n_head, self.causal, drop, self.act, self.pre_ln)
            dx, dnext = dnext, dx
        return dx, dnext

    def _first_row_backward(self, dx, dout, lb: _FirstRowBlock, x, p: dict, g: dict, s: BlockGrads,
                            dropout: float) -> None:
        """dout (B, 1, C) = d(loss)/d(the first-row block's output) -> dx (B,
        T, C) = d(loss)/d(its input), written; parameter gradients added into g."""
        B, T, C = x.shape
        after_attention_backward(lb.dx_cls, dout, lb.rest, p, g, lb.grads, dropout, self.act)
        # only the first token's attention output was used: the other rows of
        # datty are 0, and the kernel gives their queries a zero gradient
        ops.fill(lb.datty, 0)
        ops.embedding_backward(lb.grads.datty, lb.rows, B * T, 1, lb.datty.reshape(B * T, C),
                               need_dwpe=False)
        ops.fill(dx, 0)                                          # the first residual reaches the first rows
        ops.embedding_backward(lb.dx_cls, lb.rows, B * T, 1, dx.reshape(B * T, C), need_dwpe=False)
        attention_half_backward(dx, lb.datty, lb, x, p, g, s, self.n_head, self.causal)
