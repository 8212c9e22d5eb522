"""The transformer block: the only place the order of a block's layers is
written (nn/stack.py runs n of them in order).

Pre-layernorm block (GPT-2, ViT; the default, pre_ln=True):
    x1 = x  + drop(proj(attn(ln_1(x))))
    x2 = x1 + drop(mlp_proj(gelu(fc(ln_2(x1)))))
Post-layernorm block (BERT, pre_ln=False):
    x1 = ln_1(x  + drop(proj(attn(x))))
    x2 = ln_2(x1 + drop(mlp_proj(gelu(fc(x1)))))
The GPT, the encoder and the ViT all run this block (through the stack);
they differ in the `causal` flag, the key padding mask, the layernorm order,
the activation (`act`: "gelu_tanh" as GPT-2, "gelu", exact erf, as BERT and
ViT, "relu" as the encoder-decoder Transformer's encoder, or "silu" (swish)
as MarianMT), the embedding and the head.

Activations live in preallocated buffers (BlockActs) sized for one (B, T), so a
training step allocates nothing in the hot path. The buffers come from the
model's Device (numpy arrays or GPU DeviceArrays): the code below is the same
for both, since every ops wrapper runs the kernel of its arguments' device.
Backward ADDS into the gradient views it is handed, like every kernel.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device

F32 = np.float32

# act name -> (forward, backward) kernels
ACTS = {"gelu_tanh": (ops.gelu_forward, ops.gelu_backward),
        "gelu": (ops.gelu_erf_forward, ops.gelu_erf_backward),
        "relu": (ops.relu_forward, ops.relu_backward),
        "silu": (ops.silu_forward, ops.silu_backward)}


class BlockActs:
    """Saved activations of one block for one (B, T). fch_gelu, the MLP's
    widest activation, can be one buffer shared by every layer (`shared`): the
    backward then recomputes it from fch (one elementwise pass, and a whole
    (B, T, 4C) buffer less per layer). The two projections' outputs (and
    their dropped-out copies) are read only within the forward, where they
    are added into the residual stream: with `branch` (another layer's
    BlockActs) a stack shares that layer's instead of keeping its own."""

    def __init__(self, B: int, T: int, C: int, NH: int, dropout: float, pre_ln: bool = True,
                 fch_gelu: np.ndarray | None = None, branch: "BlockActs | None" = None,
                 dev: Device = CPU):
        self.gelu_shared = fch_gelu is not None
        e = lambda *s: dev.empty(s)
        self.ln1, self.ln1_mean, self.ln1_rstd = e(B, T, C), e(B, T), e(B, T)
        self.qkv = e(B, T, 3 * C)
        self.atty = e(B, T, C)
        self.att = e(B, NH, T, T)
        self.attproj = e(B, T, C) if branch is None else branch.attproj
        self.res1 = e(B, T, C)
        self.ln2, self.ln2_mean, self.ln2_rstd = e(B, T, C), e(B, T), e(B, T)
        self.fch = e(B, T, 4 * C)
        self.fch_gelu = e(B, T, 4 * C) if fch_gelu is None else fch_gelu
        self.fcproj = e(B, T, C) if branch is None else branch.fcproj
        self.out = e(B, T, C)
        # post-LN: ln1 holds x1 = ln_1(res1), res2 = x1 + branch, out = ln_2(res2)
        self.res2 = None if pre_ln else e(B, T, C)
        self.drop1 = self.drop2 = None
        if dropout > 0:
            self.drop1, self.drop2 = dev.empty((B, T, C), np.uint8), dev.empty((B, T, C), np.uint8)
            self.attproj_d, self.fcproj_d = ((e(B, T, C), e(B, T, C)) if branch is None
                                             else (branch.attproj_d, branch.fcproj_d))


# Above this many bytes of GELU outputs for the whole stack, the layers share
# one buffer and the backward recomputes it; below, each layer keeps its own
# and the backward skips that pass. The bench's small config (75 MB) keeps
# them, at a peak RSS still well under PyTorch's; gpt2 (151 MB) shares.
GELU_KEEP_BYTES = 96 << 20
# A GPU has the memory to keep them (GPT-2 124M at batch 16 x 1024: 2.4 GB).
GELU_KEEP_BYTES_GPU = 16 << 30


def block_acts(n_layer: int, B: int, T: int, C: int, NH: int, dropout: float,
               pre_ln: bool = True, dev: Device = CPU) -> list[BlockActs]:
    """Activations for a stack of n_layer blocks (see GELU_KEEP_BYTES); the
    projections' outputs are the first layer's for all."""
    shared = None
    keep = GELU_KEEP_BYTES_GPU if dev.is_cuda else GELU_KEEP_BYTES
    if n_layer * B * T * 4 * C * 4 > keep:
        shared = dev.empty((B, T, 4 * C))
    acts: list[BlockActs] = []
    for _ in range(n_layer):
        acts.append(BlockActs(B, T, C, NH, dropout, pre_ln, shared, acts[0] if acts else None, dev))
    return acts


class BlockGrads:
    """Scratch gradients for one block's backward, shared by all layers."""

    def __init__(self, B: int, T: int, C: int, NH: int, dev: Device = CPU):
        z = lambda *s: dev.zeros(s)
        self.dres1 = z(B, T, C)
        self.dln = z(B, T, C)
        self.dfch = z(B, T, 4 * C)
        self.dfch_gelu = z(B, T, 4 * C)
        self.dbranch = z(B, T, C)
        self.datty = z(B, T, C)
        self.dqkv = z(B, T, 3 * C)
        self.scratch = dev.empty((B, NH, T, T))


def block_forward(a: BlockActs, x: np.ndarray, p: dict, n_head: int, eps: float,
                  causal: bool = True, key_mask=None, dropout: float = 0.0, seed: int = 0,
                  act: str = "gelu_tanh", pre_ln: bool = True):
    """x (B, T, C) -> a.out (B, T, C); p maps short names (ln_1.weight...) to views."""
    if not pre_ln:
        return _post_ln_forward(a, x, p, n_head, eps, causal, key_mask, dropout, seed, act)
    attention_half_forward(a, x, p, n_head, eps, causal, key_mask)
    return after_attention_forward(a, x, p, eps, dropout, seed, act)


def attention_half_forward(a, x: np.ndarray, p: dict, n_head: int, eps: float, causal: bool,
                           key_mask=None, attend=None) -> None:
    """The pre-LN block up to the attention output: a.ln1, a.qkv, a.att, a.atty
    (a may be any object with those buffers, as the stack's first-row last
    block). attend(qkv, out), when given, replaces the attention over the
    block's own positions: sampling attends over a KV cache (gpt/sample.py)
    with the same layer order."""
    ops.layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"], eps, a.ln1, a.ln1_mean, a.ln1_rstd)
    ops.matmul_forward(a.ln1, p["attn.c_attn.weight"], p["attn.c_attn.bias"], a.qkv)   # (B, T, 3C)
    if attend is not None:
        attend(a.qkv, a.atty)
    else:
        ops.attention_forward(a.qkv, n_head, causal, key_mask, a.atty, a.att)


def after_attention_forward(a: BlockActs, x: np.ndarray, p: dict, eps: float, dropout: float,
                            seed: int, act: str) -> np.ndarray:
    """The pre-LN block from the attention output a.atty on: its projection,
    the first residual (onto x), and the MLP half. Rows are independent here,
    so a caller may run it on a subset of the tokens (the stack's cls_only)."""
    ops.matmul_forward(a.atty, p["attn.c_proj.weight"], p["attn.c_proj.bias"], a.attproj)
    branch = a.attproj
    if dropout > 0:
        branch, _ = ops.dropout_forward(a.attproj, dropout, seed, a.attproj_d, a.drop1)
    ops.residual_forward(x, branch, a.res1)
    ops.layernorm_forward(a.res1, p["ln_2.weight"], p["ln_2.bias"], eps, a.ln2, a.ln2_mean, a.ln2_rstd)
    ops.matmul_forward(a.ln2, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], a.fch)           # (B, T, 4C)
    ACTS[act][0](a.fch, a.fch_gelu)
    ops.matmul_forward(a.fch_gelu, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"], a.fcproj)
    branch = a.fcproj
    if dropout > 0:
        branch, _ = ops.dropout_forward(a.fcproj, dropout, seed + 1, a.fcproj_d, a.drop2)
    ops.residual_forward(a.res1, branch, a.out)
    return a.out


def _post_ln_forward(a, x, p, n_head, eps, causal, key_mask, dropout, seed, act):
    ops.matmul_forward(x, p["attn.c_attn.weight"], p["attn.c_attn.bias"], a.qkv)       # (B, T, 3C)
    ops.attention_forward(a.qkv, n_head, causal, key_mask, a.atty, a.att)
    ops.matmul_forward(a.atty, p["attn.c_proj.weight"], p["attn.c_proj.bias"], a.attproj)
    branch = a.attproj
    if dropout > 0:
        branch, _ = ops.dropout_forward(a.attproj, dropout, seed, a.attproj_d, a.drop1)
    ops.residual_forward(x, branch, a.res1)
    ops.layernorm_forward(a.res1, p["ln_1.weight"], p["ln_1.bias"], eps, a.ln1, a.ln1_mean, a.ln1_rstd)
    ops.matmul_forward(a.ln1, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], a.fch)           # (B, T, 4C)
    ACTS[act][0](a.fch, a.fch_gelu)
    ops.matmul_forward(a.fch_gelu, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"], a.fcproj)
    branch = a.fcproj
    if dropout > 0:
        branch, _ = ops.dropout_forward(a.fcproj, dropout, seed + 1, a.fcproj_d, a.drop2)
    ops.residual_forward(a.ln1, branch, a.res2)
    ops.layernorm_forward(a.res2, p["ln_2.weight"], p["ln_2.bias"], eps, a.out, a.ln2_mean, a.ln2_rstd)
    return a.out


def block_backward(dx: np.ndarray, dout: np.ndarray, a: BlockActs, x: np.ndarray, p: dict,
                   g: dict, s: BlockGrads, n_head: int, causal: bool = True,
                   dropout: float = 0.0, act: str = "gelu_tanh", pre_ln: bool = True):
    """dout = dL/d(block output) -> dx (written, not added); parameter
    gradients are added into the views in g."""
    if not pre_ln:
        return _post_ln_backward(dx, dout, a, x, p, g, s, n_head, causal, dropout, act)
    after_attention_backward(dx, dout, a, p, g, s, dropout, act)
    attention_half_backward(dx, s.datty, a, x, p, g, s, n_head, causal)
    return dx


def attention_half_backward(dx: np.ndarray, datty: np.ndarray, a, x: np.ndarray, p: dict,
                            g: dict, s: BlockGrads, n_head: int, causal: bool) -> None:
    """Backward of attention_half_forward: datty = d(attention output) -> ADDS the
    gradient through ln_1 into dx; parameter gradients added into g."""
    ops.attention_backward(datty, a.qkv, a.att, n_head, causal, s.dqkv, s.scratch, accumulate=False)
    ops.matmul_backward(s.dqkv, a.ln1, p["attn.c_attn.weight"], s.dln,
                        g["attn.c_attn.weight"], g["attn.c_attn.bias"], overwrite_dx=True)
    ops.layernorm_backward(s.dln, x, p["ln_1.weight"], a.ln1_mean, a.ln1_rstd,
                           dx, g["ln_1.weight"], g["ln_1.bias"])


def after_attention_backward(dx: np.ndarray, dout: np.ndarray, a: BlockActs, p: dict, g: dict,
                             s: BlockGrads, dropout: float, act: str) -> None:
    """Backward of after_attention_forward: dx = the gradient through the
    first residual (written), s.datty = d(attention output) (written); the
    parameter gradients are added into g."""
    # out = res1 + drop(fcproj)
    ops.copy(s.dres1, dout)
    dfcproj = dout
    if dropout > 0:
        dfcproj = ops.dropout_backward(dout, a.drop2, dropout, s.dbranch, accumulate=False)
    if a.gelu_shared:   # the shared buffer holds another layer's
        ACTS[act][0](a.fch, a.fch_gelu)
    ops.matmul_backward(dfcproj, a.fch_gelu, p["mlp.c_proj.weight"], s.dfch_gelu,
                        g["mlp.c_proj.weight"], g["mlp.c_proj.bias"], overwrite_dx=True)
    ACTS[act][1](s.dfch_gelu, a.fch, s.dfch, accumulate=False)
    ops.matmul_backward(s.dfch, a.ln2, p["mlp.c_fc.weight"], s.dln,
                        g["mlp.c_fc.weight"], g["mlp.c_fc.bias"], overwrite_dx=True)
    ops.layernorm_backward(s.dln, a.res1, p["ln_2.weight"], a.ln2_mean, a.ln2_rstd,
                           s.dres1, g["ln_2.weight"], g["ln_2.bias"])
    # res1 = x + drop(attproj)
    ops.copy(dx, s.dres1)
    dattproj = s.dres1
    if dropout > 0:
        dattproj = ops.dropout_backward(s.dres1, a.drop1, dropout, s.dbranch, accumulate=False)
    ops.matmul_backward(dattproj, a.atty, p["attn.c_proj.weight"], s.datty,
                        g["attn.c_proj.weight"], g["attn.c_proj.bias"], overwrite_dx=True)


def _post_ln_backward(dx, dout, a, x, p, g, s, n_head, causal, dropout, act):
    # out = ln_2(res2)
    ops.fill(s.dres1, 0)
    ops.layernorm_backward(dout, a.res2, p["ln_2.weight"], a.ln2_mean, a.ln2_rstd,
                           s.dres1, g["ln_2.weight"], g["ln_2.bias"])
    # res2 = x1 + drop(fcproj), x1 = a.ln1: dx1 gathers both paths in s.dln
    ops.copy(s.dln, s.dres1)
    dfcproj = s.dres1
    if dropout > 0:
        dfcproj = ops.dropout_backward(s.dres1, a.drop2, dropout, s.dbranch, accumulate=False)
    if a.gelu_shared:   # the shared buffer holds another layer's
        ACTS[act][0](a.fch, a.fch_gelu)
    ops.matmul_backward(dfcproj, a.fch_gelu, p["mlp.c_proj.weight"], s.dfch_gelu,
                        g["mlp.c_proj.weight"], g["mlp.c_proj.bias"], overwrite_dx=True)
    ACTS[act][1](s.dfch_gelu, a.fch, s.dfch, accumulate=False)
    ops.matmul_backward(s.dfch, a.ln1, p["mlp.c_fc.weight"], s.dln,
                        g["mlp.c_fc.weight"], g["mlp.c_fc.bias"])
    # x1 = ln_1(res1)
    ops.fill(s.dres1, 0)
    ops.layernorm_backward(s.dln, a.res1, p["ln_1.weight"], a.ln1_mean, a.ln1_rstd,
                           s.dres1, g["ln_1.weight"], g["ln_1.bias"])
    # res1 = x + drop(attproj)
    ops.copy(dx, s.dres1)
    dattproj = s.dres1
    if dropout > 0:
        dattproj = ops.dropout_backward(s.dres1, a.drop1, dropout, s.dbranch, accumulate=False)
    ops.matmul_backward(dattproj, a.atty, p["attn.c_proj.weight"], s.datty,
                        g["attn.c_proj.weight"], g["attn.c_proj.bias"], overwrite_dx=True)
    ops.attention_backward(s.datty, a.qkv, a.att, n_head, causal, s.dqkv, s.scratch, accumulate=False)
    ops.matmul_backward(s.dqkv, x, p["attn.c_attn.weight"], dx,
                        g["attn.c_attn.weight"], g["attn.c_attn.bias"])
    return dx
