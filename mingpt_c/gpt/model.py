"""GPT (decoder-only) on the C core: embeddings, n blocks, final layernorm,
a tied language-model head, softmax cross-entropy.

    x = wte[tokens] + wpe[:T]                 (B, T, C)
    x = block_i(x)  for i in 0..n_layer-1     causal (the stack, nn/stack.py)
    logits = ln_f(x) @ wte^T                  (B, T, V)
    loss = mean cross-entropy over targets != ignore_index

Parameters, gradients and AdamW moments are flat buffers sharing one Layout.
Buffers for activations are allocated once per (B, T) and reused. With
device="cuda" all of them live in GPU memory: a step uploads its token batch
and reads back one loss scalar.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device
from mingpt_c.errors import ShapeError
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.nn.model import FlatModel
from mingpt_c.nn.model import memory_bytes as stack_memory_bytes
from mingpt_c.nn.params import Layout, sub_views
from mingpt_c.nn.seeds import mix_seed
from mingpt_c.nn.stack import Stack, StackActs

F32 = np.float32
IGNORE = ops.IGNORE_INDEX


def gpt_slots(cfg: GPTConfig) -> list[tuple[str, tuple, str]]:
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    s = [("transformer.wte.weight", (V, C), "embed"),
         ("transformer.wpe.weight", (T, C), "embed")]
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        s += [(p + "ln_1.weight", (C,), "ln_w"), (p + "ln_1.bias", (C,), "ln_b"),
              (p + "attn.c_attn.weight", (3 * C, C), "weight"), (p + "attn.c_attn.bias", (3 * C,), "bias"),
              (p + "attn.c_proj.weight", (C, C), "proj"), (p + "attn.c_proj.bias", (C,), "bias"),
              (p + "ln_2.weight", (C,), "ln_w"), (p + "ln_2.bias", (C,), "ln_b"),
              (p + "mlp.c_fc.weight", (4 * C, C), "weight"), (p + "mlp.c_fc.bias", (4 * C,), "bias"),
              (p + "mlp.c_proj.weight", (C, 4 * C), "proj"), (p + "mlp.c_proj.bias", (C,), "bias")]
    s += [("transformer.ln_f.weight", (C,), "ln_w"), ("transformer.ln_f.bias", (C,), "ln_b")]
    return s


def memory_bytes(cfg: GPTConfig, B: int, T: int, train: bool) -> int:
    """About how many bytes a GPT of cfg takes for batches of (B, T), its
    logits included (nn/model.py's estimate)."""
    return stack_memory_bytes(Layout(gpt_slots(cfg)).size, cfg, B, T, train, B * T * cfg.vocab_size)


class _Acts(StackActs):
    """The stack's buffers (blocks, dx...) and the embeddings' and head's."""

    def __init__(self, cfg: GPTConfig, stack: Stack, B: int, T: int, with_grads: bool, dev: Device):
        super().__init__(stack, B, T, with_grads)
        C, V = cfg.n_embd, cfg.vocab_size
        e = lambda *s: dev.empty(s)
        self.tokens = self.targets = None   # device copies of the batch (GPU only)
        if dev.is_cuda:
            self.tokens, self.targets = dev.empty((B, T), np.int32), dev.empty((B, T), np.int32)
        self.emb = e(B, T, C)
        self.emb_drop = e(B, T, C) if cfg.dropout > 0 else None
        self.emb_mask = dev.empty((B, T, C), np.uint8) if cfg.dropout > 0 else None
        self.lnf, self.lnf_mean, self.lnf_rstd = e(B, T, C), e(B, T), e(B, T)
        self.logits = e(B, T, V)   # becomes probs, then dlogits, in place
        self.losses = e(B, T)
        if with_grads:
            self.dlnf = dev.zeros((B, T, C))
            self.dlosses = e(B, T)


class GPT(FlatModel):
    def __init__(self, cfg: GPTConfig, params: np.ndarray | None = None, seed: int = 0,
                 embd_std: float = 0.02, device: Device = CPU):
        """A fresh initialisation (params None) draws from seed, the token and
        position embeddings with spread embd_std (see FlatModel)."""
        super().__init__(cfg, gpt_slots(cfg), params,
                         lambda: self.layout.init(cfg, np.random.default_rng(seed), embd_std), device)
        self.stack = Stack(cfg, self.p, self.g, lambda v, i: sub_views(v, f"transformer.h.{i}."),
                           causal=True, device=device)
        self._layer_p = self.stack.layer_p   # gpt/sample.py's cached forward reads them
        self._acts: _Acts | None = None
        self._last = None  # (tokens, targets, n_valid, seed) of the last training forward

    def num_params(self) -> int:
        return self.layout.count()

    def _buffers(self, B: int, T: int, with_grads: bool) -> _Acts:
        a = self._acts
        if a is None or a.B != B or a.T != T or (with_grads and a.grads is None):
            self._acts = None   # free the old shape's buffers first
            a = self._acts = _Acts(self.cfg, self.stack, B, T, with_grads, self.device)
        return a

    # ------------------------------------------------------------ forward

    def forward(self, tokens: np.ndarray, targets: np.ndarray | None = None,
                train: bool = False, seed: int = 0):
        """tokens (B, T) int32. With targets: returns the mean loss (float)
        and keeps what backward needs. Without: returns logits (B, T, V)
        (a view of an internal buffer, valid until the next call)."""
        cfg = self.cfg
        tokens = np.ascontiguousarray(tokens, np.int32)
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be (B, T), got shape {tokens.shape}")
        B, T = tokens.shape
        if T > cfg.block_size:
            raise ShapeError(f"sequence length {T} exceeds the model's block size {cfg.block_size}")
        a = self._buffers(B, T, with_grads=train)
        drop = cfg.dropout if train else 0.0
        tok_in = tokens
        if a.tokens is not None:   # the GPU: range-check here, then upload
            ops.check_ids("tokens", tokens, cfg.vocab_size)
            a.tokens.copy_from(tokens)
            tok_in = a.tokens
        ops.embedding_forward(tok_in, self.p["transformer.wte.weight"], self.p["transformer.wpe.weight"], a.emb)
        x = a.emb
        if drop > 0:
            x, _ = ops.dropout_forward(a.emb, drop, mix_seed(seed, 0), a.emb_drop, a.emb_mask)
        x = self.stack.forward(a, x, drop, seed)                                  # (B, T, C)
        ops.layernorm_forward(x, self.p["transformer.ln_f.weight"], self.p["transformer.ln_f.bias"],
                              cfg.layer_norm_eps, a.lnf, a.lnf_mean, a.lnf_rstd)
        ops.matmul_forward(a.lnf, self.p["transformer.wte.weight"], None, a.logits)  # (B, T, V)
        if targets is None:
            self._last = None
            return a.logits
        targets = np.ascontiguousarray(targets, np.int32)
        if targets.shape != (B, T):
            raise ShapeError(f"targets have shape {targets.shape}, expected {(B, T)}")
        tgt_in = targets
        if a.targets is not None:
            ops.check_ids("targets", targets, cfg.vocab_size, allow=IGNORE)
            a.targets.copy_from(targets)
            tgt_in = a.targets
        ops.crossentropy_forward(a.logits, tgt_in, IGNORE, a.losses, a.logits)  # probs in place
        n_valid = int(np.count_nonzero(targets != IGNORE))
        loss = float(ops.total(a.losses) / max(n_valid, 1))
        self._last = (tok_in, tgt_in, n_valid, seed) if train else None
        return loss

    def attention_maps(self) -> list:
        """Each layer's attention probabilities (B, NH, T, T) from the last
        forward, on the model's device."""
        return self._acts.attention_maps()

    # ------------------------------------------------------------ backward

    def backward(self, loss_scale: float = 1.0) -> None:
        """Adds d(loss * loss_scale)/d(params) into self.grads."""
        if self._last is None:
            raise RuntimeError("backward() needs a forward(tokens, targets, train=True) first")
        cfg = self.cfg
        tokens, targets, n_valid, seed = self._last
        a = self._acts
        drop = cfg.dropout
        ops.fill(a.dlosses, loss_scale / max(n_valid, 1))
        dlogits = ops.crossentropy_backward(a.dlosses, a.logits, targets, IGNORE, a.logits)
        ops.matmul_backward(dlogits, a.lnf, self.p["transformer.wte.weight"], a.dlnf,
                            self.g["transformer.wte.weight"], need_db=False, overwrite_dx=True)
        ops.fill(a.dout, 0)
        ops.layernorm_backward(a.dlnf, a.stack_out, self.p["transformer.ln_f.weight"], a.lnf_mean, a.lnf_rstd,
                               a.dout, self.g["transformer.ln_f.weight"], self.g["transformer.ln_f.bias"])
        demb, free = self.stack.backward(a)                                      # (B, T, C)
        if drop > 0:
            demb = ops.dropout_backward(demb, a.emb_mask, drop, free, accumulate=False)
        ops.embedding_backward(demb, tokens, cfg.vocab_size, cfg.block_size,
                               self.g["transformer.wte.weight"], self.g["transformer.wpe.weight"])
        self._last = None

