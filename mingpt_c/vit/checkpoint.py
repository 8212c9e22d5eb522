"""ViT checkpoints: a directory that Hugging Face transformers reads as a
ViTForImageClassification.

    config.json            ViTConfig fields (id2label holds the class names),
                           plus ours under "mingpt" (incl. pixel mean/std)
    model.safetensors      the ViTForImageClassification state dict: our flat
                           layout already uses its names and shapes
    optimizer.safetensors  AdamW moments m, v (training runs)
    train_state.json       epoch, iteration, accuracy, run options

Writing is atomic as in mingpt_c.checkpoint: a full temporary sibling
directory, fsynced, swapped in with two renames. A model trained on the GPU
saves host copies, so a checkpoint loads on either device.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mingpt_c import checkpoint
from mingpt_c.device import to_host
from mingpt_c.errors import CheckpointError
from mingpt_c.nn.params import Layout
from mingpt_c.vit.model import ViTConfig, vit_slots

FORMAT = "mingpt-vit-checkpoint"
FORMAT_VERSION = 1


def to_hf_tensors(layout: Layout, params: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(v) for name, v in layout.views(params).items()}


def from_hf_tensors(cfg: ViTConfig, tensors: dict, where: str, qkv_bias: bool = True) -> np.ndarray:
    """Flat float32 buffer from ViTForImageClassification tensors; raises
    CheckpointError on anything missing or of the wrong shape. Without
    qkv_bias (a HF option), the query/key/value biases are zeros."""
    layout = Layout(vit_slots(cfg))
    buf = layout.zeros()
    views = layout.views(buf)
    for name, slot in layout.slots.items():
        t = tensors.get(name)
        if t is None:
            if not qkv_bias and name.endswith(("query.bias", "key.bias", "value.bias")):
                continue
            raise CheckpointError(f"{where}: tensor {name} is missing")
        t = np.asarray(t)
        if tuple(t.shape) != slot.shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"the config implies {slot.shape}")
        views[name][...] = t
    return buf


def save(path: str | Path, cfg: ViTConfig, params: np.ndarray, optimizer=None,
         train_state: dict | None = None, train_params=None) -> Path:
    """train_params: the training weights when params is their average (--ema)."""
    hf = cfg.to_hf()
    hf["mingpt"] = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict()}
    # params may be a GPU buffer: the checkpoint is written from a host copy
    return checkpoint.write_dir(path, hf, to_hf_tensors(Layout(vit_slots(cfg)), to_host(params)),
                                optimizer, train_state, train_params=train_params)


def load_config(path: Path) -> ViTConfig:
    return checkpoint.load_model_config(path, FORMAT, FORMAT_VERSION, "vit", ViTConfig)


def load(path: str | Path, with_optimizer: bool = False) -> dict:
    """Returns dict(cfg, params, optimizer (m, v, t, training weights or None:
    mingpt_c.checkpoint.load_training_state) or None, train_state or None, path)."""
    path = checkpoint.resolve(path)
    cfg = load_config(path)
    tensors, _ = checkpoint.load_safetensors(path / "model.safetensors")
    qkv_bias = checkpoint.read_hf_config(path).get("qkv_bias", True)
    params = from_hf_tensors(cfg, tensors, str(path / "model.safetensors"), qkv_bias)
    opt, state = checkpoint.load_training_state(path, params.size) if with_optimizer else (None, None)
    return dict(cfg=cfg, params=params, optimizer=opt, train_state=state, path=path)
