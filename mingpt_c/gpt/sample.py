"""Text generation with a KV cache.

Each new token costs one position: its q, k, v are computed, k and v are
appended to the per-layer caches (B, NH, block_size, hs), and attention runs
over the cache (mg_attention_decode). When the context outgrows the block
size, the window slides: the last block_size tokens are run again from
position 0, exactly what full recomputation (nanoGPT's crop) does, so cached
and uncached sampling pick the same tokens.

Sampling: temperature, then top-k, then top-p (nucleus) on float64
probabilities; the draw is one uniform number per token from a seeded
generator, inverted through the cumulative distribution. temperature 0 is
greedy decoding.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from mingpt_c import ops
from mingpt_c.device import to_host
from mingpt_c.errors import DataError
from mingpt_c.gpt.model import GPT
from mingpt_c.nn.block import BlockActs, after_attention_forward, attention_half_forward

F32 = np.float32


class KVCache:
    """Per-layer keys and values (B, NH, block_size, hs), on the model's
    device: on the GPU the cache never leaves it."""

    def __init__(self, model: GPT, B: int = 1):
        cfg, dev = model.cfg, model.device
        shape = (B, cfg.n_head, cfg.block_size, cfg.head_size)
        self.k = [dev.zeros(shape) for _ in range(cfg.n_layer)]
        self.v = [dev.zeros(shape) for _ in range(cfg.n_layer)]
        self.pos = 0
        self.step = _one_token_step(model, self) if B == 1 and not dev.is_cuda else None
        self._dims = (cfg.n_embd, cfg.n_head, dev)
        self._acts: dict[tuple, BlockActs] = {}

    def acts(self, B: int, Tn: int) -> BlockActs:
        """One block's buffers for Tn new positions, shared by the layers
        (each block reads its input before it writes its output) and kept
        per shape: a token's step allocates nothing."""
        if (B, Tn) not in self._acts:
            C, NH, dev = self._dims
            self._acts[(B, Tn)] = BlockActs(B, Tn, C, NH, 0.0, dev=dev)
        return self._acts[(B, Tn)]


# mg_decode_layer's fields and the GPT parameters that fill them, per block.
_LAYER = (("ln_1_w", "ln_1.weight"), ("ln_1_b", "ln_1.bias"),
          ("attn_w", "attn.c_attn.weight"), ("attn_b", "attn.c_attn.bias"),
          ("proj_w", "attn.c_proj.weight"), ("proj_b", "attn.c_proj.bias"),
          ("ln_2_w", "ln_2.weight"), ("ln_2_b", "ln_2.bias"),
          ("fc_w", "mlp.c_fc.weight"), ("fc_b", "mlp.c_fc.bias"),
          ("fcproj_w", "mlp.c_proj.weight"), ("fcproj_b", "mlp.c_proj.bias"))


def _one_token_step(model: GPT, cache: KVCache) -> ops.DecodeStep:
    """The one-position forward of one sequence, prepared once per cache: the
    C core's mg_gpt_decode_step runs the whole stack in one call (one
    parallel region instead of about 30 a token, one Python call instead of
    60), with every pointer taken and every shape checked once, by ops. The
    same layer order and kernels as block_forward, so the same bits."""
    cfg, p = model.cfg, model.p
    layers = [{field: lp[name] for field, name in _LAYER} for lp in model._layer_p]
    return ops.DecodeStep(layers, cache.k, cache.v, p["transformer.wte.weight"],
                          p["transformer.wpe.weight"], p["transformer.ln_f.weight"],
                          p["transformer.ln_f.bias"], cfg.n_head, cfg.layer_norm_eps)


def forward_cached(model: GPT, cache: KVCache, tokens: np.ndarray, one_call: bool = True) -> np.ndarray:
    """tokens (B, Tn) at positions cache.pos.. ; returns the last position's
    logits (B, V) and advances the cache. One token of one sequence goes
    through the one-call step (unless one_call is False); anything else
    through the kernels one by one, which give the same bits."""
    cfg, p = model.cfg, model.p
    B, Tn = tokens.shape
    pos = cache.pos
    if pos + Tn > cfg.block_size:
        raise DataError(f"positions {pos}..{pos + Tn - 1} exceed the block size {cfg.block_size}")
    if one_call and Tn == 1 and B == 1 and cache.step is not None:
        tok = int(tokens[0, 0])
        if not 0 <= tok < cfg.vocab_size:
            raise DataError(f"token ids must be in [0, {cfg.vocab_size})")
        logits = cache.step(tok, pos)
        cache.pos += 1
        return logits
    # The block's own layer order (nn/block.py), attending over the cache;
    # on the CPU the one-call step above is its twin, bit for bit.
    dev, C, eps = model.device, cfg.n_embd, cfg.layer_norm_eps
    ops.check_ids("tokens", tokens, cfg.vocab_size)
    wpe = p["transformer.wpe.weight"].reshape(-1)[pos * C:].reshape(-1, C)   # rows pos..
    x = ops.embedding_forward(dev.put(np.ascontiguousarray(tokens, np.int32)),
                              p["transformer.wte.weight"], wpe)               # (B, Tn, C)
    a = cache.acts(B, Tn)
    for i, lp in enumerate(model.stack.layer_p):
        def attend(qkv, out, k=cache.k[i], v=cache.v[i]):
            ops.attention_decode(qkv, k, v, pos, cfg.n_head, out)
        attention_half_forward(a, x, lp, cfg.n_head, eps, True, attend=attend)
        x = after_attention_forward(a, x, lp, eps, 0.0, 0, "gelu_tanh")     # a.out (B, Tn, C)
    if B == 1:   # the last position is the buffer's last row: a view
        last = x.reshape(-1)[(Tn - 1) * C:].reshape(1, C)
    else:
        last = dev.put(np.ascontiguousarray(to_host(x)[:, -1]))
    h, _, _ = ops.layernorm_forward(last, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    cache.pos += Tn
    return to_host(ops.matmul_forward(h, p["transformer.wte.weight"]))   # (B, V)


def forward_full(model: GPT, tokens: np.ndarray) -> np.ndarray:
    """Logits (B, V) of the last position by a full forward (no cache)."""
    return to_host(model.forward(tokens))[:, -1].copy()


def pick(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
         top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """One token id per row of logits (B, V)."""
    z = logits.astype(np.float64)
    if temperature <= 0:
        return np.argmax(z, axis=-1)
    z = z / temperature
    if top_k is not None and 0 < top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sp = np.take_along_axis(probs, order, -1)
        keep_sorted = np.cumsum(sp, -1) - sp < top_p   # always keeps the top token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    cdf = np.cumsum(probs, -1)
    u = rng.random(z.shape[0]) * cdf[:, -1]
    return np.array([min(int(np.searchsorted(c, ui, side="right")), len(c) - 1) for c, ui in zip(cdf, u)])


def generate(model: GPT, prompt: list[int], max_new_tokens: int, rng: np.random.Generator,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eot_token: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yields new token ids one at a time (stops early at eot_token)."""
    cfg = model.cfg
    ctx = list(prompt)
    if not ctx:
        raise DataError("the prompt is empty and the tokenizer has no end-of-text token to start from")
    bad = [t for t in ctx if not 0 <= t < cfg.vocab_size]
    if bad:
        raise DataError(f"prompt token {bad[0]} is outside the model's vocabulary ({cfg.vocab_size})")
    cache = KVCache(model) if use_cache else None
    logits = None
    for _ in range(max_new_tokens):
        window = ctx[-cfg.block_size:]
        if not use_cache:
            logits = forward_full(model, np.array([window], np.int32))
        elif logits is None or cache.pos + 1 > cfg.block_size or cache.pos != len(window) - 1:
            cache.pos = 0   # (re)fill: first call, or the window slid
            logits = forward_cached(model, cache, np.array([window], np.int32))
        else:
            logits = forward_cached(model, cache, np.array([[window[-1]]], np.int32))
        tok = int(pick(logits, rng, temperature, top_k, top_p)[0])
        yield tok
        if eot_token is not None and tok == eot_token:
            return
        ctx.append(tok)


def stream_text(decode: Callable, ids: Iterator[int]) -> Iterator[str]:
    """Turns ids into text pieces, holding back incomplete UTF-8 sequences."""
    got: list[int] = []
    shown = 0
    for t in ids:
        got.append(t)
        text = decode(got)
        if text.endswith("\ufffd"):
            continue
        if len(text) > shown:
            yield text[shown:]
            shown = len(text)
    text = decode(got)
    if len(text) > shown:
        yield text[shown:]
