"""BERT-style encoder on the C core: the GPT's blocks, bidirectional, with a
key padding mask, BERT's embeddings and two heads.

    x = LN_emb(wte[tokens] + wpe[:T] + tte[types]        (B, T, C)
               [+ wbi[bigram(tokens)]])
    x = block_i(x)   causal=False, key_mask, post-LN (BERT) by default
    MLM:  logits = LN(gelu(dense(x[masked]))) @ wte^T + bias   (M, V), tied decoder
    CLS:  logits = classifier(pool(x))                          (B, K)
          pool = x[:, 0] ([CLS]), or the mean or the per-channel maximum
                 over non-pad tokens (max: the gradient goes to each argmax)
    loss = mean cross-entropy (MLM: over masked positions only)

The MLM head runs on the M masked rows only (about 15% of tokens), so the
(M, V) logits cost a sixth of a full (B*T, V) head. BERT's pooler (dense +
tanh on [CLS]) is not used: the classifier reads the pooled hidden state
directly, which is what mean pooling needs and what fine-tuning recipes for
sentence encoders (all-MiniLM) do.

Parameters live in one flat buffer (model/params.Layout) under Hugging Face
BertForMaskedLM / BertForSequenceClassification names, except that each
layer's query, key and value are packed into one (3C, C) matrix
`attention.self.qkv` for the attention kernel; checkpoints split it again.

Optional hashed bigram embeddings (`bigram_buckets` > 0, fastText's n-gram
features): each position also adds the row of a (buckets, C) table picked
by a hash of (previous token, token), so a one-block model sees the pairs of
adjacent tokens directly. The table starts at zero (a fresh model computes
what it would without it) and has no BERT equivalent: such checkpoints are
ours only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import ops
from ..errors import ShapeError
from .block import BlockGrads, block_acts, block_backward, block_forward
from .gpt import _mix
from .config import ConfigBase
from .params import Layout, bind_buffers

F32 = np.float32
IGNORE = ops.IGNORE_INDEX
PREFIX = "bert."

# block.py's short names -> Hugging Face BertLayer names (qkv is ours, packed)
BLOCK_NAMES = {
    "attn.c_attn.weight": "attention.self.qkv.weight",
    "attn.c_attn.bias": "attention.self.qkv.bias",
    "attn.c_proj.weight": "attention.output.dense.weight",
    "attn.c_proj.bias": "attention.output.dense.bias",
    "ln_1.weight": "attention.output.LayerNorm.weight",
    "ln_1.bias": "attention.output.LayerNorm.bias",
    "mlp.c_fc.weight": "intermediate.dense.weight",
    "mlp.c_fc.bias": "intermediate.dense.bias",
    "mlp.c_proj.weight": "output.dense.weight",
    "mlp.c_proj.bias": "output.dense.bias",
    "ln_2.weight": "output.LayerNorm.weight",
    "ln_2.bias": "output.LayerNorm.bias",
}


@dataclass
class EncoderConfig(ConfigBase):
    vocab_size: int = 8192        # tokens, specials included (set by the tokenizer)
    block_size: int = 256         # longest input in tokens, [CLS] and [SEP] included
    n_layer: int = 2              # transformer blocks
    n_head: int = 4               # attention heads; n_embd % n_head == 0
    n_embd: int = 128             # width C (the MLP is 4C wide, as BERT's)
    type_vocab_size: int = 2      # token-type (segment) embeddings
    dropout: float = 0.1          # embeddings and each block's residual branches
    layer_norm_eps: float = 1e-12  # BERT's epsilon
    act: str = "gelu"             # "gelu" (exact erf, BERT) or "gelu_tanh"
    pre_ln: bool = False          # False: BERT's post-layernorm blocks
    pooling: str = "cls"          # classifier input: "cls" ([CLS] state), "mean" or "max" over tokens
    mlm_head: bool = True         # keep the masked-LM head
    num_labels: int = 0           # classifier classes; 0: no classifier
    pad_token_id: int = 0
    bigram_buckets: int = 0       # hashed (previous token, token) embeddings; 0: none
    extra: dict = field(default_factory=dict)  # tokenizer, label names: kept verbatim

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        self.check_sizes(("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "type_vocab_size"))
        if self.act not in ("gelu", "gelu_tanh"):
            raise ShapeError(f"act={self.act!r}: use gelu or gelu_tanh")
        if self.pooling not in ("cls", "mean", "max"):
            raise ShapeError(f"pooling={self.pooling!r}: use cls, mean or max")
        if self.bigram_buckets < 0:
            raise ShapeError(f"bigram_buckets={self.bigram_buckets} must be 0 (none) or positive")
        if self.num_labels < 0 or (self.num_labels == 1):
            raise ShapeError(f"num_labels={self.num_labels}: a classifier needs at least 2 classes")

    # Hugging Face BertConfig <-> ours
    def to_hf(self) -> dict:
        arch = "BertForSequenceClassification" if self.num_labels else "BertForMaskedLM"
        labels = self.extra.get("labels") or []
        hf = {
            "architectures": [arch], "model_type": "bert",
            "vocab_size": self.vocab_size, "hidden_size": self.n_embd,
            "num_hidden_layers": self.n_layer, "num_attention_heads": self.n_head,
            "intermediate_size": 4 * self.n_embd,
            "hidden_act": "gelu" if self.act == "gelu" else "gelu_pytorch_tanh",
            "hidden_dropout_prob": self.dropout, "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": self.block_size, "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps, "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute", "tie_word_embeddings": True,
        }
        if self.num_labels:
            hf["num_labels"] = self.num_labels
            hf["id2label"] = {str(i): str(n) for i, n in enumerate(labels)}
            hf["label2id"] = {str(n): i for i, n in enumerate(labels)}
        return hf

    @classmethod
    def from_hf(cls, hf: dict) -> "EncoderConfig":
        act = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(
            hf.get("hidden_act", "gelu"))
        if act is None:
            raise ShapeError(f"hidden_act {hf.get('hidden_act')!r} is not supported (gelu only)")
        C = hf["hidden_size"]
        if hf.get("intermediate_size", 4 * C) != 4 * C:
            raise ShapeError(f"intermediate_size={hf['intermediate_size']} is not supported "
                             f"(only 4 * hidden_size = {4 * C})")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ShapeError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
        return cls(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                   n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=C,
                   type_vocab_size=hf.get("type_vocab_size", 2), dropout=0.0,
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12), act=act, pre_ln=False,
                   pad_token_id=hf.get("pad_token_id") or 0, mlm_head=False, num_labels=0)


def encoder_slots(cfg: EncoderConfig) -> list[tuple[str, tuple, str]]:
    C, V = cfg.n_embd, cfg.vocab_size
    e = PREFIX + "embeddings."
    s = [(e + "word_embeddings.weight", (V, C), "embed"),
         (e + "position_embeddings.weight", (cfg.block_size, C), "embed"),
         (e + "token_type_embeddings.weight", (cfg.type_vocab_size, C), "embed"),
         (e + "LayerNorm.weight", (C,), "ln_w"), (e + "LayerNorm.bias", (C,), "ln_b")]
    shapes = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C),
              "mlp.c_proj": (C, 4 * C)}
    for i in range(cfg.n_layer):
        p = f"{PREFIX}encoder.layer.{i}."
        for short, hf in BLOCK_NAMES.items():
            base, kind = short.rsplit(".", 1)
            if base.startswith("ln_"):
                s.append((p + hf, (C,), "ln_w" if kind == "weight" else "ln_b"))
            elif kind == "weight":  # BERT initialises every matrix alike (no residual scaling)
                s.append((p + hf, shapes[base], "weight"))
            else:
                s.append((p + hf, (shapes[base][0],), "bias"))
    if cfg.pre_ln:
        s += [(PREFIX + "encoder.ln_f.weight", (C,), "ln_w"), (PREFIX + "encoder.ln_f.bias", (C,), "ln_b")]
    if cfg.mlm_head:
        t = "cls.predictions."
        s += [(t + "transform.dense.weight", (C, C), "weight"), (t + "transform.dense.bias", (C,), "bias"),
              (t + "transform.LayerNorm.weight", (C,), "ln_w"), (t + "transform.LayerNorm.bias", (C,), "ln_b"),
              (t + "bias", (V,), "bias")]
    if cfg.num_labels:
        s += [("classifier.weight", (cfg.num_labels, C), "weight"),
              ("classifier.bias", (cfg.num_labels,), "bias")]
    if cfg.bigram_buckets:  # last: the other tensors draw the same initial values with or without it
        s.append((BIGRAMS, (cfg.bigram_buckets, C), "embed_zero"))
    return s


BIGRAMS = PREFIX + "embeddings.bigram_embeddings.weight"


def bigram_ids(tokens: np.ndarray, buckets: int) -> np.ndarray:
    """(B, T) int32 bucket of each (previous token, token) pair; the first
    position pairs with a sentinel. A multiplicative hash mixes the pair
    before the modulo, so neighbouring ids spread over the whole table."""
    t = tokens.astype(np.uint64)
    prev = np.empty_like(t)
    prev[:, 0] = np.uint64(0xFFFFFFFF)
    prev[:, 1:] = t[:, :-1]
    with np.errstate(over="ignore"):  # wrap-around is the hash
        h = (prev * np.uint64(0x9E3779B97F4A7C15)) ^ (t * np.uint64(0xC2B2AE3D27D4EB4F))
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return (h % np.uint64(buckets)).astype(np.int32)


class _Acts:
    def __init__(self, cfg: EncoderConfig, B: int, T: int, with_grads: bool):
        C = cfg.n_embd
        e = lambda *s: np.empty(s, F32)
        self.B, self.T = B, T
        self.emb = e(B, T, C)
        self.x0, self.x0_mean, self.x0_rstd = e(B, T, C), e(B, T), e(B, T)
        self.x0_drop = e(B, T, C) if cfg.dropout > 0 else None
        self.x0_mask = np.empty((B, T, C), np.uint8) if cfg.dropout > 0 else None
        self.blocks = block_acts(cfg.n_layer, B, T, C, cfg.n_head, cfg.dropout, cfg.pre_ln)
        if cfg.pre_ln:
            self.lnf, self.lnf_mean, self.lnf_rstd = e(B, T, C), e(B, T), e(B, T)
        self.grads = BlockGrads(B, T, C, cfg.n_head) if with_grads else None
        if with_grads:
            self.dx = [e(B, T, C) for _ in range(2)]
            self.dh = np.zeros((B, T, C), F32)


class Encoder:
    def __init__(self, cfg: EncoderConfig, params: np.ndarray | None = None, seed: int = 0):
        self.cfg = cfg
        bind_buffers(self, Layout(encoder_slots(cfg)), params,
                     lambda: self.layout.init(cfg, np.random.default_rng(seed)))
        self._layer_p = [self._layer_views(self.p, i) for i in range(cfg.n_layer)]
        self._layer_g = [self._layer_views(self.g, i) for i in range(cfg.n_layer)]
        self._acts: _Acts | None = None
        self._last = None

    @staticmethod
    def _layer_views(views: dict, i: int) -> dict:
        pre = f"{PREFIX}encoder.layer.{i}."
        return {short: views[pre + hf] for short, hf in BLOCK_NAMES.items()}

    def num_params(self) -> int:
        return self.layout.count(exclude_positions=False)

    def zero_grad(self) -> None:
        self.grads.fill(0)

    def _buffers(self, B: int, T: int, with_grads: bool) -> _Acts:
        a = self._acts
        if a is None or a.B != B or a.T != T or (with_grads and a.grads is None):
            self._acts = None  # free the old buffers before allocating the new ones
            a = self._acts = _Acts(self.cfg, B, T, with_grads)
        return a

    # ------------------------------------------------------------ trunk

    def hidden(self, tokens, mask, types=None, train: bool = False, seed: int = 0) -> np.ndarray:
        """tokens, mask (B, T) int32 (mask 1 = token, 0 = pad); types (B, T)
        or None (all 0). Returns the last hidden states (B, T, C), a view of
        an internal buffer valid until the next call."""
        cfg = self.cfg
        tokens = np.ascontiguousarray(tokens, np.int32)
        mask = np.ascontiguousarray(mask, np.int32)
        if tokens.ndim != 2 or mask.shape != tokens.shape:
            raise ShapeError(f"tokens {tokens.shape} and mask {mask.shape} must both be (B, T)")
        B, T = tokens.shape
        if T > cfg.block_size:
            raise ShapeError(f"sequence length {T} exceeds the model's maximum {cfg.block_size}")
        if types is not None:
            types = np.ascontiguousarray(types, np.int32)
            if types.shape != (B, T) or types.min() < 0 or types.max() >= cfg.type_vocab_size:
                raise ShapeError(f"token types must be (B, T) in [0, {cfg.type_vocab_size})")
        a = self._buffers(B, T, with_grads=train)
        drop = cfg.dropout if train else 0.0
        e = PREFIX + "embeddings."
        ops.embedding_forward(tokens, self.p[e + "word_embeddings.weight"],
                              self.p[e + "position_embeddings.weight"], a.emb)
        tte = self.p[e + "token_type_embeddings.weight"]
        if types is None:
            a.emb += tte[0]
        else:
            a.emb += tte[types]                                                  # (B, T, C)
        bigrams = None
        if cfg.bigram_buckets:
            bigrams = bigram_ids(tokens, cfg.bigram_buckets)                     # (B, T)
            a.emb += self.p[BIGRAMS][bigrams]
        ops.layernorm_forward(a.emb, self.p[e + "LayerNorm.weight"], self.p[e + "LayerNorm.bias"],
                              cfg.layer_norm_eps, a.x0, a.x0_mean, a.x0_rstd)
        x = a.x0
        if drop > 0:
            x, _ = ops.dropout_forward(a.x0, drop, _mix(seed, 0), a.x0_drop, a.x0_mask)
        for i, ba in enumerate(a.blocks):
            x = block_forward(ba, x, self._layer_p[i], cfg.n_head, cfg.layer_norm_eps, False, mask,
                              drop, _mix(seed, 2 * i + 1), act=cfg.act, pre_ln=cfg.pre_ln)
        if cfg.pre_ln:
            ops.layernorm_forward(x, self.p[PREFIX + "encoder.ln_f.weight"], self.p[PREFIX + "encoder.ln_f.bias"],
                                  cfg.layer_norm_eps, a.lnf, a.lnf_mean, a.lnf_rstd)
            x = a.lnf
        self._trunk = (tokens, mask, types, seed, train, bigrams)
        return x

    def _trunk_backward(self, dh: np.ndarray) -> None:
        """dh = dL/d(hidden) (B, T, C): adds the trunk's parameter gradients."""
        cfg = self.cfg
        tokens, mask, types, seed, _, bigrams = self._trunk
        a = self._acts
        drop = cfg.dropout
        dx, dnext = a.dx
        if cfg.pre_ln:
            dx.fill(0)
            ops.layernorm_backward(dh, a.blocks[-1].out, self.p[PREFIX + "encoder.ln_f.weight"],
                                   a.lnf_mean, a.lnf_rstd, dx, self.g[PREFIX + "encoder.ln_f.weight"],
                                   self.g[PREFIX + "encoder.ln_f.bias"])
        else:
            np.copyto(dx, dh)
        for i in range(cfg.n_layer - 1, -1, -1):
            x_in = a.blocks[i - 1].out if i > 0 else (a.x0_drop if drop > 0 else a.x0)
            block_backward(dnext, dx, a.blocks[i], x_in, self._layer_p[i], self._layer_g[i],
                           a.grads, cfg.n_head, False, drop, act=cfg.act, pre_ln=cfg.pre_ln)
            dx, dnext = dnext, dx
        dx0 = dx
        if drop > 0:
            dx0 = ops.dropout_backward(dx, a.x0_mask, drop)
        e = PREFIX + "embeddings."
        demb = dnext  # free scratch now
        demb.fill(0)
        ops.layernorm_backward(dx0, a.emb, self.p[e + "LayerNorm.weight"], a.x0_mean, a.x0_rstd,
                               demb, self.g[e + "LayerNorm.weight"], self.g[e + "LayerNorm.bias"])
        dtte = self.g[e + "token_type_embeddings.weight"]
        if types is None:
            dtte[0] += demb.sum(axis=(0, 1), dtype=np.float64).astype(F32)
        else:
            for k in range(cfg.type_vocab_size):
                dtte[k] += demb[types == k].sum(axis=0, dtype=np.float64).astype(F32)
        ops.embedding_backward(demb, tokens, cfg.vocab_size, cfg.block_size,
                               self.g[e + "word_embeddings.weight"], self.g[e + "position_embeddings.weight"])
        if bigrams is not None:  # the same scatter, by bucket
            ops.embedding_backward(demb, bigrams, cfg.bigram_buckets, cfg.block_size, self.g[BIGRAMS],
                                   need_dwpe=False)

    # ------------------------------------------------------------ heads

    def pool(self, h: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, T, C) -> (B, C): the [CLS] state, or the mean or the maximum
        over real tokens ([CLS] and [SEP] included). Also returns, for max
        pooling, the (B, C) token index each maximum came from (the
        backward's scatter), else None."""
        if self.cfg.pooling == "cls":
            return np.ascontiguousarray(h[:, 0, :]), None
        if self.cfg.pooling == "max":
            arg = np.where(mask[:, :, None] != 0, h, -np.inf).argmax(1)
            return np.ascontiguousarray(np.take_along_axis(h, arg[:, None, :], 1)[:, 0, :]), arg
        m = mask.astype(F32)
        return np.ascontiguousarray((h * m[:, :, None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]), None

    def classify(self, tokens, mask, labels=None, train: bool = False, seed: int = 0, types=None):
        """Classifier logits (B, K); with labels (B,) also the mean loss:
        returns (logits, loss)."""
        if not self.cfg.num_labels:
            raise ShapeError("this model has no classifier head (num_labels=0): train one with "
                             "`mingpt encoder train`")
        h = self.hidden(tokens, mask, types, train, seed)
        mask = self._trunk[1]
        pooled, arg = self.pool(h, mask)                                         # (B, C)
        logits = ops.matmul_forward(pooled, self.p["classifier.weight"], self.p["classifier.bias"])
        self._last = None
        if labels is None:
            return logits, None
        labels = np.ascontiguousarray(labels, np.int32)
        B = logits.shape[0]
        if labels.shape != (B,):
            raise ShapeError(f"labels have shape {labels.shape}, expected ({B},)")
        losses, probs = ops.crossentropy_forward(logits.copy(), labels, IGNORE)
        loss = float(losses.sum(dtype=np.float64) / B)
        if train:
            self._last = ("cls", pooled, probs, labels, B, arg)
        return logits, loss

    def mlm(self, tokens, mask, targets, train: bool = False, seed: int = 0, types=None) -> float:
        """Masked-LM loss: mean cross-entropy over positions whose target is
        not -100 (the unmasked positions take no part)."""
        if not self.cfg.mlm_head:
            raise ShapeError("this model has no masked-LM head")
        cfg = self.cfg
        h = self.hidden(tokens, mask, types, train, seed)
        targets = np.ascontiguousarray(targets, np.int32)
        if targets.shape != h.shape[:2]:
            raise ShapeError(f"targets have shape {targets.shape}, expected {h.shape[:2]}")
        sel = np.flatnonzero(targets.reshape(-1) != IGNORE)                      # (M,)
        M = sel.size
        self._last = None
        if M == 0:
            if train:
                self._last = ("none",)
            return 0.0
        t = "cls.predictions."
        hs = h.reshape(-1, cfg.n_embd)[sel]                                      # (M, C)
        d1 = ops.matmul_forward(hs, self.p[t + "transform.dense.weight"], self.p[t + "transform.dense.bias"])
        d2 = ops.gelu_erf_forward(d1) if cfg.act == "gelu" else ops.gelu_forward(d1)
        d3, mean, rstd = ops.layernorm_forward(d2, self.p[t + "transform.LayerNorm.weight"],
                                               self.p[t + "transform.LayerNorm.bias"], cfg.layer_norm_eps)
        logits = ops.matmul_forward(d3, self.p[PREFIX + "embeddings.word_embeddings.weight"],
                                    self.p[t + "bias"])                          # (M, V)
        tsel = np.ascontiguousarray(targets.reshape(-1)[sel])
        losses, probs = ops.crossentropy_forward(logits, tsel, IGNORE, probs=logits)
        loss = float(losses.sum(dtype=np.float64) / M)
        if train:
            self._last = ("mlm", sel, hs, d1, d2, d3, mean, rstd, probs, tsel, M)
        return loss

    # ------------------------------------------------------------ backward

    def backward(self, loss_scale: float = 1.0) -> None:
        """Adds d(loss * loss_scale)/d(params) into self.grads, for the last
        classify(..., labels, train=True) or mlm(..., train=True)."""
        if self._last is None:
            raise RuntimeError("backward() needs a training forward (classify or mlm, train=True) first")
        cfg = self.cfg
        a = self._acts
        dh = a.dh
        dh.fill(0)
        kind = self._last[0]
        if kind == "cls":
            _, pooled, probs, labels, B, arg = self._last
            dlogits = ops.crossentropy_backward(np.full(B, loss_scale / B, F32), probs, labels, IGNORE, probs)
            dpooled, _, _ = ops.matmul_backward(dlogits, pooled, self.p["classifier.weight"], None,
                                                self.g["classifier.weight"], self.g["classifier.bias"])
            mask = self._trunk[1]
            if cfg.pooling == "cls":
                dh[:, 0, :] = dpooled
            elif cfg.pooling == "max":
                np.put_along_axis(dh, arg[:, None, :], dpooled[:, None, :], 1)
            else:
                m = mask.astype(F32)
                dh[...] = (dpooled / np.maximum(m.sum(1), 1)[:, None])[:, None, :] * m[:, :, None]
        elif kind == "mlm":
            _, sel, hs, d1, d2, d3, mean, rstd, probs, tsel, M = self._last
            t = "cls.predictions."
            wte = PREFIX + "embeddings.word_embeddings.weight"
            dlogits = ops.crossentropy_backward(np.full(M, loss_scale / M, F32), probs, tsel, IGNORE, probs)
            dd3, _, _ = ops.matmul_backward(dlogits, d3, self.p[wte], None, self.g[wte], self.g[t + "bias"])
            dd2, _, _ = ops.layernorm_backward(dd3, d2, self.p[t + "transform.LayerNorm.weight"], mean, rstd,
                                               None, self.g[t + "transform.LayerNorm.weight"],
                                               self.g[t + "transform.LayerNorm.bias"])
            dd1 = ops.gelu_erf_backward(dd2, d1) if cfg.act == "gelu" else ops.gelu_backward(dd2, d1)
            dhs, _, _ = ops.matmul_backward(dd1, hs, self.p[t + "transform.dense.weight"], None,
                                            self.g[t + "transform.dense.weight"], self.g[t + "transform.dense.bias"])
            dh.reshape(-1, cfg.n_embd)[sel] = dhs  # sel holds each row once: a plain scatter
        self._trunk_backward(dh)
        self._last = None
