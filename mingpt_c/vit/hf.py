"""ViT interop: our checkpoints are a ViTForImageClassification state dict
with its config.json, so import reads them as they are; the pixel mean/std
come from preprocessor_config.json when there is one, and export writes one
back."""
from __future__ import annotations

import json
from pathlib import Path

from mingpt_c.errors import CheckpointError
from mingpt_c.vit import checkpoint as vit_checkpoint


def import_vit(hf_dir, out) -> Path:
    d = Path(hf_dir)
    if not (d / "model.safetensors").exists():
        raise CheckpointError(f"{d}: no model.safetensors (save the model with safe_serialization=True)")
    loaded = vit_checkpoint.load(d)
    cfg = loaded["cfg"]
    pre = d / "preprocessor_config.json"
    if pre.exists():
        try:
            pp = json.loads(pre.read_text())
            mean, std = pp.get("image_mean"), pp.get("image_std")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{pre}: unreadable ({e})") from None
        if mean and std and len(mean) == len(std) == cfg.num_channels:
            cfg.image_mean, cfg.image_std = [float(v) for v in mean], [float(v) for v in std]
    return vit_checkpoint.save(out, cfg, loaded["params"])


def export_vit(ckpt, out) -> Path:
    loaded = vit_checkpoint.load(ckpt)
    cfg = loaded["cfg"]
    path = vit_checkpoint.save(out, cfg, loaded["params"])
    pp = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
          "size": {"height": cfg.image_size, "width": cfg.image_size}, "resample": 2,
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
          "image_mean": cfg.image_mean, "image_std": cfg.image_std}
    (path / "preprocessor_config.json").write_text(json.dumps(pp, indent=2) + "\n")
    return path
