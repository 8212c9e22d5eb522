"""The PyTorch twin of the encoder-decoder (seq2seq/model.py) on
torch.nn.Transformer: the same embeddings (scaled by sqrt(d_model), the
sinusoidal table), nn.TransformerEncoderLayer / nn.TransformerDecoderLayer
in the same layernorm order (post-LN, or norm_first with a final layernorm
on each side), the output tied to the target embedding, and PyTorch's
label-smoothed cross-entropy over the non-pad target tokens. Dropout is
where ours has it, on the embeddings and each sublayer's output (the
paper's residual dropout): the layers' other two sites, the attention
probabilities and the feed-forward's hidden units, are off.

from_ours() copies a Seq2Seq's weights in (and as_ours() maps the
gradients back to our flat layout), for the parity test
(tests/seq2seq/test_seq2seq_torch.py) and the side-by-side benchmark
(bench/seq2seq.py). Imports torch, so nothing else in the package imports
this module.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 0


class TorchSeq2Seq(nn.Module):
    def __init__(self, cfg, pe: np.ndarray | None = None):
        """cfg: a Seq2SeqConfig; pe: the sinusoidal table (maxT, C) to use."""
        super().__init__()
        C, NH = cfg.n_embd, cfg.n_head
        self.cfg = cfg
        self.scale = math.sqrt(C) if cfg.scale_embeddings else 1.0
        self.src_emb = nn.Embedding(cfg.src_vocab_size, C)
        self.tgt_emb = self.src_emb if cfg.shared_vocab else nn.Embedding(cfg.tgt_vocab_size, C)
        if cfg.positions == "learned":
            self.src_pos = nn.Parameter(torch.zeros(cfg.max_src_len, C))
            self.tgt_pos = nn.Parameter(torch.zeros(cfg.max_tgt_len + 1, C))
        else:
            self.register_buffer("pe", torch.tensor(pe))
        act = {"relu": "relu", "gelu": "gelu", "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[cfg.act]
        kw = dict(d_model=C, nhead=NH, dim_feedforward=4 * C, dropout=cfg.dropout, activation=act,
                  layer_norm_eps=cfg.layer_norm_eps, batch_first=True, norm_first=cfg.pre_ln)
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), cfg.enc_layers,
                                    norm=nn.LayerNorm(C, eps=cfg.layer_norm_eps) if cfg.pre_ln else None,
                                    enable_nested_tensor=False)
        dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), cfg.dec_layers,
                                    norm=nn.LayerNorm(C, eps=cfg.layer_norm_eps) if cfg.pre_ln else None)
        self.transformer = nn.Transformer(d_model=C, nhead=NH, custom_encoder=enc, custom_decoder=dec,
                                          batch_first=True)
        for layer in [*enc.layers, *dec.layers]:   # dropout where ours has it: embeddings, sublayer outputs
            layer.dropout.p = 0.0                  # (PyTorch also drops the FFN's hidden units
            layer.self_attn.dropout = 0.0          # and the attention probabilities)
            if hasattr(layer, "multihead_attn"):
                layer.multihead_attn.dropout = 0.0

    def _embed(self, ids, table, pos_table):
        T = ids.shape[1]
        pos = self.pe[:T] if pos_table is None else pos_table[:T]
        return F.dropout(table(ids) * self.scale + pos, self.cfg.dropout, self.training)

    def forward(self, src, src_mask, tgt_in):
        """Logits (B, T, V)."""
        learned = self.cfg.positions == "learned"
        pad = src_mask == 0
        T = tgt_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=self.tgt_emb.weight.dtype)
        h = self.transformer(self._embed(src, self.src_emb, self.src_pos if learned else None),
                             self._embed(tgt_in, self.tgt_emb, self.tgt_pos if learned else None),
                             tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad,
                             tgt_is_causal=True)
        return h @ self.tgt_emb.weight.T

    def loss(self, src, src_mask, tgt_in, tgt_out, label_smoothing=0.0):
        logits = self.forward(src, src_mask, tgt_in)
        target = tgt_out.masked_fill(tgt_out == PAD, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=-100, label_smoothing=label_smoothing)

# ---------------------------------------------------------------- weights


def _pairs(model, tm: TorchSeq2Seq):
    """(torch parameter, [our tensor names concatenated along rows])."""
    cfg = model.cfg
    out = []
    if cfg.shared_vocab:
        out.append((tm.src_emb.weight, ["model.shared.weight"]))
    else:
        out += [(tm.src_emb.weight, ["model.encoder.embed_tokens.weight"]),
                (tm.tgt_emb.weight, ["model.decoder.embed_tokens.weight"])]
    if cfg.positions == "learned":
        out += [(tm.src_pos, ["model.encoder.embed_positions.weight"]),
                (tm.tgt_pos, ["model.decoder.embed_positions.weight"])]
    def linear(module, name):
        return [(module.weight, [name + ".weight"]), (module.bias, [name + ".bias"])]

    def self_attention_and_ffn(layer, p, ffn_norm):
        """What encoder and decoder layers share: the self-attention (norm1)
        and the feed-forward, whose layernorm is ffn_norm."""
        return (linear(layer.self_attn.out_proj, p + "self_attn.out_proj")
                + [(layer.self_attn.in_proj_weight, [p + "self_attn.qkv_proj.weight"]),
                   (layer.self_attn.in_proj_bias, [p + "self_attn.qkv_proj.bias"])]
                + linear(layer.norm1, p + "self_attn_layer_norm")
                + linear(layer.linear1, p + "fc1") + linear(layer.linear2, p + "fc2")
                + linear(ffn_norm, p + "final_layer_norm"))

    for i, layer in enumerate(tm.transformer.encoder.layers):
        out += self_attention_and_ffn(layer, f"model.encoder.layers.{i}.", layer.norm2)
    for i, layer in enumerate(tm.transformer.decoder.layers):
        p = f"model.decoder.layers.{i}."
        out += self_attention_and_ffn(layer, p, layer.norm3)
        out += [(layer.multihead_attn.in_proj_weight, [p + "encoder_attn.q_proj.weight",
                                                       p + "encoder_attn.kv_proj.weight"]),
                (layer.multihead_attn.in_proj_bias, [p + "encoder_attn.q_proj.bias",
                                                     p + "encoder_attn.kv_proj.bias"])]
        out += linear(layer.multihead_attn.out_proj, p + "encoder_attn.out_proj")
        out += linear(layer.norm2, p + "encoder_attn_layer_norm")
    if cfg.pre_ln:
        for side, stack in (("encoder", tm.transformer.encoder), ("decoder", tm.transformer.decoder)):
            out += [(stack.norm.weight, [f"model.{side}.layer_norm.weight"]),
                    (stack.norm.bias, [f"model.{side}.layer_norm.bias"])]
    return out


def from_ours(model, dtype=torch.float64) -> TorchSeq2Seq:
    """A TorchSeq2Seq holding model's weights (in dtype)."""
    tm = TorchSeq2Seq(model.cfg, model.pe)
    with torch.no_grad():
        for tp, names in _pairs(model, tm):
            tp.copy_(torch.tensor(np.concatenate([model.p[n] for n in names])))
    return tm.to(dtype)


def as_ours(model, tm: TorchSeq2Seq, what: str = "grad") -> dict[str, np.ndarray]:
    """Our tensor name -> the twin's gradient (what="grad") or value ("data")."""
    out = {}
    for tp, names in _pairs(model, tm):
        t = (tp.grad if what == "grad" else tp.data).detach().cpu().numpy()
        row = 0
        for n in names:
            k = model.p[n].shape[0]
            out[n] = t[row:row + k]
            row += k
    return out


def decay_groups(model, tm: TorchSeq2Seq, weight_decay: float) -> list[dict]:
    """AdamW parameter groups with our decay rule (matrices and embeddings)."""
    decay, plain = [], []
    for tp, names in _pairs(model, tm):
        (decay if model.layout.slots[names[0]].decay else plain).append(tp)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
