"""The encoder-decoder Transformer ("Attention is all you need", 2017) on
the C core.

    src (B, S) [+ </s> with src_eos], tgt_in = [<s>] + target (B, T), tgt_out = target + [</s>]
    e = drop(sqrt(C) * E_src[src] + P[:S])             sinusoidal (or learned) positions
    mem = Encoder(e, src_mask)                          nn/stack.py: bidirectional blocks
          [+ LN_enc with pre-LN]
    d = drop(sqrt(C) * E_tgt[tgt_in] + P[:T])
    h = Decoder(d, mem, src_mask)                       nn/decoder.py: self, cross, FFN sublayers
          [+ LN_dec with pre-LN]
    logits = h @ E_tgt^T [+ b]                           (B, T, V), tied to the target embedding
    loss = mean over target tokens (tgt_out != pad) of the label-smoothed
           cross-entropy (nn/loss.py)

Vocabularies: one shared (`shared_vocab`, the paper's three-way tying: the
source embedding, the target embedding and the output projection are one
matrix), or a source and a target one (the decoder's input and output tied).
Post-layernorm blocks (the paper's) by default, pre-LN as an option; ReLU
(the paper's), GELU or SiLU in the feed-forward. The special ids (padding,
the decoder's start, the end) come from the config: ours are 0, 1, 2
(seq2seq/vocab.py); an imported MarianMT model starts its decoder from its
pad id, ends its sources with </s>, adds a final logits bias and lays its
sinusoids out in halves (positions "sinusoidal_half": sin over the first
C/2 channels, cos over the rest) rather than interleaved.

Parameters live in one flat buffer (nn/params.py) under Hugging Face
MarianMTModel names, except that the self-attention's q, k, v are packed
into `qkv_proj` and the cross-attention's k, v into `kv_proj` (checkpoints
split them again). The sinusoidal table is not a parameter: the C core
computes it (the paper's interleaved sin/cos layout).

Training runs on either device (the model's, chosen at construction: every
parameter, gradient and activation lives there, and a step sends up only
the batch's ids and brings down one loss); decoding (start, step, pack)
runs on the CPU: a model trained on the GPU decodes through a CPU copy
(on_cpu()).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Arena, Device, to_host
from mingpt_c.errors import ShapeError
from mingpt_c.nn.config import ConfigBase
from mingpt_c.nn.decoder import DecodeCache, DecoderStack
from mingpt_c.nn.loss import (count_rows, log_softmax, smoothed_crossentropy_backward,
                              smoothed_crossentropy_forward, soft_target_terms)
from mingpt_c.nn.model import FlatModel
from mingpt_c.nn.params import Layout
from mingpt_c.nn.seeds import mix_seed
from mingpt_c.nn.stack import Stack, StackActs

F32 = np.float32
PAD, BOS, EOS = 0, 1, 2       # the special ids of the vocabularies trained here (seq2seq/vocab.py)
POSITIONS = ("sinusoidal", "sinusoidal_half", "learned")

ENC = "model.encoder."
DEC = "model.decoder."

# block.py's short names -> the encoder layer's tensor names
ENC_NAMES = {
    "attn.c_attn.weight": "self_attn.qkv_proj.weight", "attn.c_attn.bias": "self_attn.qkv_proj.bias",
    "attn.c_proj.weight": "self_attn.out_proj.weight", "attn.c_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "self_attn_layer_norm.weight", "ln_1.bias": "self_attn_layer_norm.bias",
    "mlp.c_fc.weight": "fc1.weight", "mlp.c_fc.bias": "fc1.bias",
    "mlp.c_proj.weight": "fc2.weight", "mlp.c_proj.bias": "fc2.bias",
    "ln_2.weight": "final_layer_norm.weight", "ln_2.bias": "final_layer_norm.bias",
}


@dataclass
class Seq2SeqConfig(ConfigBase):
    src_vocab_size: int = 64       # source tokens, specials included
    tgt_vocab_size: int = 64       # target tokens (= src_vocab_size with shared_vocab)
    shared_vocab: bool = False     # one embedding for source, target and output (three-way tying)
    max_src_len: int = 64          # longest source in tokens (positions)
    max_tgt_len: int = 64          # longest target in tokens, </s> included
    enc_layers: int = 3
    dec_layers: int = 3
    n_head: int = 4                # attention heads; n_embd % n_head == 0
    n_embd: int = 256              # d_model (the feed-forward is 4 * n_embd wide)
    dropout: float = 0.1           # embeddings and every residual branch
    layer_norm_eps: float = 1e-5
    act: str = "relu"              # feed-forward activation: relu (the paper's), gelu, gelu_tanh, silu
    pre_ln: bool = False           # False: the paper's post-layernorm sublayers
    positions: str = "sinusoidal"  # sinusoidal (the paper's, interleaved) | sinusoidal_half (Marian's) | learned
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(n_embd)
    init: str = "xavier"           # fresh weights: xavier (the paper's, fairseq's) | gpt2 (N(0, 0.02))
    logits_bias: bool = False      # a bias on the output logits (Marian's final_logits_bias)
    pad_id: int = PAD              # padding: ignored by the loss, never generated
    bos_id: int = BOS              # the decoder's first input (Marian: its pad id)
    eos_id: int = EOS              # ends every target (and every source with src_eos)
    src_eos: bool = False          # sources end with eos_id (Marian)
    reverse_target: bool = False   # targets learned and written last token first (a right-to-left model)
    extra: dict = field(default_factory=dict)   # vocabularies, data description: kept verbatim

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        self.check_sizes(("src_vocab_size", "tgt_vocab_size", "max_src_len", "max_tgt_len", "enc_layers",
                          "dec_layers", "n_head", "n_embd"))
        if self.act not in ("relu", "gelu", "gelu_tanh", "silu"):
            raise ShapeError(f"act={self.act!r}: use relu, gelu, gelu_tanh or silu")
        if self.init not in ("xavier", "gpt2"):
            raise ShapeError(f"init={self.init!r}: use xavier or gpt2")
        if self.positions not in POSITIONS:
            raise ShapeError(f"positions={self.positions!r}: use {', '.join(POSITIONS)}")
        if self.positions != "learned" and self.n_embd % 2:
            raise ShapeError(f"n-embd={self.n_embd}: sinusoidal positions need an even width")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.tgt_vocab_size:
                raise ShapeError(f"{name}={getattr(self, name)} is outside the target vocabulary")
        if self.shared_vocab and self.src_vocab_size != self.tgt_vocab_size:
            raise ShapeError("a shared vocabulary has one size: src_vocab_size must equal tgt_vocab_size")

    @property
    def n_layer(self) -> int:   # what Layout.init and the memory estimate read: the deeper side
        return max(self.enc_layers, self.dec_layers)


def seq2seq_slots(cfg: Seq2SeqConfig) -> list[tuple[str, tuple, str]]:
    C = cfg.n_embd
    if cfg.shared_vocab:
        s = [("model.shared.weight", (cfg.src_vocab_size, C), "embed")]
    else:
        s = [(ENC + "embed_tokens.weight", (cfg.src_vocab_size, C), "embed"),
             (DEC + "embed_tokens.weight", (cfg.tgt_vocab_size, C), "embed")]
    if cfg.positions == "learned":
        s += [(ENC + "embed_positions.weight", (cfg.max_src_len, C), "embed"),
              (DEC + "embed_positions.weight", (cfg.max_tgt_len + 1, C), "embed")]

    def linear(prefix, out_features, in_features):
        return [(prefix + ".weight", (out_features, in_features), "weight"), (prefix + ".bias", (out_features,), "bias")]

    def norm(prefix):
        return [(prefix + ".weight", (C,), "ln_w"), (prefix + ".bias", (C,), "ln_b")]

    for i in range(cfg.enc_layers):
        p = f"{ENC}layers.{i}."
        s += (linear(p + "self_attn.qkv_proj", 3 * C, C) + linear(p + "self_attn.out_proj", C, C)
              + norm(p + "self_attn_layer_norm") + linear(p + "fc1", 4 * C, C) + linear(p + "fc2", C, 4 * C)
              + norm(p + "final_layer_norm"))
    for i in range(cfg.dec_layers):
        p = f"{DEC}layers.{i}."
        s += (linear(p + "self_attn.qkv_proj", 3 * C, C) + linear(p + "self_attn.out_proj", C, C)
              + norm(p + "self_attn_layer_norm")
              + linear(p + "encoder_attn.q_proj", C, C) + linear(p + "encoder_attn.kv_proj", 2 * C, C)
              + linear(p + "encoder_attn.out_proj", C, C) + norm(p + "encoder_attn_layer_norm")
              + linear(p + "fc1", 4 * C, C) + linear(p + "fc2", C, 4 * C) + norm(p + "final_layer_norm"))
    if cfg.pre_ln:
        s += norm(ENC + "layer_norm") + norm(DEC + "layer_norm")
    if cfg.logits_bias:
        s.append(("final_logits_bias", (cfg.tgt_vocab_size,), "bias"))
    return s


def _embeddings(cfg: Seq2SeqConfig, views: dict) -> tuple:
    """(source embedding, target embedding) views: one matrix twice when shared."""
    if cfg.shared_vocab:
        return views["model.shared.weight"], views["model.shared.weight"]
    return views[ENC + "embed_tokens.weight"], views[DEC + "embed_tokens.weight"]


def _e(*shape) -> np.ndarray:
    return np.empty(shape, F32)


def init_params(layout: Layout, cfg: Seq2SeqConfig, seed: int) -> np.ndarray:
    """The paper's and fairseq's initialisation: every projection Xavier-
    uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), each of q, k
    and v (and the cross-attention's k and v) as its own (C, C) matrix;
    embeddings N(0, C^-1/2) (they are scaled by sqrt(C) on the way in);
    biases 0, layernorms 1 (cfg.init "gpt2": N(0, 0.02) matrices instead).
    With GPT-2's small matrices every sublayer starts near zero, the
    residual stream carries each input embedding to the tied output almost
    unchanged, and a fresh model predicts its own input token with a
    logit near sqrt(C) (a loss of 13.5 on CMUdict at width 256); Xavier
    sublayers mix it away from the first step."""
    rng = np.random.default_rng(seed)
    emb_std = cfg.n_embd ** -0.5 if cfg.scale_embeddings else 0.02
    buf = layout.init(cfg, rng, emb_std)
    if cfg.init == "gpt2":
        return buf
    views = layout.views(buf)
    C = cfg.n_embd
    for name, slot in layout.slots.items():
        if slot.kind in ("weight", "proj"):
            out_f, in_f = slot.shape
            parts = out_f // C if name.endswith(("qkv_proj.weight", "kv_proj.weight")) else 1
            rows = out_f // parts
            a = math.sqrt(6.0 / (in_f + rows))
            views[name][...] = rng.uniform(-a, a, slot.shape)
    return buf


def _first_rows(a, T: int):
    """a[:T] of a (rows, C) array on either device (a view)."""
    C = a.shape[1]
    return a.reshape(-1)[:T * C].reshape(T, C)


class _EmbActs:
    """One side's embedding buffers: out = drop(scale * E[ids] + P[:T])."""

    def __init__(self, B: int, T: int, C: int, dropout: float, dev: Device = CPU):
        self.x = dev.empty((B, T, C))
        self.xd = dev.empty((B, T, C)) if dropout > 0 else None
        self.mask = dev.empty((B, T, C), np.uint8) if dropout > 0 else None


class Seq2Seq(FlatModel):
    def __init__(self, cfg: Seq2SeqConfig, params: np.ndarray | None = None, seed: int = 0,
                 device: Device = CPU):
        """A fresh initialisation (params None) draws from seed (see
        init_params), on the host, so every device starts from the same bits."""
        C = cfg.n_embd
        super().__init__(cfg, seq2seq_slots(cfg), params, lambda: init_params(self.layout, cfg, seed), device)
        self.scale = math.sqrt(C) if cfg.scale_embeddings else 1.0
        enc = SimpleNamespace(n_layer=cfg.enc_layers, n_embd=C, n_head=cfg.n_head,
                              layer_norm_eps=cfg.layer_norm_eps, dropout=cfg.dropout)
        self.encoder = Stack(enc, self.p, self.g, self._enc_views, causal=False, act=cfg.act, pre_ln=cfg.pre_ln,
                             device=device)
        self.decoder = DecoderStack(cfg.dec_layers, C, cfg.n_head, cfg.layer_norm_eps, cfg.dropout, self.p, self.g,
                                    self._dec_views, cfg.act, cfg.pre_ln, device)
        maxT = max(cfg.max_src_len, cfg.max_tgt_len + 1)
        self.pe = (None if cfg.positions == "learned" else
                   device.put(ops.sinusoid_table(maxT, C, interleaved=cfg.positions == "sinusoidal")))
        self._acts = None
        self._arena = Arena(device)   # _buffers' memory, reused from one batch shape to the next
        self._step_acts = None
        self._last = None

    @staticmethod
    def _enc_views(views: dict, i: int) -> dict:
        return {short: views[f"{ENC}layers.{i}.{name}"] for short, name in ENC_NAMES.items()}

    @staticmethod
    def _dec_views(views: dict, i: int) -> dict:
        pre = f"{DEC}layers.{i}."
        return {k[len(pre):]: v for k, v in views.items() if k.startswith(pre)}

    def num_params(self) -> int:
        return self.layout.size

    def _bias(self, views: dict):
        return views["final_logits_bias"] if self.cfg.logits_bias else None

    # ------------------------------------------------------------ pieces

    def _positions(self, views: dict, side: str, T: int):
        if self.pe is not None:
            return _first_rows(self.pe, T)
        return _first_rows(views[(ENC if side == "src" else DEC) + "embed_positions.weight"], T)

    def _embed(self, ea: _EmbActs, ids: np.ndarray, side: str, dropout: float, seed: int) -> np.ndarray:
        """drop(scale * E[ids] + P[:T]) -> (B, T, C)."""
        T = ids.shape[1]
        table = _embeddings(self.cfg, self.p)[0 if side == "src" else 1]
        ops.embedding_forward(ids, table, self._positions(self.p, side, T), ea.x, scale=self.scale)
        if dropout > 0:
            return ops.dropout_forward(ea.x, dropout, seed, ea.xd, ea.mask)[0]
        return ea.x

    def _embed_backward(self, ea: _EmbActs, dx: np.ndarray, ids: np.ndarray, side: str, dropout: float):
        if dropout > 0:
            dx = ops.dropout_backward(dx, ea.mask, dropout, ea.x, accumulate=False)   # ea.x is free now
        B, T = ids.shape
        table = _embeddings(self.cfg, self.g)[0 if side == "src" else 1]
        learned = self.pe is None
        maxT = self.cfg.max_src_len if side == "src" else self.cfg.max_tgt_len + 1
        dwpe = self.g[(ENC if side == "src" else DEC) + "embed_positions.weight"] if learned else None
        ops.embedding_backward(dx, ids, table.shape[0], maxT if learned else T, table, dwpe,
                               need_dwpe=learned, scale=self.scale)

    def _check(self, name: str, ids: np.ndarray, V: int, max_len: int) -> np.ndarray:
        ids = np.ascontiguousarray(ids, np.int32)
        if ids.ndim != 2:
            raise ShapeError(f"{name} must be (B, T), got shape {ids.shape}")
        if ids.shape[1] > max_len:
            raise ShapeError(f"{name} has {ids.shape[1]} positions, the model at most {max_len}")
        ops.check_ids(name, ids, V)
        return ids

    def _inputs(self, src, src_mask, tgt_in) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ids checked against the vocabularies and lengths, as int32
        arrays; src_mask must have src's shape."""
        cfg = self.cfg
        src = self._check("src", src, cfg.src_vocab_size, cfg.max_src_len)
        tgt_in = self._check("tgt_in", tgt_in, cfg.tgt_vocab_size, cfg.max_tgt_len + 1)
        src_mask = np.ascontiguousarray(src_mask, np.int32)
        if src_mask.shape != src.shape:
            raise ShapeError(f"src_mask {src_mask.shape} must have src's shape {src.shape}")
        return src, src_mask, tgt_in

    def _buffers(self, B: int, S: int, T: int, with_grads: bool) -> SimpleNamespace:
        a = self._acts
        if a is None or (a.B, a.S, a.T) != (B, S, T) or (with_grads and a.enc.grads is None):
            self._acts = None
            cfg, C = self.cfg, self.cfg.n_embd
            dev = self._arena.rewind()   # the previous shape's buffers are given out again
            V = cfg.tgt_vocab_size
            e = lambda *s: dev.empty(s)
            a = SimpleNamespace(B=B, S=S, T=T, src_emb=_EmbActs(B, S, C, cfg.dropout, dev),
                                tgt_emb=_EmbActs(B, T, C, cfg.dropout, dev),
                                enc=StackActs(self.encoder, B, S, with_grads, dev),
                                dec=self.decoder.acts(B, T, S, with_grads, dev),
                                logits=e(B * T, V), losses=e(B * T),
                                dlosses=e(B * T) if with_grads else None,
                                dmem=dev.zeros((B, S, C)) if with_grads else None,
                                dh=e(B, T, C) if with_grads else None, ids=None)
            if dev.is_cuda:   # the batch goes up into these (range-checked on the host first)
                i32 = lambda *s: dev.empty(s, np.int32)
                a.ids = SimpleNamespace(src=i32(B, S), src_mask=i32(B, S), tgt_in=i32(B, T), targets=i32(B * T))
            if cfg.pre_ln:
                a.enc_ln, a.enc_mean, a.enc_rstd = e(B, S, C), e(B, S), e(B, S)
                a.dec_ln, a.dec_mean, a.dec_rstd = e(B, T, C), e(B, T), e(B, T)
            self._acts = a
        return a

    # ------------------------------------------------------------ forward

    def encode(self, a, src: np.ndarray, src_mask: np.ndarray, dropout: float, seed: int) -> np.ndarray:
        """The encoder's output mem (B, S, C) (a buffer of a)."""
        x = self._embed(a.src_emb, src, "src", dropout, mix_seed(seed, 0))
        mem = self.encoder.forward(a.enc, x, dropout, mix_seed(seed, 1 << 20), src_mask)
        if self.cfg.pre_ln:
            mem = ops.layernorm_forward(mem, self.p[ENC + "layer_norm.weight"], self.p[ENC + "layer_norm.bias"],
                                        self.cfg.layer_norm_eps, a.enc_ln, a.enc_mean, a.enc_rstd)[0]
        return mem

    def _decode_logits(self, a, tgt_in: np.ndarray, mem: np.ndarray, src_mask: np.ndarray, dropout: float,
                       seed: int) -> np.ndarray:
        """Teacher-forced decoder over tgt_in -> logits (B*T, V), a buffer of a."""
        cfg = self.cfg
        self.decoder.project_memory(a.dec, mem, src_mask, a.dmem)
        y = self._embed(a.tgt_emb, tgt_in, "tgt", dropout, mix_seed(seed, 1 << 21))
        h = self.decoder.forward(a.dec, y, dropout, mix_seed(seed, 1 << 22))
        if cfg.pre_ln:
            h = ops.layernorm_forward(h, self.p[DEC + "layer_norm.weight"], self.p[DEC + "layer_norm.bias"],
                                      cfg.layer_norm_eps, a.dec_ln, a.dec_mean, a.dec_rstd)[0]
        a.h = h
        B, T, C = h.shape
        return ops.matmul_forward(h.reshape(B * T, C), _embeddings(cfg, self.p)[1], self._bias(self.p), a.logits)

    def forward(self, src, src_mask, tgt_in, train: bool = False, seed: int = 0, with_grads: bool = False):
        """Logits (B*T, V) of the teacher-forced decoder (a buffer, valid
        until the next call)."""
        cfg = self.cfg
        src, src_mask, tgt_in = self._inputs(src, src_mask, tgt_in)
        if tgt_in.shape[0] != src.shape[0]:
            raise ShapeError(f"src {src.shape} and tgt_in {tgt_in.shape} must share the batch")
        (B, S), T = src.shape, tgt_in.shape[1]
        a = self._buffers(B, S, T, with_grads)
        if a.ids is not None:   # the GPU
            src, src_mask = a.ids.src.copy_from(src), a.ids.src_mask.copy_from(src_mask)
            tgt_in = a.ids.tgt_in.copy_from(tgt_in)
        drop = cfg.dropout if train else 0.0
        mem = self.encode(a, src, src_mask, drop, seed)
        logits = self._decode_logits(a, tgt_in, mem, src_mask, drop, seed)
        a.src, a.src_mask, a.tgt_in, a.mem, a.drop = src, src_mask, tgt_in, mem, drop
        return logits

    def forward_shared(self, src, src_mask, rows, tgt_in) -> np.ndarray:
        """Logits (B*T, V) of the teacher-forced decoder over tgt_in (B, T),
        whose row i continues source rows[i] of src (N, S): outputs of one
        source (a beam's, re-scored) share one pass of the encoder. The
        same logits as forward() of the sources repeated row by row.
        Inference on the CPU; a buffer, valid until the next call."""
        self._cpu_only("forward_shared()")
        src, src_mask, tgt_in = self._inputs(src, src_mask, tgt_in)
        rows = np.asarray(rows, np.int64)
        if rows.shape != (tgt_in.shape[0],):
            raise ShapeError(f"rows {rows.shape} and tgt_in {tgt_in.shape}: rows needs one entry per tgt_in row")
        if rows.size and (rows.min() < 0 or rows.max() >= src.shape[0]):
            raise ShapeError(f"rows must index src's {src.shape[0]} sources")
        (N, S), (B, T) = src.shape, tgt_in.shape
        mem = self.encode(self._buffers(N, S, 1, False), src, src_mask, 0.0, 0)[rows]   # a copy (B, S, C)
        return self._decode_logits(self._buffers(B, S, T, False), tgt_in, mem, src_mask[rows], 0.0, 0)

    def loss(self, src, src_mask, tgt_in, tgt_out, train: bool = False, seed: int = 0,
             label_smoothing: float = 0.0, teacher: np.ndarray | None = None, teacher_weight: float = 0.0) -> float:
        """Mean label-smoothed cross-entropy over the target tokens (tgt_out
        != PAD); keeps what backward() needs. With teacher (B*T, V)
        probabilities (the CPU only), the target is (1 - teacher_weight) x
        the smoothed one-hot + teacher_weight x teacher (nn/loss.py)."""
        logits = self.forward(src, src_mask, tgt_in, train, seed, with_grads=train)
        a = self._acts
        tgt_out = np.ascontiguousarray(tgt_out, np.int32)
        if tgt_out.shape != tgt_in.shape:
            raise ShapeError(f"tgt_out {tgt_out.shape} must have tgt_in's shape {np.shape(tgt_in)}")
        targets = np.where(tgt_out == self.cfg.pad_id, ops.IGNORE_INDEX, tgt_out).reshape(-1).astype(np.int32)
        n = count_rows(targets)
        host_targets = targets
        if a.ids is not None:   # the GPU: checked here (the CPU's kernel checks its host targets)
            if teacher is not None:
                raise ShapeError("a teacher's distribution in the loss (token-level distillation) runs on the CPU")
            ops.check_ids("tgt_out", targets, self.cfg.tgt_vocab_size, allow=ops.IGNORE_INDEX)
            targets = a.ids.targets.copy_from(targets)
        loss = smoothed_crossentropy_forward(logits, targets, label_smoothing, a.losses, logits, n)
        offset = None
        if teacher is not None:
            soft, offset = soft_target_terms(logits, host_targets, label_smoothing, teacher, teacher_weight, n)
            loss = (1.0 - teacher_weight) * loss + teacher_weight * soft
        self._last = (targets, label_smoothing, n, offset)
        return loss

    def backward(self, loss_scale: float = 1.0) -> None:
        """Adds d(loss * loss_scale)/d(params) into self.grads (zero_grad first)."""
        a, cfg = self._acts, self.cfg
        if self._last is None or a.enc.grads is None:
            raise ShapeError("backward() needs a loss(..., train=True) first")
        targets, eps, n, offset = self._last
        self._last = None
        B, T, C = a.B, a.T, cfg.n_embd
        dlogits = smoothed_crossentropy_backward(a.logits, targets, eps, n, a.dlosses, loss_scale)  # in place
        if offset is not None:   # the teacher's part of the target (host arrays: the CPU)
            dlogits += np.float32(loss_scale) * offset
        _, wte_g = _embeddings(cfg, self.g)
        # logits = h @ E_tgt^T [+ b]
        ops.matmul_backward(dlogits, a.h.reshape(B * T, C), _embeddings(cfg, self.p)[1],
                            a.dh.reshape(B * T, C), wte_g, self._bias(self.g), need_db=cfg.logits_bias,
                            overwrite_dx=True)
        dh = a.dh
        if cfg.pre_ln:   # h = LN_dec(decoder output)
            d = a.dec.grads.sub.dh
            ops.fill(d, 0)
            ops.layernorm_backward(dh, a.dec.layers[-1].subs["ffn"].res, self.p[DEC + "layer_norm.weight"],
                                   a.dec_mean, a.dec_rstd, d, self.g[DEC + "layer_norm.weight"],
                                   self.g[DEC + "layer_norm.bias"])
            ops.copy(dh, d)
        ops.fill(a.dmem, 0)
        dy = self.decoder.backward(a.dec, dh)                 # adds d(mem) into a.dmem
        self._embed_backward(a.tgt_emb, dy, a.tgt_in, "tgt", a.drop)
        dout = a.enc.dout
        if cfg.pre_ln:   # mem = LN_enc(encoder stack output)
            ops.fill(dout, 0)
            ops.layernorm_backward(a.dmem, a.enc.stack_out, self.p[ENC + "layer_norm.weight"], a.enc_mean,
                                   a.enc_rstd, dout, self.g[ENC + "layer_norm.weight"], self.g[ENC + "layer_norm.bias"])
        else:
            ops.copy(dout, a.dmem)
        dx, _ = self.encoder.backward(a.enc)
        self._embed_backward(a.src_emb, dx, a.src, "src", a.drop)

    def cross_attention(self) -> list[np.ndarray]:
        """Each decoder layer's cross-attention probabilities (B, NH, T, S)
        from the last forward (host arrays: on the GPU, copies)."""
        return [to_host(m) for m in self._acts.dec.cross_attention_maps()]

    def on_cpu(self) -> "Seq2Seq":
        """This model on the CPU: itself there, else a copy of its weights
        (what decoding runs on)."""
        if not self.device.is_cuda:
            return self
        return Seq2Seq(self.cfg, to_host(self.params))

    def _cpu_only(self, what: str) -> None:
        if self.device.is_cuda:
            raise ShapeError(f"{what} runs on the CPU: decode with model.on_cpu()")

    # ------------------------------------------------------------ decoding

    def pack(self) -> SimpleNamespace:
        """The weights a decoding step multiplies, packed once for many steps
        and batches (start(packed=...)): the decoder's (layers) and the
        output projection (head). A snapshot: pack again after training."""
        self._cpu_only("pack()")
        return SimpleNamespace(layers=self.decoder.pack(), head=ops.PackedWeight(_embeddings(self.cfg, self.p)[1]))

    def start(self, src: np.ndarray, src_mask: np.ndarray, max_len: int, beam: int = 1,
              packed: SimpleNamespace | None = None) -> DecodeCache:
        """Encodes the sources (N, S) once; the cache holds what step() needs
        for beam rows a source (row n * beam + k: source n) and up to
        max_len decoder positions. packed: pack()'s weights, or None."""
        self._cpu_only("decoding")
        cfg = self.cfg
        src = self._check("src", src, cfg.src_vocab_size, cfg.max_src_len)
        B, S = src.shape
        a = self._buffers(B, S, 1, False)
        mem = self.encode(a, src, src_mask, 0.0, 0)
        if max_len > cfg.max_tgt_len + 1:
            raise ShapeError(f"{max_len} decoder positions: the model has {cfg.max_tgt_len + 1}")
        cache = DecodeCache(self.decoder, mem, src_mask, max_len, beam, packed.layers if packed else None)
        cache.head_packed = packed.head if packed else None
        return cache

    def step_logits(self, cache: DecodeCache, tokens: np.ndarray, pos: int) -> np.ndarray:
        """Logits (B, V) of the next token after tokens (B,) at position pos,
        float32 (a buffer, valid until the next step); appends to the cache."""
        cfg, C = self.cfg, self.cfg.n_embd
        B = len(tokens)
        S = cache.kv[0].shape[1]
        sa = self._step_acts
        if sa is None or (sa.B, sa.S) != (B, S):
            # a shrinking batch takes the first B rows of the logits buffer (the largest of the run)
            big = sa.big if sa is not None and sa.big.shape[0] >= B else _e(B, cfg.tgt_vocab_size)
            sa = self._step_acts = SimpleNamespace(B=B, S=S, emb=_EmbActs(B, 1, C, 0.0),
                                                   dec=self.decoder.acts(B, 1, S, False),
                                                   ln=_e(B, 1, C), mean=_e(B, 1), rstd=_e(B, 1), big=big,
                                                   logits=big[:B])
        ids = np.ascontiguousarray(np.asarray(tokens, np.int32).reshape(B, 1))
        table = _embeddings(cfg, self.p)[1]
        pe = self._positions(self.p, "tgt", pos + 1)[pos:pos + 1]
        x = ops.embedding_forward(ids, table, np.ascontiguousarray(pe), sa.emb.x, scale=self.scale)
        h = self.decoder.step(sa.dec, x, cache, pos)
        if cfg.pre_ln:
            h = ops.layernorm_forward(h, self.p[DEC + "layer_norm.weight"], self.p[DEC + "layer_norm.bias"],
                                      cfg.layer_norm_eps, sa.ln, sa.mean, sa.rstd)[0]
        return ops.matmul_forward(h.reshape(B, C), table, self._bias(self.p), sa.logits, packed=cache.head_packed)

    def step(self, cache: DecodeCache, tokens: np.ndarray, pos: int) -> np.ndarray:
        """Log-probabilities (B, V), float64, of the next token after tokens
        (B,) at position pos; appends to the cache."""
        return log_softmax(self.step_logits(cache, tokens, pos))

    def logprobs(self, src, src_mask, tgt_in) -> np.ndarray:
        """Uncached: log-probabilities (B, T, V) of every next token of the
        teacher-forced decoder (the reference decoding is tested against)."""
        B, T = np.shape(tgt_in)
        return log_softmax(to_host(self.forward(src, src_mask, tgt_in))).reshape(B, T, -1)


def memory_bytes(cfg: Seq2SeqConfig, B: int, S: int, T: int, train: bool) -> int:
    """About how many bytes training (or running) cfg at batches of B
    sources of S tokens and targets of T takes: parameters (and gradients
    and moments), each layer's saved activations, the logits."""
    C, NH = cfg.n_embd, cfg.n_head
    n = Layout(seq2seq_slots(cfg)).size
    enc = cfg.enc_layers * (B * S * 16 * C + B * NH * S * S)
    dec = cfg.dec_layers * (B * T * 22 * C + B * NH * T * (T + S) + B * S * 2 * C)
    floats = n * (4 if train else 1) + enc + dec + 2 * B * T * cfg.tgt_vocab_size
    return 4 * floats
