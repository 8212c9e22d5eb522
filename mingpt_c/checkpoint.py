"""Checkpoint directories, for every model family: the atomic writer, the
readers of config.json and safetensors files, and the optimizer state.

    config.json            the Hugging Face config of the architecture, plus
                           ours under "mingpt" (format, version, our config)
    model.safetensors      the weights, under the Hugging Face tensor names
    tokenizer.json         the tokenizer (mingpt_c.tokenizers format)
    optimizer.safetensors  AdamW moments m, v (training runs); with a weight
                           average, the training weights "params" too (the
                           model file holds the average)
    train_state.json       iteration, step count, best metric, run options

Writing is atomic at the directory level: the new checkpoint is written in
full to a temporary sibling directory, fsynced, then swapped in with two
renames (old -> .old, new -> name). A crash at any instant leaves either the
old or the new checkpoint whole; resolve() falls back to the .old directory
if the crash fell between the two renames. Each family's checkpoint module
(gpt/checkpoint.py, encoder/checkpoint.py, vit/checkpoint.py) maps its
model to these files.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np


from mingpt_c.device import to_host
from mingpt_c.errors import CheckpointError
from mingpt_c.files import temporary

FORMAT = "mingpt-checkpoint"
FORMAT_VERSION = 1


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


def _readable(d: Path) -> None:
    """The user's normal file permissions (the umask's): safetensors writes
    its files 0600, which left an exported model unreadable by another user
    or a container."""
    umask = os.umask(0)
    os.umask(umask)
    for p in d.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def write_dir(path: str | Path, hf_config: dict, tensors: dict, optimizer=None,
              train_state: dict | None = None, extra=None, train_params=None) -> Path:
    """Writes a checkpoint directory atomically: config.json, model.safetensors,
    optimizer.safetensors (with train_params, the training weights of a run
    whose model is their average) and train_state.json when given, and
    whatever extra(tmp_dir) adds (a tokenizer), into a temporary sibling,
    fsynced, then swapped in by two renames. Shared by every family."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
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
            state = {"m": to_host(optimizer.m), "v": to_host(optimizer.v)}
            if train_params is not None:
                state["params"] = to_host(train_params)
            save_file(state,
                      str(tmp / "optimizer.safetensors"),
                      metadata={"t": str(optimizer.t)})
        if train_state is not None:
            _write_json(tmp / "train_state.json", train_state)
        _readable(tmp)
        _fsync_tree(tmp)
        if path.exists():   # the previous checkpoint becomes .old (an older .old goes first)
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        # without path, .old may be the only good checkpoint (a crash between these renames): it
        # goes only once the new one is in place
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":   # disk full, I/O error
            good = (f"{path} still holds the previous checkpoint" if (path / "config.json").exists()
                    else f"{old} holds the previous checkpoint" if (old / "config.json").exists()
                    else "no earlier checkpoint was written")
            raise CheckpointError(f"saving the checkpoint {path} failed ({e}); {good}") from None
        raise
    return path


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


# model_type -> (what it is, the commands that read it), for the message a
# checkpoint of another family gets
READERS = {"gpt2": ("GPT", "`mingpt sample`, `mingpt eval`"),
           "bert": ("encoder", "`mingpt encoder eval/predict`"),
           "vit": ("ViT", "`mingpt vit eval/predict/attention`"),
           "seq2seq": ("encoder-decoder", "`mingpt seq2seq translate/eval/attention`")}


def _a(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def load_model_config(path: Path, fmt: str, version: int, model_type: str, cls):
    """cls (a config dataclass with from_dict/from_hf) from config.json: our
    own section when there is one, else the Hugging Face fields."""
    hf = read_hf_config(path)
    kind = hf.get("model_type")
    if kind in READERS and kind != model_type:   # another family's checkpoint
        what, theirs = READERS[kind][0], READERS[model_type][0]
        raise CheckpointError(f"{path} is {_a(what)} {what} checkpoint (model_type {kind!r}), not {_a(theirs)} "
                              f"{theirs} one: {READERS[kind][1]} read it")
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


def load_safetensors(file: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    if not file.exists():
        raise CheckpointError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({e})") from None
    for name, t in tensors.items():   # a model or optimizer state that diverged is no start
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise CheckpointError(f"{file}: tensor {name} holds NaN or infinite values "
                                  f"({int((~np.isfinite(t)).sum())} of {t.size}): not a usable checkpoint")
    return tensors, meta


def load_training_state(path: Path, n: int):
    """((m, v, t, params), train_state) of a training checkpoint whose model
    has n parameters: AdamW's moments and step count, and params, the
    training weights of a run whose model file holds their average (--ema;
    None in a run without one). CheckpointError if either file is missing,
    corrupt or does not match."""
    t, meta = load_safetensors(path / "optimizer.safetensors")
    if not {"m", "v"} <= set(t) <= {"m", "v", "params"} or any(a.shape != (n,) for a in t.values()):
        raise CheckpointError(f"{path}/optimizer.safetensors does not match the model")
    try:
        state = json.loads((path / "train_state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/train_state.json: unreadable ({e})") from None
    return (t["m"], t["v"], int(meta.get("t", 0)), t.get("params")), state


def training_weights(loaded: dict) -> tuple:
    """(the weights training goes on from, their average or None) of a
    checkpoint loaded with its optimizer state: a run with --ema saves the
    average as its model and its training weights beside the moments."""
    train = loaded["optimizer"][3]
    return (loaded["params"], None) if train is None else (train, loaded["params"])
