"""Checkpoints: a directory that Hugging Face transformers can read.

    config.json            GPT2Config fields, plus ours under "mingpt"
    model.safetensors      GPT2LMHeadModel tensor names and layout (the four
                           Conv1D weights stored (in, out)); lm_head is tied
                           to wte and, as transformers does, not stored
    tokenizer.json         the tokenizer (mingpt_c.tokenizer format)
    optimizer.safetensors  AdamW moments m, v (training runs)
    train_state.json       iteration, step count, best val loss, run options

Writing is atomic at the directory level: the new checkpoint is written in
full to a temporary sibling directory, fsynced, then swapped in with two
renames (old -> .old, new -> name). A crash at any instant leaves either the
old or the new checkpoint whole; load() falls back to the .old directory if
the crash fell between the two renames.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .device import to_host
from .errors import CheckpointError
from .model.config import GPTConfig
from .model.params import Layout, gpt_slots

FORMAT = "mingpt-checkpoint"
FORMAT_VERSION = 1
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


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _fsync_tree(d: Path) -> None:
    for p in d.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir(path: str | Path, hf_config: dict, tensors: dict, optimizer=None,
              train_state: dict | None = None, extra=None) -> Path:
    """Writes a checkpoint directory atomically: config.json, model.safetensors,
    optimizer.safetensors and train_state.json when given, and whatever
    extra(tmp_dir) adds (a tokenizer), into a temporary sibling, fsynced,
    then swapped in by two renames. Shared by the GPT, encoder and ViT."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", hf_config)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if extra is not None:
            extra(tmp)
        if optimizer is not None:
            save_file({"m": to_host(optimizer.m), "v": to_host(optimizer.v)},
                      str(tmp / "optimizer.safetensors"),
                      metadata={"t": str(optimizer.t)})
        if train_state is not None:
            _write_json(tmp / "train_state.json", train_state)
        _fsync_tree(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save(path: str | Path, cfg: GPTConfig, params: np.ndarray, tokenizer=None,
         optimizer=None, train_state: dict | None = None) -> Path:
    hf = cfg.to_hf()
    hf["mingpt"] = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict()}
    extra = (lambda d: tokenizer.save(d / "tokenizer.json")) if tokenizer is not None else None
    return write_dir(path, hf, to_hf_tensors(Layout(gpt_slots(cfg)), to_host(params)), optimizer,
                     train_state, extra)


def resolve(path: str | Path) -> Path:
    """The checkpoint directory for a path: the directory itself, or in a
    run directory its best/ (else latest/) checkpoint; recovers a .old
    checkpoint left by a crash between the two renames of save()."""
    p = Path(path)
    if not p.exists():
        old = p.with_name(f".{p.name}.old")
        if old.is_dir() and (old / "config.json").exists():
            return old
        raise CheckpointError(f"{p}: no such checkpoint or run directory")
    if (p / "config.json").exists():
        return p
    for sub in ("best", "latest"):
        try:
            return resolve(p / sub)
        except CheckpointError:
            pass
    raise CheckpointError(f"{p}: not a checkpoint (no config.json, no best/ or latest/ inside)")


def read_hf_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: unreadable ({e})") from None


def load_model_config(path: Path, fmt: str, version: int, model_type: str, cls):
    """cls (a config dataclass with from_dict/from_hf) from config.json: our
    own section when there is one, else the Hugging Face fields."""
    hf = read_hf_config(path)
    try:
        ours = hf.get("mingpt")
        if ours:
            if ours.get("format") != fmt or ours.get("version", 0) > version:
                raise CheckpointError(f"{path}: checkpoint format {ours.get('format')} "
                                      f"v{ours.get('version')} is not a {model_type} checkpoint "
                                      f"this build reads")
            return cls.from_dict(ours["config"])
        if hf.get("model_type") != model_type:
            raise CheckpointError(f"{path}: model_type {hf.get('model_type')!r} is not {model_type}")
        return cls.from_hf(hf)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}/config.json: bad {model_type} configuration ({e})") from None


def load_config(path: Path) -> GPTConfig:
    return load_model_config(path, FORMAT, FORMAT_VERSION, "gpt2", GPTConfig)


def _load_safetensors(file: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    if not file.exists():
        raise CheckpointError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="numpy") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({e})") from None


def load_training_state(path: Path, n: int):
    """((m, v, t), train_state) of a training checkpoint whose model has n
    parameters; CheckpointError if either file is missing, corrupt or does
    not match."""
    t, meta = _load_safetensors(path / "optimizer.safetensors")
    if set(t) != {"m", "v"} or any(t[k].shape != (n,) for k in ("m", "v")):
        raise CheckpointError(f"{path}/optimizer.safetensors does not match the model")
    try:
        state = json.loads((path / "train_state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/train_state.json: unreadable ({e})") from None
    return (t["m"], t["v"], int(meta.get("t", 0))), state


def load(path: str | Path, with_optimizer: bool = False):
    """Returns dict(cfg, params, tokenizer, optimizer (m, v, t) or None,
    train_state or None, path)."""
    from .tokenizer import load_tokenizer

    path = resolve(path)
    cfg = load_config(path)
    tensors, _ = _load_safetensors(path / "model.safetensors")
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
