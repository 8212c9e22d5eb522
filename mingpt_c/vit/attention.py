"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"), as drawn in the ViT paper's attention maps.

Per layer l, average the heads and account for the residual connection by
adding the identity, then renormalise rows:
    A_l = (mean_h att_l + I) / 2      (rows sum to 1: each att row does)
and multiply through the layers, input side on the right:
    R = A_L @ ... @ A_2 @ A_1          (T, T)
The class token's row over the patches, R[0, 1:], says how much each patch
flows into the classification; reshaped to the patch grid and upsampled, it
is the map laid over the image.
"""
from __future__ import annotations

import numpy as np

from mingpt_c.vit import images as imgs
from mingpt_c.vit.model import ViT


def rollout(attentions: list[np.ndarray]) -> np.ndarray:
    """attentions: per layer (B, NH, T, T) -> rollout (B, T, T), float64.
    The last layer may give its first rows only (B, NH, Tq, T), as the ViT
    gives the class token's: the rollout is then those rows (B, Tq, T)."""
    R = None
    for att in attentions:
        A = att.astype(np.float64).mean(1)                # (B, Tq, T)
        A = A + np.eye(A.shape[-1])[:A.shape[-2]][None]
        A /= A.sum(-1, keepdims=True)
        R = A if R is None else A @ R
    return R


def cls_maps(model: ViT, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (B, ch, H, W) normalised -> (maps (B, g, g) summing to 1 over the
    patches, logits (B, K))."""
    logits = model.forward(x).copy()
    R = rollout(model.attentions())
    g = model.cfg.grid
    m = R[:, 0, 1:]
    m = m / m.sum(-1, keepdims=True)
    return m.reshape(-1, g, g), logits


def draw(image: np.ndarray, amap: np.ndarray, png, title: str = "") -> None:
    """image (ch, H, W) uint8, amap (g, g): the image, and the map upsampled
    (nearest, one block per patch) over it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ch, H, W = image.shape
    up = np.kron(amap, np.ones((H // amap.shape[0], W // amap.shape[1])))
    up = (up - up.min()) / max(up.max() - up.min(), 1e-12)  # the identity term lifts the floor
    shown = image[0] if ch == 1 else image.transpose(1, 2, 0)
    cmap = "gray" if ch == 1 else None
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4), dpi=100)
    axes[0].imshow(shown, cmap=cmap)
    axes[0].set_title("image")
    axes[1].imshow(shown, cmap=cmap)
    axes[1].imshow(up, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    axes[1].set_title("attention rollout")
    for a in axes:
        a.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def attention_map_file(loaded: dict, path, png, convert: bool = False) -> tuple[str, float]:
    """Draws the rollout map of one image file into png; returns the
    predicted class and its probability."""
    from mingpt_c.nn.loss import softmax
    from mingpt_c.vit.infer import load_image

    cfg = loaded["cfg"]
    image = load_image(cfg, path, convert)
    x = imgs.Normalizer(cfg.image_mean, cfg.image_std)(image[None])
    maps, logits = cls_maps(ViT(cfg, loaded["params"]), x)
    p = softmax(logits)[0]
    k = int(p.argmax())
    draw(image, maps[0], png, f"predicted {cfg.labels[k]} ({100 * p[k]:.1f}%)")
    return cfg.labels[k], float(p[k])
