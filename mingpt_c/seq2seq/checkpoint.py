"""Encoder-decoder checkpoints: a directory like every family's.

    config.json            "model_type": "seq2seq", ours under "mingpt": the
                           Seq2SeqConfig and which vocabulary files there are
    model.safetensors      MarianMT/BART tensor names ("model.encoder.layers.i
                           .self_attn.q_proj.weight", "model.decoder.layers.i
                           .encoder_attn.k_proj.weight", ...): our packed
                           qkv_proj and kv_proj are split into q, k, v; the
                           output projection is the tied target embedding
                           and is not stored
    src_vocab.json, tgt_vocab.json   the two sides' vocabularies (seq2seq/
                           vocab.py), or one vocab.json when shared
    optimizer.safetensors, train_state.json   training runs (a run with
                           --ema keeps its training weights there and the
                           average in model.safetensors)

Written atomically like every checkpoint (mingpt_c.checkpoint.write_dir).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mingpt_c import checkpoint as base
from mingpt_c.device import to_host
from mingpt_c.errors import CheckpointError
from mingpt_c.nn.params import Layout
from mingpt_c.seq2seq.model import Seq2SeqConfig, seq2seq_slots
from mingpt_c.seq2seq.vocab import Vocab

FORMAT = "mingpt-seq2seq"
FORMAT_VERSION = 1
MODEL_TYPE = "seq2seq"
PACKED = {"self_attn.qkv_proj.": ("q_proj", "k_proj", "v_proj"), "encoder_attn.kv_proj.": ("k_proj", "v_proj")}


def to_tensors(layout: Layout, params: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, view in layout.views(params).items():
        for packed, parts in PACKED.items():
            if packed in name:
                base_name, kind = name.split(packed)
                attn = packed.split(".")[0]
                for part, t in zip(parts, np.split(view, len(parts), axis=0)):
                    out[f"{base_name}{attn}.{part}.{kind}"] = np.ascontiguousarray(t)
                break
        else:
            out[name] = np.ascontiguousarray(view)
    return out


def from_tensors(layout: Layout, tensors: dict, where: str) -> np.ndarray:
    buf = layout.zeros()
    views = layout.views(buf)

    def get(name):
        if name not in tensors:
            raise CheckpointError(f"{where}: tensor {name} is missing")
        return np.asarray(tensors[name])

    for name, slot in layout.slots.items():
        for packed, parts in PACKED.items():
            if packed in name:
                base_name, kind = name.split(packed)
                attn = packed.split(".")[0]
                t = np.concatenate([get(f"{base_name}{attn}.{p}.{kind}") for p in parts])
                break
        else:
            t = get(name)
        if tuple(t.shape) != slot.shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(t.shape)}, the config implies "
                                  f"{slot.shape}")
        views[name][...] = t
    return buf


def _vocab_files(cfg: Seq2SeqConfig) -> dict[str, str]:
    return {"src": "vocab.json", "tgt": "vocab.json"} if cfg.shared_vocab else \
        {"src": "src_vocab.json", "tgt": "tgt_vocab.json"}


def save(path, cfg: Seq2SeqConfig, params, vocabs: dict, optimizer=None,
         train_state: dict | None = None, train_params=None) -> Path:
    """params: the flat buffer, on either device; vocabs: {"src": Vocab,
    "tgt": Vocab} (the same one when shared); train_params: the training
    weights when params is their average."""
    files = _vocab_files(cfg)
    hf = {"architectures": ["Seq2Seq"], "model_type": MODEL_TYPE, "d_model": cfg.n_embd,
          "encoder_layers": cfg.enc_layers, "decoder_layers": cfg.dec_layers,
          "mingpt": {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(), "vocab_files": files}}

    def write_vocabs(d: Path) -> None:
        for side in ("src", "tgt"):
            vocabs[side].save(d / files[side])

    return base.write_dir(path, hf, to_tensors(Layout(seq2seq_slots(cfg)), to_host(params)), optimizer,
                          train_state, write_vocabs, train_params)


def load(path, with_optimizer: bool = False) -> dict:
    """dict(cfg, params, vocabs {"src", "tgt"}, optimizer (m, v, t, training
    weights or None: mingpt_c.checkpoint.load_training_state) or None,
    train_state or None, path)."""
    path = base.resolve(path)
    cfg = base.load_model_config(path, FORMAT, FORMAT_VERSION, MODEL_TYPE, Seq2SeqConfig)
    hf = base.read_hf_config(path)
    files = (hf.get("mingpt") or {}).get("vocab_files") or _vocab_files(cfg)
    vocabs = {}
    for side in ("src", "tgt"):
        f = path / files[side]
        try:
            vocabs[side] = Vocab.load(f)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{f}: unreadable vocabulary ({e})") from None
    for side, size in (("src", cfg.src_vocab_size), ("tgt", cfg.tgt_vocab_size)):
        if vocabs[side].size != size:
            raise CheckpointError(f"{path}: the {side} vocabulary has {vocabs[side].size} tokens, the model "
                                  f"{size}")
    tensors, _ = base.load_safetensors(path / "model.safetensors")
    layout = Layout(seq2seq_slots(cfg))
    params = from_tensors(layout, tensors, str(path / "model.safetensors"))
    opt = state = None
    if with_optimizer:
        opt, state = base.load_training_state(path, layout.size)
    elif (path / "train_state.json").exists():
        try:
            state = json.loads((path / "train_state.json").read_text())
        except ValueError as e:
            raise CheckpointError(f"{path}/train_state.json: unreadable ({e})") from None
    return dict(cfg=cfg, params=params, vocabs=vocabs, optimizer=opt, train_state=state, path=path)
