"""Encoder checkpoints: a directory in Hugging Face's BERT layout.

    config.json            BertConfig fields (id2label/label2id for a
                           classifier), ours under "mingpt": the
                           EncoderConfig, the tokenizer description
    model.safetensors      BertForMaskedLM / BertForSequenceClassification
                           names ("bert.embeddings...", "bert.encoder.layer.i
                           .attention.self.query.weight", "cls.predictions...",
                           "classifier..."); our packed qkv is split into
                           query, key, value; the MLM decoder is tied to the
                           word embeddings and not stored
    vocab.txt              WordPiece vocabulary (+ tokenizer_config.json), or
    tokenizer.json         a trained BPE with the special tokens
    optimizer.safetensors, train_state.json   training runs

Written atomically like GPT checkpoints (mingpt_c.checkpoint): a full
temporary directory, fsynced, swapped in by rename. A model trained on the
GPU saves host copies of its parameters and moments, so a checkpoint loads
on either device.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mingpt_c import checkpoint as gpt_ckpt
from mingpt_c.device import to_host
from mingpt_c.errors import CheckpointError
from mingpt_c.encoder.model import PREFIX, EncoderConfig, encoder_slots
from mingpt_c.nn.params import Layout

FORMAT = "mingpt-encoder"
FORMAT_VERSION = 1
QKV = "attention.self.qkv."


def to_hf_tensors(layout: Layout, params: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, view in layout.views(params).items():
        if QKV in name:
            base, kind = name.split(QKV)
            for part, t in zip(("query", "key", "value"), np.split(view, 3, axis=0)):
                out[f"{base}attention.self.{part}.{kind}"] = np.ascontiguousarray(t)
        else:
            out[name] = np.ascontiguousarray(view)
    return out


def from_hf_tensors(layout: Layout, tensors: dict, where: str) -> np.ndarray:
    """Flat buffer from HF-named tensors, with or without the 'bert.' prefix
    (BertModel saves none); query/key/value are packed into qkv."""
    buf = layout.zeros()
    views = layout.views(buf)

    def get(name):
        t = tensors.get(name)
        if t is None and name.startswith(PREFIX):
            t = tensors.get(name[len(PREFIX):])
        if t is None:
            raise CheckpointError(f"{where}: tensor {name} is missing")
        return np.asarray(t)

    for name, slot in layout.slots.items():
        if QKV in name:
            base, kind = name.split(QKV)
            t = np.concatenate([get(f"{base}attention.self.{p}.{kind}") for p in ("query", "key", "value")])
        else:
            t = get(name)
        if tuple(t.shape) != slot.shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"the config implies {slot.shape}")
        views[name][...] = t
    return buf


def save(path, cfg: EncoderConfig, params: np.ndarray, tokenizer=None, optimizer=None,
         train_state: dict | None = None, train_params=None) -> Path:
    """train_params: the training weights when params is their average (--ema)."""
    hf = cfg.to_hf()
    hf["mingpt"] = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(),
                    "tokenizer": tokenizer.describe() if tokenizer is not None else None}
    # params may be a GPU buffer: the checkpoint is written from a host copy
    return gpt_ckpt.write_dir(path, hf, to_hf_tensors(Layout(encoder_slots(cfg)), to_host(params)),
                              optimizer, train_state,
                              tokenizer.save if tokenizer is not None else None, train_params)


def load(path, with_optimizer: bool = False) -> dict:
    """dict(cfg, params, tokenizer, optimizer (m, v, t, training weights or
    None: mingpt_c.checkpoint.load_training_state) or None, train_state, path)."""
    from mingpt_c.encoder.data import load_encoder_tokenizer

    path = gpt_ckpt.resolve(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: unreadable ({e})") from None
    ours = hf.get("mingpt") or {}
    if ours.get("format") != FORMAT:
        what = "a GPT checkpoint" if ours.get("format") == gpt_ckpt.FORMAT else f"model_type {hf.get('model_type')!r}"
        raise CheckpointError(f"{path}: {what}, not an encoder checkpoint "
                              f"(import a Hugging Face BERT with `mingpt import`)")
    if ours.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: encoder checkpoint v{ours.get('version')} is newer than this build")
    try:
        cfg = EncoderConfig.from_dict(ours["config"])
    except Exception as e:
        raise CheckpointError(f"{path}/config.json: bad configuration ({e})") from None
    tensors, _ = gpt_ckpt.load_safetensors(path / "model.safetensors")
    layout = Layout(encoder_slots(cfg))
    params = from_hf_tensors(layout, tensors, str(path / "model.safetensors"))
    tok = load_encoder_tokenizer(path, ours["tokenizer"]) if ours.get("tokenizer") else None
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tok.vocab_size} tokens, the model only {cfg.vocab_size}")
    opt = state = None
    if with_optimizer:
        opt, state = gpt_ckpt.load_training_state(path, layout.size)
    elif (path / "train_state.json").exists():
        try:
            state = json.loads((path / "train_state.json").read_text())
        except ValueError as e:
            raise CheckpointError(f"{path}/train_state.json: unreadable ({e})") from None
    return dict(cfg=cfg, params=params, tokenizer=tok, optimizer=opt, train_state=state, path=path)


def import_bert(hf_dir, out) -> Path:
    """A Hugging Face BertModel (or BertFor* model) directory -> our
    checkpoint: the encoder trunk and its WordPiece vocabulary; task heads
    are left behind (fine-tuning adds a fresh classifier)."""
    from mingpt_c.tokenizers.wordpiece import WordPiece

    d = Path(hf_dir)
    try:
        hf = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}/config.json: cannot read ({e})") from None
    try:
        cfg = EncoderConfig.from_hf(hf)
    except KeyError as e:
        raise CheckpointError(f"{d}/config.json: missing field {e}") from None
    except Exception as e:
        raise CheckpointError(f"{d}/config.json: {e}") from None
    if not (d / "model.safetensors").exists():
        raise CheckpointError(f"{d}: no model.safetensors (save the model with safe_serialization=True)")
    tensors, _ = gpt_ckpt.load_safetensors(d / "model.safetensors")
    params = from_hf_tensors(Layout(encoder_slots(cfg)), tensors, str(d / "model.safetensors"))
    tok = WordPiece.from_dir(d)
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{d}: the vocabulary has {tok.vocab_size} tokens, the model only {cfg.vocab_size}")
    missing = [s for s in ("[CLS]", "[SEP]", "[PAD]", "[MASK]") if s not in tok.special]
    if missing:
        raise CheckpointError(f"{d}: the vocabulary lacks {', '.join(missing)}")
    cfg.pad_token_id = tok.special["[PAD]"]
    return save(out, cfg, params, tok)
