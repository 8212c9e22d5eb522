"""Single images in, class probabilities out: reading an image file for a
trained ViT (channel count and size must match the model's, or be converted
on request) and top-k prediction."""
from __future__ import annotations

import numpy as np

from mingpt_c.vit import images as imgs
from mingpt_c.device import CPU, Device, to_host
from mingpt_c.errors import DataError
from mingpt_c.nn.loss import softmax
from mingpt_c.vit.model import ViT, ViTConfig

CHANNEL_NAMES = {1: "grayscale", 3: "RGB"}


def load_image(cfg: ViTConfig, path, convert: bool = False) -> np.ndarray:
    """(ch, H, W) uint8 of an image file, as the model takes it. Without
    convert, a colour image for a grayscale model (or the reverse) and a
    size other than the model's are errors."""
    im = imgs.open_image(path)
    ch = imgs.image_channels(im)
    if ch != cfg.num_channels and not convert:
        bands = len(im.getbands())
        raise DataError(f"{path}: an image of mode {im.mode} ({bands} channel{'s' if bands > 1 else ''}), the model "
                        f"takes {CHANNEL_NAMES[cfg.num_channels]} ({cfg.num_channels}): pass --convert to "
                        f"convert it")
    w, h = im.size
    if (w, h) != (cfg.image_size, cfg.image_size):
        if w % cfg.patch_size or h % cfg.patch_size:
            why = f"not divisible by the patch size {cfg.patch_size}"
        else:
            why = f"not the model's {cfg.image_size}x{cfg.image_size}"
        if not convert:
            raise DataError(f"{path}: image size {w}x{h} is {why}: pass --convert to resize it")
        return imgs.image_array(im, cfg.num_channels, cfg.image_size)
    return imgs.image_array(im, cfg.num_channels)


def predict_files(loaded: dict, paths, top_k: int = 3, convert: bool = False, device: Device = CPU):
    """[(path, [(class name, probability)...])] for image files, the model
    run on device (the logits come back to the host for the softmax)."""
    cfg = loaded["cfg"]
    if top_k < 1:
        raise DataError(f"--top-k {top_k} must be at least 1")
    batch = np.stack([load_image(cfg, p, convert) for p in paths])
    x = imgs.Normalizer(cfg.image_mean, cfg.image_std)(batch)
    probs = softmax(to_host(ViT(cfg, loaded["params"], device=device).forward(x)))
    out = []
    for p, row in zip(paths, probs):
        order = np.argsort(-row, kind="stable")[:top_k]
        out.append((str(p), [(cfg.labels[i], float(row[i])) for i in order]))
    return out
