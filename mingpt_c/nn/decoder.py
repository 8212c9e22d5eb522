"""The decoder block of the encoder-decoder Transformer ("Attention is all
you need") and its stack: three residual sublayers, the middle one
attending over the encoder's output.

Post-layernorm (the paper's, pre_ln=False):
    x1 = LN_1(x  + drop(SelfAttn(x)))            causal
    x2 = LN_2(x1 + drop(CrossAttn(x1, mem)))     queries from x1, keys and values from mem
    x3 = LN_3(x2 + drop(FFN(x2)))                FFN(h) = fc2(act(fc1(h)))
Pre-layernorm (pre_ln=True):
    x1 = x  + drop(SelfAttn(LN_1(x)))
    x2 = x1 + drop(CrossAttn(LN_2(x1), mem))
    x3 = x2 + drop(FFN(LN_3(x2)))

mem (B, S, C) is the encoder's output; src_mask (B, S) int32 marks its real
tokens (0: padding, never attended). Each layer projects mem once to its
packed keys and values kv = mem @ W_kv^T + b_kv (B, S, 2C); decoding
computes them once per source (DecodeCache) and each new token attends
over them: the beam rows of a source share them, a decoding step running
a source's rows as that many queries of one cross-attention call.

One function pair runs a residual sublayer of either order (sublayer_forward
/ sublayer_backward); the three sublayers differ only in their branch f,
given as a forward and a backward (SelfAttention, CrossAttention, FFN). The
decoding step (DecoderStack.step) runs the same sublayers with the self-
attention reading and extending a KV cache, so the order of the layers is
written once, here.

Every training buffer lives on the stack's device (numpy arrays or GPU
DeviceArrays; the ops run the kernels of their arguments' device). Decoding
(step, pack, DecodeCache) runs on the CPU.

The encoder side is nn/stack.py's Stack (bidirectional, with the source's
key padding mask). Names of the layer tensors follow Hugging Face's
MarianMT/BART decoder layers (self_attn, self_attn_layer_norm, encoder_attn,
encoder_attn_layer_norm, fc1, fc2, final_layer_norm), with the query, key
and value of the self-attention packed into one (3C, C) `qkv_proj` and the
cross-attention's key and value into one (2C, C) `kv_proj`.

Dropout: layer i's three sublayers draw their masks from mix_seed(seed,
3i + 1 .. 3i + 3) (nn/seeds.py). There is no dropout on the attention
probabilities.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device
from mingpt_c.errors import ShapeError
from mingpt_c.nn.block import ACTS
from mingpt_c.nn.seeds import mix_seed

F32 = np.float32


def _e(*shape) -> np.ndarray:
    return np.empty(shape, F32)


def linear(p: dict, name: str, x: np.ndarray, out: np.ndarray, packed: dict | None = None) -> np.ndarray:
    """out = x @ p[name.weight]^T + p[name.bias]; packed (name ->
    ops.PackedWeight), given while decoding: the weight packed once for
    every step (the same bits)."""
    return ops.matmul_forward(x, p[name + ".weight"], p[name + ".bias"], out,
                              packed=packed.get(name) if packed else None)

# ---------------------------------------------------------------- one sublayer


class SubActs:
    """Saved activations of one residual sublayer for one (B, T):
    h   the branch's input: LN(x) (pre-LN) or x itself (post-LN, not copied)
    y   the branch's output; yd, mask its dropped-out copy and the mask
    res x + drop(y): the output (pre-LN) or the layernorm's input (post-LN)
    out LN(res) (post-LN only); mean, rstd the layernorm's statistics."""

    def __init__(self, B: int, T: int, C: int, dropout: float, pre_ln: bool, dev: Device = CPU):
        e = lambda *s: dev.empty(s)
        self.ln = e(B, T, C)                   # pre: LN(x); post: LN(res), the output
        self.mean, self.rstd = e(B, T), e(B, T)
        self.y = e(B, T, C)
        self.res = e(B, T, C)
        self.yd = self.mask = None
        if dropout > 0:
            self.yd, self.mask = e(B, T, C), dev.empty((B, T, C), np.uint8)


def sublayer_forward(s: SubActs, x: np.ndarray, ln: tuple, branch, pre_ln: bool, eps: float,
                     dropout: float, seed: int) -> np.ndarray:
    """x (B, T, C) -> the sublayer's output (a buffer of s). ln: the
    layernorm's (weight, bias); branch.forward(h, y) writes y = f(h)."""
    h = x
    if pre_ln:
        h = ops.layernorm_forward(x, ln[0], ln[1], eps, s.ln, s.mean, s.rstd)[0]
    branch.forward(h, s.y)
    y = s.y
    if dropout > 0:
        y, _ = ops.dropout_forward(s.y, dropout, seed, s.yd, s.mask)
    ops.residual_forward(x, y, s.res)
    if pre_ln:
        return s.res
    return ops.layernorm_forward(s.res, ln[0], ln[1], eps, s.ln, s.mean, s.rstd)[0]


class SubGrads:
    """Backward scratch of one sublayer, shared by every sublayer of a stack."""

    def __init__(self, B: int, T: int, C: int, dev: Device = CPU):
        self.dres, self.dy, self.dh = (dev.empty((B, T, C)) for _ in range(3))


def sublayer_backward(dx: np.ndarray, dout: np.ndarray, s: SubActs, x: np.ndarray, ln: tuple,
                      dln: tuple, branch, pre_ln: bool, dropout: float, sg: SubGrads) -> None:
    """dout = d(loss)/d(sublayer output) -> dx = d(loss)/d(x), written.
    dln: the layernorm's gradient views; branch.backward(dy, h, dh,
    accumulate) writes or adds d(loss)/d(h) and adds its parameters'."""
    if pre_ln:
        # out = x + drop(f(LN(x)))
        ops.copy(dx, dout)
        dy = dout if dropout == 0 else ops.dropout_backward(dout, s.mask, dropout, sg.dy, accumulate=False)
        branch.backward(dy, s.ln, sg.dh, accumulate=False)
        ops.layernorm_backward(sg.dh, x, ln[0], s.mean, s.rstd, dx, dln[0], dln[1])
        return
    # out = LN(res), res = x + drop(f(x))
    ops.fill(sg.dres, 0)
    ops.layernorm_backward(dout, s.res, ln[0], s.mean, s.rstd, sg.dres, dln[0], dln[1])
    ops.copy(dx, sg.dres)
    dy = sg.dres if dropout == 0 else ops.dropout_backward(sg.dres, s.mask, dropout, sg.dy, accumulate=False)
    branch.backward(dy, x, dx, accumulate=True)

# ---------------------------------------------------------------- the branches


class SelfAttention:
    """f(h) = out_proj(causal attention(qkv_proj(h))). attend(qkv, out), when
    given, replaces the attention over the block's own positions (decoding
    over a KV cache)."""

    def __init__(self, p: dict, g: dict | None, n_head: int, B: int, T: int, C: int, dev: Device = CPU):
        self.p, self.g, self.n_head = p, g, n_head
        e = lambda *s: dev.empty(s)
        self.qkv, self.atty, self.att = e(B, T, 3 * C), e(B, T, C), e(B, n_head, T, T)
        self.attend = self.packed = None

    def forward(self, h, y):
        linear(self.p, "self_attn.qkv_proj", h, self.qkv, self.packed)
        if self.attend is not None:
            self.attend(self.qkv, self.atty)
        else:
            ops.attention_forward(self.qkv, self.n_head, True, None, self.atty, self.att)
        linear(self.p, "self_attn.out_proj", self.atty, y, self.packed)

    def backward(self, dy, h, dh, accumulate, s: "DecoderGrads"):
        p, g = self.p, self.g
        ops.matmul_backward(dy, self.atty, p["self_attn.out_proj.weight"], s.datty,
                            g["self_attn.out_proj.weight"], g["self_attn.out_proj.bias"], overwrite_dx=True)
        ops.attention_backward(s.datty, self.qkv, self.att, self.n_head, True, s.dqkv, s.scratch,
                               accumulate=False)
        ops.matmul_backward(s.dqkv, h, p["self_attn.qkv_proj.weight"], dh,
                            g["self_attn.qkv_proj.weight"], g["self_attn.qkv_proj.bias"],
                            overwrite_dx=not accumulate)


class CrossAttention:
    """f(h) = out_proj(attention(q_proj(h) over kv)), kv = kv_proj(mem)
    (B, S, 2C), set by the stack before the forward (self.kv, self.mem,
    self.src_mask). The backward adds d(loss)/d(mem) into self.dmem.
    attend(q, out), when given, replaces the attention (decoding over the
    cache's keys and values)."""

    def __init__(self, p: dict, g: dict | None, n_head: int, B: int, T: int, S: int, C: int,
                 dev: Device = CPU):
        self.p, self.g, self.n_head = p, g, n_head
        e = lambda *s: dev.empty(s)
        self.q, self.atty, self.att = e(B, T, C), e(B, T, C), e(B, n_head, T, S)
        self.kv = e(B, S, 2 * C)
        self.mem = self.src_mask = self.dmem = None
        self.attend = self.packed = None

    def project(self, mem: np.ndarray, src_mask: np.ndarray) -> None:
        """kv = kv_proj(mem): once per source (and training step)."""
        self.mem, self.src_mask = mem, src_mask
        ops.matmul_forward(mem, self.p["encoder_attn.kv_proj.weight"], self.p["encoder_attn.kv_proj.bias"],
                           self.kv)

    def forward(self, h, y):
        linear(self.p, "encoder_attn.q_proj", h, self.q, self.packed)
        if self.attend is not None:
            self.attend(self.q, self.atty)
        else:
            ops.cross_attention_forward(self.q, self.kv, self.n_head, self.src_mask, self.atty, self.att)
        linear(self.p, "encoder_attn.out_proj", self.atty, y, self.packed)

    def backward(self, dy, h, dh, accumulate, s: "DecoderGrads"):
        p, g = self.p, self.g
        ops.matmul_backward(dy, self.atty, p["encoder_attn.out_proj.weight"], s.datty,
                            g["encoder_attn.out_proj.weight"], g["encoder_attn.out_proj.bias"], overwrite_dx=True)
        ops.cross_attention_backward(s.datty, self.q, self.kv, self.att, self.n_head, s.dq, s.dkv, s.cscratch,
                                     accumulate=False)
        ops.matmul_backward(s.dq, h, p["encoder_attn.q_proj.weight"], dh,
                            g["encoder_attn.q_proj.weight"], g["encoder_attn.q_proj.bias"],
                            overwrite_dx=not accumulate)
        # kv = kv_proj(mem): every layer adds its share of d(mem)
        ops.matmul_backward(s.dkv, self.mem, p["encoder_attn.kv_proj.weight"], self.dmem,
                            g["encoder_attn.kv_proj.weight"], g["encoder_attn.kv_proj.bias"])


class FFN:
    """f(h) = fc2(act(fc1(h))), 4C wide in the middle."""

    def __init__(self, p: dict, g: dict | None, act: str, B: int, T: int, C: int, dev: Device = CPU):
        self.p, self.g, self.act = p, g, ACTS[act]
        self.fch, self.fca = dev.empty((B, T, 4 * C)), dev.empty((B, T, 4 * C))
        self.packed = None

    def forward(self, h, y):
        linear(self.p, "fc1", h, self.fch, self.packed)        # (B, T, 4C)
        self.act[0](self.fch, self.fca)
        linear(self.p, "fc2", self.fca, y, self.packed)

    def backward(self, dy, h, dh, accumulate, s: "DecoderGrads"):
        p, g = self.p, self.g
        ops.matmul_backward(dy, self.fca, p["fc2.weight"], s.dfca, g["fc2.weight"], g["fc2.bias"],
                            overwrite_dx=True)
        self.act[1](s.dfca, self.fch, s.dfch, accumulate=False)
        ops.matmul_backward(s.dfch, h, p["fc1.weight"], dh, g["fc1.weight"], g["fc1.bias"],
                            overwrite_dx=not accumulate)


class _Bound:
    """A branch with the shared backward scratch bound in (the sublayer
    functions call backward(dy, h, dh, accumulate))."""

    def __init__(self, branch, s):
        self.branch, self.s = branch, s

    def forward(self, h, y):
        self.branch.forward(h, y)

    def backward(self, dy, h, dh, accumulate):
        self.branch.backward(dy, h, dh, accumulate, self.s)

# ---------------------------------------------------------------- the stack

SUBLAYERS = (("self", "self_attn_layer_norm"), ("cross", "encoder_attn_layer_norm"), ("ffn", "final_layer_norm"))

# The products a decoding step runs once per position (kv_proj runs once per source).
STEP_LINEARS = ("self_attn.qkv_proj", "self_attn.out_proj", "encoder_attn.q_proj", "encoder_attn.out_proj",
                "fc1", "fc2")


class DecoderLayerActs:
    """One decoder layer's buffers for (B, T) targets over (B, S) sources."""

    def __init__(self, p: dict, g: dict | None, B: int, T: int, S: int, C: int, NH: int, act: str,
                 dropout: float, pre_ln: bool, dev: Device = CPU):
        self.branches = {"self": SelfAttention(p, g, NH, B, T, C, dev),
                         "cross": CrossAttention(p, g, NH, B, T, S, C, dev),
                         "ffn": FFN(p, g, act, B, T, C, dev)}
        self.subs = {k: SubActs(B, T, C, dropout, pre_ln, dev) for k, _ in SUBLAYERS}
        self.ins: dict = {}    # each sublayer's input, for the backward


class DecoderGrads:
    """Backward scratch shared by every layer."""

    def __init__(self, B: int, T: int, S: int, C: int, NH: int, dev: Device = CPU):
        e = lambda *s: dev.empty(s)
        self.sub = SubGrads(B, T, C, dev)
        self.datty, self.dqkv, self.scratch = e(B, T, C), e(B, T, 3 * C), e(B, NH, T, T)
        self.dq, self.dkv, self.cscratch = e(B, T, C), e(B, S, 2 * C), e(B, NH, T, S)
        self.dfca, self.dfch = e(B, T, 4 * C), e(B, T, 4 * C)
        self.dx = [e(B, T, C), e(B, T, C)]


class DecoderActs:
    """A decoder stack's buffers for one (B, T, S)."""

    def __init__(self, stack: "DecoderStack", B: int, T: int, S: int, with_grads: bool, dev=None):
        C, NH, dev = stack.n_embd, stack.n_head, dev or stack.device
        self.B, self.T, self.S = B, T, S
        self.layers = [DecoderLayerActs(stack.layer_p[i], stack.layer_g[i], B, T, S, C, NH, stack.act,
                                        stack.dropout, stack.pre_ln, dev) for i in range(stack.n_layer)]
        self.grads = DecoderGrads(B, T, S, C, NH, dev) if with_grads else None
        self.x_in, self.drop = None, 0.0

    def cross_attention_maps(self) -> list:
        """Each layer's cross-attention probabilities (B, NH, T, S) of the
        last forward, on the device."""
        return [la.branches["cross"].att for la in self.layers]


class DecoderStack:
    """n_layer decoder layers: their views, buffers and the loops over them.
    views(buf, i): layer i's tensors under the short names above
    (self_attn.qkv_proj.weight, ...)."""

    def __init__(self, n_layer: int, n_embd: int, n_head: int, eps: float, dropout: float, params, grads,
                 views, act: str = "relu", pre_ln: bool = False, device: Device = CPU):
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.eps, self.dropout, self.act, self.pre_ln = eps, dropout, act, pre_ln
        self.device = device
        self.layer_p = [views(params, i) for i in range(n_layer)]
        self.layer_g = [views(grads, i) for i in range(n_layer)] if grads is not None else [None] * n_layer

    def acts(self, B: int, T: int, S: int, with_grads: bool, dev=None) -> DecoderActs:
        """Buffers for (B, T) targets over (B, S) sources, from dev (default
        the stack's device; or a model's Arena)."""
        return DecoderActs(self, B, T, S, with_grads, dev)

    def _ln(self, views: dict, name: str) -> tuple:
        return views[name + ".weight"], views[name + ".bias"]

    def pack(self) -> list[dict]:
        """Each layer's step weights packed once (name -> ops.PackedWeight),
        for a decoding loop's many products: a snapshot of the weights."""
        return [{name: ops.PackedWeight(p[name + ".weight"]) for name in STEP_LINEARS} for p in self.layer_p]

    def project_memory(self, a: DecoderActs, mem: np.ndarray, src_mask: np.ndarray, dmem=None) -> None:
        """Each layer's cross-attention keys and values of mem (B, S, C);
        the backward will add d(loss)/d(mem) into dmem."""
        for la in a.layers:
            la.branches["cross"].project(mem, src_mask)
            la.branches["cross"].dmem = dmem

    def forward(self, a: DecoderActs, x: np.ndarray, dropout: float = 0.0, seed: int = 0) -> np.ndarray:
        """x (B, T, C), the target embeddings -> the last layer's output;
        project_memory first. x must stay unchanged until the backward."""
        a.x_in, a.drop = x, dropout
        for i, la in enumerate(a.layers):
            p = self.layer_p[i]
            for j, (name, ln) in enumerate(SUBLAYERS):
                la.ins[name] = x
                x = sublayer_forward(la.subs[name], x, self._ln(p, ln), la.branches[name], self.pre_ln,
                                     self.eps, dropout, mix_seed(seed, 3 * i + j + 1))
        return x

    def backward(self, a: DecoderActs, dout: np.ndarray) -> np.ndarray:
        """dout = d(loss)/d(stack output) -> d(loss)/d(x) (a buffer of a);
        parameter gradients and d(mem) are added."""
        s = a.grads
        dx, dnext = s.dx
        ops.copy(dx, dout)
        for i in range(self.n_layer - 1, -1, -1):
            la, p, g = a.layers[i], self.layer_p[i], self.layer_g[i]
            for name, ln in reversed(SUBLAYERS):
                sublayer_backward(dnext, dx, la.subs[name], la.ins[name], self._ln(p, ln), self._ln(g, ln),
                                  _Bound(la.branches[name], s), self.pre_ln, a.drop, s.sub)
                dx, dnext = dnext, dx
        return dx

    # ------------------------------------------------------------ decoding

    def step(self, a: DecoderActs, x: np.ndarray, cache: "DecodeCache", pos: int) -> np.ndarray:
        """One position for every row: x (B, 1, C), the embeddings of the
        tokens at position pos -> the last layer's output (B, 1, C). The
        self-attention appends this position's keys and values to the cache
        and attends over positions 0..pos; the cross-attention reads the
        keys and values the cache computed once per source, the source's
        beam rows as its queries: q (B, 1, C) seen as (N, beam, C) over kv
        (N, S, 2C) (the C core gives a query the same bits alone or among
        others). a: acts(B, 1, S); its cross-attention probabilities come
        out laid out (N, NH, beam, S)."""
        B, _, C = x.shape
        N, K, NH = cache.n_sources, cache.beam, self.n_head
        if B != N * K:
            raise ShapeError(f"{B} rows for a cache of {N} sources x {K} beams")
        for i, la in enumerate(a.layers):
            p = self.layer_p[i]
            sa, ca = la.branches["self"], la.branches["cross"]
            sa.attend = lambda qkv, out, i=i: ops.attention_decode(qkv, cache.k[i], cache.v[i], pos, NH, out,
                                                                   cache.scratch)
            ca.attend = lambda q, out, i=i, ca=ca: ops.cross_attention_forward(
                q.reshape(N, K, C), cache.kv[i], NH, cache.src_mask, out.reshape(N, K, C),
                ca.att.reshape(N, NH, K, -1))
            for br in la.branches.values():
                br.packed = cache.packed[i] if cache.packed else None
            for j, (name, ln) in enumerate(SUBLAYERS):
                x = sublayer_forward(la.subs[name], x, self._ln(p, ln), la.branches[name], self.pre_ln,
                                     self.eps, 0.0, 0)
            sa.attend = ca.attend = None
            for br in la.branches.values():
                br.packed = None
        cache.length = pos + 1
        return x


class DecodeCache:
    """What incremental decoding keeps for B = N x beam rows (row n * beam +
    k: source n's hypothesis k): each layer's self-attention keys and values
    so far (B, NH, maxT, hs) per row, and its cross-attention keys and
    values (N, S, 2C) per source, computed once and shared by the source's
    rows. packed: stack.pack()'s weights for the steps, or None."""

    def __init__(self, stack: DecoderStack, mem: np.ndarray, src_mask: np.ndarray, maxT: int, beam: int = 1,
                 packed: list[dict] | None = None):
        N, S, C = mem.shape
        NH, B = stack.n_head, N * beam
        self.beam, self.length, self.packed = beam, 0, packed                 # length: positions written
        self.head_packed = None                            # the model's output projection, packed (or None)
        self.src_mask = np.array(src_mask, np.int32, order="C")   # (N, S), a copy: reorder() moves rows
        self.kv = [ops.matmul_forward(mem, p["encoder_attn.kv_proj.weight"], p["encoder_attn.kv_proj.bias"])
                   for p in stack.layer_p]                                       # (N, S, 2C) each
        self.k = [np.zeros((B, NH, maxT, C // NH), F32) for _ in stack.layer_p]
        self.v = [np.zeros((B, NH, maxT, C // NH), F32) for _ in stack.layer_p]
        self.scratch = _e(B, NH, maxT)
        self.gather = None                                                   # reorder's scratch

    @property
    def n_sources(self) -> int:
        return self.kv[0].shape[0]

    def reorder(self, rows: np.ndarray) -> None:
        """Row r takes what row rows[r] held: beam search keeps its surviving
        hypotheses and drops the sources it has finished. rows come in
        groups of beam, each group the rows of one source. Only the rows
        that change are copied, and of them only the positions written; the
        buffers shrink in place (their first len(rows) rows stay one
        contiguous block)."""
        rows = np.asarray(rows, np.int64)
        K, B = self.beam, len(rows)
        src = rows // K
        if B % K or B > self.k[0].shape[0] or (src.reshape(-1, K) != src[::K, None]).any():
            raise ShapeError(f"reorder: rows must come in groups of {K} from one source")
        if (rows != np.arange(B)).any():
            if self.gather is None:
                self.gather = np.empty(self.k[0].size, F32)          # room for every row of one buffer
            for buf in self.k + self.v:                              # (B, NH, maxT, hs)
                ops.gather_rows(buf, rows, self.length, self.gather)
        keep = src[::K]
        gone = np.flatnonzero(keep != np.arange(len(keep)))
        if gone.size:
            for kv in self.kv:
                kv[gone] = kv[keep[gone]]
            self.src_mask[gone] = self.src_mask[keep[gone]]
        n = len(keep)
        self.k = [k[:B] for k in self.k]
        self.v = [v[:B] for v in self.v]
        self.kv = [kv[:n] for kv in self.kv]
        self.src_mask = self.src_mask[:n]
        self.scratch = self.scratch[:B]
