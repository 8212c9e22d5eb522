"""BERT-style encoder on the C core: the GPT's blocks, bidirectional, with a
key padding mask, BERT's embeddings and two heads.

    x = LN_emb(wte[tokens] + wpe[:T] + tte[types]        (B, T, C)
               [+ wbi[bigram(tokens)]])
    x = block_i(x)   causal=False, key_mask, post-LN (BERT) by default (nn/stack.py)
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

With device="cuda" every buffer lives in GPU memory, as the GPT's: a step
uploads its ids, mask and labels (range-checked on the host first) and reads
back the loss, and classify() the (B, K) logits. Row gathers and scatters
(the masked rows, [CLS]) are embedding lookups and their backward; mean
pooling on the GPU is the embedding scatter plus one product with diag(1/n).
Max pooling on the GPU is a host round trip (no max/argmax kernel).

Parameters live in one flat buffer (nn/params.py, Layout) under Hugging Face
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
from types import SimpleNamespace

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device, to_host
from mingpt_c.errors import ShapeError
from mingpt_c.nn.seeds import mix_seed
from mingpt_c.nn.config import ConfigBase
from mingpt_c.nn.model import FlatModel
from mingpt_c.nn.stack import Stack, StackActs

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


# ---------------------------------------------------------------- buffers


def _upload(dst, host: np.ndarray):
    """dst[...] = host (a host array), dst on either device; returns dst."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, host)
    else:
        dst.copy_from(host)
    return dst


def _host_copy(a) -> np.ndarray:
    """A fresh host array with a's values (a numpy array or a DeviceArray)."""
    return a.copy() if isinstance(a, np.ndarray) else a.numpy()


class _Acts(StackActs):
    """Activations for one (B, T), on the model's device: the stack's (blocks,
    dx...) and the embeddings' and heads'. On the GPU the batch (tokens, mask,
    types, bigram ids, labels) is range-checked on the host and uploaded into
    the int32 buffers here; on the CPU the kernels read the host arrays
    themselves."""

    def __init__(self, cfg: EncoderConfig, stack: Stack, B: int, T: int, with_grads: bool, dev: Device):
        super().__init__(stack, B, T, with_grads)
        C, K = cfg.n_embd, cfg.num_labels
        e = lambda *s: dev.empty(s)
        i32 = lambda *s: dev.empty(s, np.int32)
        self.tokens = self.mask = self.types = self.bigrams = self.labels = None  # the GPU's batch
        if dev.is_cuda:
            self.tokens, self.mask, self.types = i32(B, T), i32(B, T), i32(B, T)
            self.bigrams = i32(B, T) if cfg.bigram_buckets else None
            self.labels = i32(B) if K else None
        self.no_types = dev.zeros((B, T), np.int32)    # types=None: every token has type 0
        # Rows are gathered as embedding lookups with a zero position row (out =
        # table[ids] + 0) and scattered back by the embedding backward.
        self.zero_row = dev.zeros((1, C))
        self.cls_rows = dev.put(np.arange(B, dtype=np.int32)[:, None] * T)   # (B, 1): row b*T of (B*T, C)
        self.emb_part = e(B, T, C)                     # the embedding sum before its last term
        self.emb = e(B, T, C)
        self.x0, self.x0_mean, self.x0_rstd = e(B, T, C), e(B, T), e(B, T)
        self.x0_drop = e(B, T, C) if cfg.dropout > 0 else None
        self.x0_mask = dev.empty((B, T, C), np.uint8) if cfg.dropout > 0 else None
        if cfg.pre_ln:
            self.lnf, self.lnf_mean, self.lnf_rstd = e(B, T, C), e(B, T), e(B, T)
        if K:
            self.pooled, self.logits, self.probs, self.losses = e(B, C), e(B, K), e(B, K), e(B)
            if dev.is_cuda and cfg.pooling == "mean":
                self.pool_rows = i32(B, T)             # b for a token of row b, B for a pad
                self.pool_scale = e(B, B)              # diag(1 / tokens of row b)
                self.pool_sum = dev.zeros((B + 1, C))  # row B collects the pads
                self.dpool = dev.zeros((B + 1, C))     # row B stays 0: the pads' gradient
        if with_grads:
            self.dh = dev.zeros((B, T, C))
            if K:
                self.dlosses, self.dpooled = e(B), e(B, C)


class _MLMHead:
    """The masked-LM head's buffers for up to `cap` masked rows. M changes
    from batch to batch: a step uses views of the first M rows, and the
    buffers grow (never shrink) when a batch has more, so a step rarely
    allocates."""

    def __init__(self, cfg: EncoderConfig, cap: int, dev: Device):
        C = cfg.n_embd
        self.cap = cap
        self.widths = {"hs": C, "d1": C, "d2": C, "d3": C, "mean": 1, "rstd": 1,
                       "logits": cfg.vocab_size, "losses": 1, "dlosses": 1,
                       "dd3": C, "dd2": C, "dd1": C, "dhs": C}
        self._f32 = {k: dev.empty((cap * w,)) for k, w in self.widths.items()}
        self._sel, self._tsel = dev.empty((cap,), np.int32), dev.empty((cap,), np.int32)

    def views(self, M: int) -> SimpleNamespace:
        """The first M rows of each buffer: (M, width), or (M,) for width 1;
        sel (M, 1) and tsel (M,) int32."""
        v = SimpleNamespace(sel=self._sel[:M].reshape(M, 1), tsel=self._tsel[:M])
        for k, w in self.widths.items():
            setattr(v, k, self._f32[k][:M * w].reshape((M,) if w == 1 else (M, w)))
        return v


class Encoder(FlatModel):
    def __init__(self, cfg: EncoderConfig, params: np.ndarray | None = None, seed: int = 0,
                 device: Device = CPU):
        """A fresh initialisation (params None) draws from seed (FlatModel)."""
        super().__init__(cfg, encoder_slots(cfg), params,
                         lambda: self.layout.init(cfg, np.random.default_rng(seed)), device)
        self.stack = Stack(cfg, self.p, self.g, self._layer_views, causal=False, act=cfg.act,
                           pre_ln=cfg.pre_ln, device=device)
        self._acts: _Acts | None = None
        self._head: _MLMHead | None = None
        self._last = None

    @staticmethod
    def _layer_views(views: dict, i: int) -> dict:
        pre = f"{PREFIX}encoder.layer.{i}."
        return {short: views[pre + hf] for short, hf in BLOCK_NAMES.items()}

    def num_params(self) -> int:
        return self.layout.count(exclude_positions=False)

    def _buffers(self, B: int, T: int, with_grads: bool) -> _Acts:
        a = self._acts
        if a is None or a.B != B or a.T != T or (with_grads and a.grads is None):
            self._acts = None  # free the old buffers before allocating the new ones
            a = self._acts = _Acts(self.cfg, self.stack, B, T, with_grads, self.device)
        return a

    def _head_views(self, M: int) -> SimpleNamespace:
        if self._head is None or self._head.cap < M:
            self._head = None
            self._head = _MLMHead(self.cfg, M + M // 4, self.device)   # room for the next batches
        return self._head.views(M)

    # ------------------------------------------------------------ trunk

    def hidden(self, tokens, mask, types=None, train: bool = False, seed: int = 0):
        """tokens, mask (B, T) int32 (mask 1 = token, 0 = pad); types (B, T)
        or None (all 0). Returns the last hidden states (B, T, C), a view of
        an internal buffer (on the model's device) valid until the next call."""
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
        bigrams = bigram_ids(tokens, cfg.bigram_buckets) if cfg.bigram_buckets else None   # (B, T)
        tok_in, mask_in, types_in, bg_in = tokens, mask, types, bigrams
        if a.tokens is not None:   # the GPU: range-check here, then upload
            ops.check_ids("tokens", tokens, cfg.vocab_size)
            tok_in, mask_in = a.tokens.copy_from(tokens), a.mask.copy_from(mask)
            types_in = None if types is None else a.types.copy_from(types)
            bg_in = None if bigrams is None else a.bigrams.copy_from(bigrams)
        if types_in is None:
            types_in = a.no_types
        e = PREFIX + "embeddings."
        N, C = B * T, cfg.n_embd
        # x = wte[tokens] + wpe[:T], then += tte[types], then += the bigram rows.
        # Each += is an embedding lookup with the ids as one sequence of N
        # tokens and the sum so far as its position table (one row per token):
        # the same fp32 adds, in the same order, on either device.
        terms = [(types_in, self.p[e + "token_type_embeddings.weight"])]
        if bg_in is not None:
            terms.append((bg_in, self.p[BIGRAMS]))
        bufs = (a.emb, a.emb_part) if len(terms) % 2 == 0 else (a.emb_part, a.emb)  # the last is a.emb
        x = ops.embedding_forward(tok_in, self.p[e + "word_embeddings.weight"],
                                  self.p[e + "position_embeddings.weight"], bufs[0])
        for j, (ids, table) in enumerate(terms, 1):
            out = bufs[j % 2]
            ops.embedding_forward(ids.reshape(1, N), table, x.reshape(N, C), out.reshape(1, N, C))
            x = out                                                                  # (B, T, C)
        ops.layernorm_forward(a.emb, self.p[e + "LayerNorm.weight"], self.p[e + "LayerNorm.bias"],
                              cfg.layer_norm_eps, a.x0, a.x0_mean, a.x0_rstd)
        x = a.x0
        if drop > 0:
            x, _ = ops.dropout_forward(a.x0, drop, mix_seed(seed, 0), a.x0_drop, a.x0_mask)
        x = self.stack.forward(a, x, drop, seed, mask_in)                        # (B, T, C)
        if cfg.pre_ln:
            ops.layernorm_forward(x, self.p[PREFIX + "encoder.ln_f.weight"], self.p[PREFIX + "encoder.ln_f.bias"],
                                  cfg.layer_norm_eps, a.lnf, a.lnf_mean, a.lnf_rstd)
            x = a.lnf
        # host mask and types (pooling, the CPU's type gradient); the kernels' ids
        self._trunk = (mask, types, tok_in, types_in, bg_in)
        return x

    def _trunk_backward(self, dh) -> None:
        """dh = dL/d(hidden) (B, T, C): adds the trunk's parameter gradients."""
        cfg = self.cfg
        _, types, tok_in, types_in, bg_in = self._trunk
        a = self._acts
        drop = cfg.dropout
        if cfg.pre_ln:
            ops.fill(a.dout, 0)
            ops.layernorm_backward(dh, a.stack_out, self.p[PREFIX + "encoder.ln_f.weight"],
                                   a.lnf_mean, a.lnf_rstd, a.dout, self.g[PREFIX + "encoder.ln_f.weight"],
                                   self.g[PREFIX + "encoder.ln_f.bias"])
        else:
            ops.copy(a.dout, dh)
        dx, free = self.stack.backward(a)                                        # (B, T, C)
        dx0, demb = dx, free
        if drop > 0:            # dx is free once it is dropped out
            dx0, demb = ops.dropout_backward(dx, a.x0_mask, drop, free, accumulate=False), dx
        e = PREFIX + "embeddings."
        ops.fill(demb, 0)
        ops.layernorm_backward(dx0, a.emb, self.p[e + "LayerNorm.weight"], a.x0_mean, a.x0_rstd,
                               demb, self.g[e + "LayerNorm.weight"], self.g[e + "LayerNorm.bias"])
        dtte = self.g[e + "token_type_embeddings.weight"]
        if self.device.is_cuda:
            # the word embeddings' scatter, by type: fp32 adds in token order
            # (the GPU has no float64 sums; the CPU keeps its float64 ones below)
            ops.embedding_backward(demb, types_in, cfg.type_vocab_size, cfg.block_size, dtte,
                                   need_dwpe=False)
        elif types is None:
            dtte[0] += demb.sum(axis=(0, 1), dtype=np.float64).astype(F32)
        else:
            for k in range(cfg.type_vocab_size):
                dtte[k] += demb[types == k].sum(axis=0, dtype=np.float64).astype(F32)
        ops.embedding_backward(demb, tok_in, cfg.vocab_size, cfg.block_size,
                               self.g[e + "word_embeddings.weight"], self.g[e + "position_embeddings.weight"])
        if bg_in is not None:  # the same scatter, by bucket
            ops.embedding_backward(demb, bg_in, cfg.bigram_buckets, cfg.block_size, self.g[BIGRAMS],
                                   need_dwpe=False)

    # ------------------------------------------------------------ heads

    def pool(self, h: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, T, C) -> (B, C) on the host: the [CLS] state, or the mean or
        the maximum over real tokens ([CLS] and [SEP] included). Also
        returns, for max pooling, the (B, C) token index each maximum came
        from (the backward's scatter), else None."""
        if self.cfg.pooling == "cls":
            return np.ascontiguousarray(h[:, 0, :]), None
        if self.cfg.pooling == "max":
            arg = np.where(mask[:, :, None] != 0, h, -np.inf).argmax(1)
            return np.ascontiguousarray(np.take_along_axis(h, arg[:, None, :], 1)[:, 0, :]), arg
        m = mask.astype(F32)
        return np.ascontiguousarray((h * m[:, :, None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]), None

    def _pool_forward(self, a: _Acts, h, mask: np.ndarray):
        """a.pooled (B, C) = the pooling of h (B, T, C); returns max pooling's
        argmax (host, for the backward) or None."""
        B, T, C = a.B, a.T, self.cfg.n_embd
        pooling = self.cfg.pooling
        if pooling == "cls":   # row b*T of (B*T, C): a gather, on either device
            ops.embedding_forward(a.cls_rows, h.reshape(B * T, C), a.zero_row, a.pooled.reshape(B, 1, C))
            return None
        if pooling == "mean" and self.device.is_cuda:
            # Each row's token sum is the embedding backward's scatter of h
            # into slot b (pads into slot B), in token order as numpy sums it;
            # then one product with diag(1/n) (numpy divides: an ulp apart).
            n = np.maximum(mask.sum(1), 1)
            a.pool_rows.copy_from(np.where(mask != 0, np.arange(B)[:, None], B).astype(np.int32))
            a.pool_scale.copy_from(np.diag(1.0 / n).astype(F32))
            ops.fill(a.pool_sum, 0)
            ops.embedding_backward(h, a.pool_rows, B + 1, T, a.pool_sum, need_dwpe=False)
            ops.sgemm(a.pool_scale, a.pool_sum.reshape(-1)[:B * C].reshape(B, C), c=a.pooled)
            return None
        # The host: the CPU's pooling as it always was. On the GPU only max
        # pooling comes here, a host round trip (no max/argmax kernel has a
        # CUDA twin, or a CPU one): h (B, T, C) comes down, pooled (B, C) goes up.
        pooled, arg = self.pool(to_host(h), mask)
        _upload(a.pooled, pooled)
        return arg

    def _pool_backward(self, a: _Acts, dh, arg) -> None:
        """dh (B, T, C), zeroed = d(loss)/d(h) through the pooling, from a.dpooled."""
        B, T, C = a.B, a.T, self.cfg.n_embd
        pooling = self.cfg.pooling
        if pooling == "cls":   # dh[:, 0] = dpooled: a scatter into zeros
            ops.embedding_backward(a.dpooled.reshape(B, 1, C), a.cls_rows, B * T, 1, dh.reshape(B * T, C),
                                   need_dwpe=False)
            return
        if pooling == "mean" and self.device.is_cuda:
            # dh[b, t] = dpooled[b] / n_b at tokens, 0 at pads: the product with
            # diag(1/n), then a gather by slot (slot B is the zero row)
            ops.sgemm(a.pool_scale, a.dpooled, c=a.dpool.reshape(-1)[:B * C].reshape(B, C))
            ops.embedding_forward(a.pool_rows.reshape(B * T, 1), a.dpool, a.zero_row,
                                  dh.reshape(B * T, 1, C))
            return
        # the host, as _pool_forward (on the GPU: max pooling's round trip, dh goes up)
        dpooled = to_host(a.dpooled)
        out = dh if isinstance(dh, np.ndarray) else np.zeros(dh.shape, F32)
        if pooling == "max":
            np.put_along_axis(out, arg[:, None, :], dpooled[:, None, :], 1)
        else:
            m = self._trunk[0].astype(F32)
            out[...] = (dpooled / np.maximum(m.sum(1), 1)[:, None])[:, None, :] * m[:, :, None]
        if out is not dh:
            dh.copy_from(out)

    def classify(self, tokens, mask, labels=None, train: bool = False, seed: int = 0, types=None):
        """Classifier logits (B, K) (a host array); with labels (B,) also the
        mean loss: returns (logits, loss)."""
        if not self.cfg.num_labels:
            raise ShapeError("this model has no classifier head (num_labels=0): train one with "
                             "`mingpt encoder train`")
        h = self.hidden(tokens, mask, types, train, seed)
        a = self._acts
        B = a.B
        arg = self._pool_forward(a, h, self._trunk[0])                            # (B, C)
        ops.matmul_forward(a.pooled, self.p["classifier.weight"], self.p["classifier.bias"], a.logits)
        logits = _host_copy(a.logits)   # the head's one download: (B, K)
        self._last = None
        if labels is None:
            return logits, None
        labels = np.ascontiguousarray(labels, np.int32)
        if labels.shape != (B,):
            raise ShapeError(f"labels have shape {labels.shape}, expected ({B},)")
        lab_in = labels
        if a.labels is not None:   # the GPU: range-check here, then upload
            ops.check_ids("targets", labels, self.cfg.num_labels, allow=IGNORE)
            lab_in = a.labels.copy_from(labels)
        ops.crossentropy_forward(a.logits, lab_in, IGNORE, a.losses, a.probs)
        loss = ops.total(a.losses) / B
        if train:
            self._last = ("cls", lab_in, B, arg)
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
        N, C = h.shape[0] * h.shape[1], cfg.n_embd
        t = "cls.predictions."
        hd = self._head_views(M)
        rows = sel.astype(np.int32).reshape(M, 1)
        tsel = np.ascontiguousarray(targets.reshape(-1)[sel])
        if self.device.is_cuda:   # range-check here, then upload
            ops.check_ids("targets", tsel, cfg.vocab_size, allow=IGNORE)
            rows, tsel = hd.sel.copy_from(rows), hd.tsel.copy_from(tsel)
        # hs = h[sel] (M, C): a row gather
        ops.embedding_forward(rows, h.reshape(N, C), self._acts.zero_row, hd.hs.reshape(M, 1, C))
        ops.matmul_forward(hd.hs, self.p[t + "transform.dense.weight"], self.p[t + "transform.dense.bias"],
                           hd.d1)
        (ops.gelu_erf_forward if cfg.act == "gelu" else ops.gelu_forward)(hd.d1, hd.d2)
        ops.layernorm_forward(hd.d2, self.p[t + "transform.LayerNorm.weight"],
                              self.p[t + "transform.LayerNorm.bias"], cfg.layer_norm_eps, hd.d3, hd.mean, hd.rstd)
        ops.matmul_forward(hd.d3, self.p[PREFIX + "embeddings.word_embeddings.weight"], self.p[t + "bias"],
                           hd.logits)                                            # (M, V)
        ops.crossentropy_forward(hd.logits, tsel, IGNORE, hd.losses, hd.logits)  # probs in place
        loss = ops.total(hd.losses) / M
        if train:
            self._last = ("mlm", rows, tsel, M, hd)
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
        ops.fill(dh, 0)
        kind = self._last[0]
        if kind == "cls":
            _, lab_in, B, arg = self._last
            ops.fill(a.dlosses, loss_scale / B)
            dlogits = ops.crossentropy_backward(a.dlosses, a.probs, lab_in, IGNORE, a.probs)
            ops.matmul_backward(dlogits, a.pooled, self.p["classifier.weight"], a.dpooled,
                                self.g["classifier.weight"], self.g["classifier.bias"], overwrite_dx=True)
            self._pool_backward(a, dh, arg)
        elif kind == "mlm":
            _, rows, tsel, M, hd = self._last
            t = "cls.predictions."
            wte = PREFIX + "embeddings.word_embeddings.weight"
            ops.fill(hd.dlosses, loss_scale / M)
            dlogits = ops.crossentropy_backward(hd.dlosses, hd.logits, tsel, IGNORE, hd.logits)
            ops.matmul_backward(dlogits, hd.d3, self.p[wte], hd.dd3, self.g[wte], self.g[t + "bias"],
                                overwrite_dx=True)
            ops.fill(hd.dd2, 0)
            ops.layernorm_backward(hd.dd3, hd.d2, self.p[t + "transform.LayerNorm.weight"], hd.mean, hd.rstd,
                                   hd.dd2, self.g[t + "transform.LayerNorm.weight"],
                                   self.g[t + "transform.LayerNorm.bias"])
            (ops.gelu_erf_backward if cfg.act == "gelu" else ops.gelu_backward)(hd.dd2, hd.d1, hd.dd1,
                                                                                 accumulate=False)
            ops.matmul_backward(hd.dd1, hd.hs, self.p[t + "transform.dense.weight"], hd.dhs,
                                self.g[t + "transform.dense.weight"], self.g[t + "transform.dense.bias"],
                                overwrite_dx=True)
            # dh[sel] = dhs: sel holds each row once, so the scatter into zeros is a plain one
            N = a.B * a.T
            ops.embedding_backward(hd.dhs.reshape(M, 1, cfg.n_embd), rows, N, 1,
                                   dh.reshape(N, cfg.n_embd), need_dwpe=False)
        self._trunk_backward(dh)
        self._last = None
