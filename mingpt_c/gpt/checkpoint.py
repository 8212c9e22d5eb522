"""GPT checkpoints: a directory that transformers reads as GPT2LMHeadModel.

    config.json            GPT2Config fields, plus ours under "mingpt"
    model.safetensors      GPT2LMHeadModel tensor names and layout (the four
                           Conv1D weights stored (in, out)); lm_head is tied
                           to wte and, as transformers does, not stored
    tokenizer.json, optimizer.safetensors, train_state.json: see
    mingpt_c/checkpoint.py, which writes and reads the directory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mingpt_c.checkpoint import (FORMAT, FORMAT_VERSION, load_model_config, load_safetensors,
                                 load_training_state, resolve, write_dir)
from mingpt_c.device import to_host
from mingpt_c.errors import CheckpointError
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import gpt_slots
from mingpt_c.nn.params import Layout

# GPT-2 keeps these as Conv1D weights, (in, out); we keep (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _is_conv1d(name: str) -> bool:
    return name.endswith(CONV1D)


def to_hf_tensors(layout: Layout, params: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, view in layout.views(params).items():
        out[name] = np.ascontiguousarray(view.T if _is_conv1d(name) else view)
    return out


def from_hf_tensors(layout: Layout, tensors: dict, where: str) -> np.ndarray:
    """Flat float32 buffer from HF-named tensors (with or without the
    'transformer.' prefix); raises CheckpointError on anything missing or
    of the wrong shape."""
    buf = layout.zeros()
    views = layout.views(buf)
    for name, slot in layout.slots.items():
        t = tensors.get(name)
        if t is None:
            t = tensors.get(name[len("transformer."):]) if name.startswith("transformer.") else None
        if t is None:
            raise CheckpointError(f"{where}: tensor {name} is missing")
        t = np.asarray(t)
        want = tuple(reversed(slot.shape)) if _is_conv1d(name) else slot.shape
        if tuple(t.shape) != want:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"the config implies {want}")
        views[name][...] = t.T if _is_conv1d(name) else t
    return buf


def save(path: str | Path, cfg: GPTConfig, params: np.ndarray, tokenizer=None,
         optimizer=None, train_state: dict | None = None, train_params=None) -> Path:
    """train_params: the training weights when params is their average (--ema)."""
    hf = cfg.to_hf()
    hf["mingpt"] = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict()}
    extra = (lambda d: tokenizer.save(d / "tokenizer.json")) if tokenizer is not None else None
    return write_dir(path, hf, to_hf_tensors(Layout(gpt_slots(cfg)), to_host(params)), optimizer,
                     train_state, extra, train_params)


def load_config(path: Path) -> GPTConfig:
    return load_model_config(path, FORMAT, FORMAT_VERSION, "gpt2", GPTConfig)


def load(path: str | Path, with_optimizer: bool = False):
    """Returns dict(cfg, params, tokenizer, optimizer (m, v, t, training
    weights or None: mingpt_c.checkpoint.load_training_state) or None,
    train_state or None, path)."""
    from mingpt_c.tokenizers.tokenizer import load_tokenizer

    path = resolve(path)
    cfg = load_config(path)
    tensors, _ = load_safetensors(path / "model.safetensors")
    layout = Layout(gpt_slots(cfg))
    params = from_hf_tensors(layout, tensors, str(path / "model.safetensors"))
    tok = None
    if (path / "tokenizer.json").exists():
        tok = load_tokenizer(path / "tokenizer.json")
        if tok.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"{path}: the tokenizer has {tok.vocab_size} tokens, the model "
                                  f"only {cfg.vocab_size}")
    opt, state = load_training_state(path, layout.size) if with_optimizer else (None, None)
    return dict(cfg=cfg, params=params, tokenizer=tok, optimizer=opt, train_state=state, path=path)
