"""Vision Transformer (Dosovitskiy et al. 2020) on the C core, from the same
blocks as the GPT:

    patches = im2col(images)                     (B, Np, ch*P*P), channel-major
    x = [cls ; patches @ Wp^T + bp] + pos        (B, T = Np + 1, C)
    x = block_i(x)  for i in 0..n_layer-1        bidirectional (causal=False)
    logits = layernorm(x[:, 0]) @ Wc^T + bc      (B, K) from the class token
    loss = mean cross-entropy, with optional label smoothing

Parameter names and shapes are exactly those of Hugging Face's
ViTForImageClassification state dict (vit.embeddings.*, vit.encoder.layer.{i}.*,
vit.layernorm.*, classifier.*), so a checkpoint is that state dict as it is.
Two facts let the flat buffer serve the C kernels without any copy:
  - the patch projection is stored as the Conv2d weight (C, ch, P, P); its
    row-major (C, ch*P*P) view matches the channel-major patch vectors;
  - query, key, value weights (then their biases) are laid out back to back,
    so together they are the block's packed c_attn weight (3C, C) and bias (3C).
The final layernorm only runs on the class token: the head reads nothing else.
For the same reason the last block computes only what reaches the class
token (the stack's cls_only, nn/stack.py): layernorm, qkv and attention for
every token, then the projection and the MLP on the class row alone.

With device="cuda" every buffer lives in GPU memory, as the GPT's. A step
uploads its patchified batch; the embedding (class token, patch projections,
positions) and the class rows are embedding lookups and their backward, on
either device. The loss, with label smoothing, runs on the host: the (B, K)
logits come down and their gradient goes up, two small copies a step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mingpt_c import ops
from mingpt_c.device import CPU, Device, to_host
from mingpt_c.errors import ShapeError
from mingpt_c.nn.block import ACTS
from mingpt_c.nn.seeds import mix_seed
from mingpt_c.nn.loss import count_rows, smoothed_crossentropy_backward, smoothed_crossentropy_forward
from mingpt_c.nn.config import ConfigBase
from mingpt_c.nn.model import FlatModel
from mingpt_c.nn.params import Layout
from mingpt_c.nn.stack import Stack, StackActs

F32 = np.float32

# HF hidden_act -> our block's act
HF_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


@dataclass
class ViTConfig(ConfigBase):
    image_size: int = 28            # H = W, a multiple of patch_size
    patch_size: int = 4             # P: each P x P patch is one token
    num_channels: int = 1           # 1 (grayscale) or 3 (RGB)
    num_classes: int = 10           # K
    n_layer: int = 4                # transformer blocks
    n_head: int = 4                 # attention heads; n_embd % n_head == 0
    n_embd: int = 64                # model width C (the MLP is 4C wide)
    dropout: float = 0.0            # on embeddings and each block's residual branches
    layer_norm_eps: float = 1e-12   # Hugging Face ViT's epsilon
    act: str = "gelu"               # "gelu" (exact, HF ViT) or "gelu_tanh"
    labels: list = field(default_factory=list)  # class names, index = class id
    image_mean: list = field(default_factory=lambda: [0.5])  # per channel, on [0, 1] pixels
    image_std: list = field(default_factory=lambda: [0.5])

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        self.check_sizes(("image_size", "patch_size", "num_channels", "num_classes", "n_layer", "n_head",
                     "n_embd"))
        if self.image_size % self.patch_size:
            raise ShapeError(f"image size {self.image_size} is not divisible by the patch size "
                             f"{self.patch_size}: choose a patch size that divides it")
        if self.num_channels not in (1, 3):
            raise ShapeError(f"num-channels={self.num_channels}: only 1 (grayscale) or 3 (RGB)")
        if self.act not in ACTS:
            raise ShapeError(f"activation {self.act!r} is not one of {', '.join(ACTS)}")
        if not self.labels:
            self.labels = [str(i) for i in range(self.num_classes)]
        if len(self.labels) != self.num_classes:
            raise ShapeError(f"{len(self.labels)} class names for {self.num_classes} classes")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            if len(v) == 1 and self.num_channels > 1:
                setattr(self, name, list(v) * self.num_channels)
            elif len(v) != self.num_channels:
                raise ShapeError(f"{name} has {len(v)} values for {self.num_channels} channels")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def seq_len(self) -> int:
        return self.num_patches + 1

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size ** 2

    # Hugging Face ViTConfig <-> ours
    def to_hf(self) -> dict:
        hf_act = "gelu" if self.act == "gelu" else "gelu_pytorch_tanh"
        return {
            "architectures": ["ViTForImageClassification"],
            "model_type": "vit",
            "hidden_size": self.n_embd,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "intermediate_size": 4 * self.n_embd,
            "hidden_act": hf_act,
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.02,
            "layer_norm_eps": self.layer_norm_eps,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "qkv_bias": True,
            "encoder_stride": self.patch_size,
            "id2label": {str(i): n for i, n in enumerate(self.labels)},
            "label2id": {n: i for i, n in enumerate(self.labels)},
        }

    @classmethod
    def from_hf(cls, hf: dict) -> "ViTConfig":
        act = hf.get("hidden_act", "gelu")
        if act not in HF_ACTS:
            raise ShapeError(f"hidden_act {act!r} is not supported (gelu, gelu_new, gelu_pytorch_tanh)")
        C = hf["hidden_size"]
        if hf.get("intermediate_size", 4 * C) != 4 * C:
            raise ShapeError(f"intermediate_size={hf['intermediate_size']} is not supported "
                             f"(only 4 * hidden_size = {4 * C})")
        size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
        if isinstance(size, (list, tuple)):
            if size[0] != size[1]:
                raise ShapeError(f"image_size {size}: only square images are supported")
            size = size[0]
        if isinstance(patch, (list, tuple)):
            if patch[0] != patch[1]:
                raise ShapeError(f"patch_size {patch}: only square patches are supported")
            patch = patch[0]
        id2label = hf.get("id2label") or {}
        k = len(id2label) or hf.get("num_labels", 2)
        labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(k)]
        ch = hf.get("num_channels", 3)
        return cls(image_size=size, patch_size=patch, num_channels=ch, num_classes=k,
                   n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=C,
                   dropout=0.0, layer_norm_eps=hf.get("layer_norm_eps", 1e-12), act=HF_ACTS[act],
                   labels=labels, image_mean=[0.5] * ch, image_std=[0.5] * ch)


# Named sizes: `mingpt vit train --preset NAME`.
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=64),     # MNIST-class data on a laptop CPU
    "small": dict(n_layer=6, n_head=4, n_embd=128),
    "base": dict(n_layer=12, n_head=12, n_embd=768),  # ViT-B
}

# ---------------------------------------------------------------- layout


def layer_prefix(i: int) -> str:
    return f"vit.encoder.layer.{i}."


def vit_slots(cfg: ViTConfig) -> list[tuple[str, tuple, str]]:
    C, K, P, ch = cfg.n_embd, cfg.num_classes, cfg.patch_size, cfg.num_channels
    s = [("vit.embeddings.cls_token", (1, 1, C), "pos"),
         ("vit.embeddings.position_embeddings", (1, cfg.seq_len, C), "pos"),
         ("vit.embeddings.patch_embeddings.projection.weight", (C, ch, P, P), "weight"),
         ("vit.embeddings.patch_embeddings.projection.bias", (C,), "bias")]
    for i in range(cfg.n_layer):
        p = layer_prefix(i)
        a = p + "attention.attention."
        # query, key, value weights back to back, then their biases: the packed c_attn
        s += [(p + "layernorm_before.weight", (C,), "ln_w"), (p + "layernorm_before.bias", (C,), "ln_b"),
              (a + "query.weight", (C, C), "weight"), (a + "key.weight", (C, C), "weight"),
              (a + "value.weight", (C, C), "weight"),
              (a + "query.bias", (C,), "bias"), (a + "key.bias", (C,), "bias"), (a + "value.bias", (C,), "bias"),
              (p + "attention.output.dense.weight", (C, C), "proj"),
              (p + "attention.output.dense.bias", (C,), "bias"),
              (p + "layernorm_after.weight", (C,), "ln_w"), (p + "layernorm_after.bias", (C,), "ln_b"),
              (p + "intermediate.dense.weight", (4 * C, C), "weight"),
              (p + "intermediate.dense.bias", (4 * C,), "bias"),
              (p + "output.dense.weight", (C, 4 * C), "proj"), (p + "output.dense.bias", (C,), "bias")]
    s += [("vit.layernorm.weight", (C,), "ln_w"), ("vit.layernorm.bias", (C,), "ln_b"),
          ("classifier.weight", (K, C), "weight"), ("classifier.bias", (K,), "bias")]
    return s


def block_views(layout: Layout, buf: np.ndarray, i: int) -> dict:
    """The short names nn/block.py reads, as views of layer i in buf."""
    v = layout.views(buf)
    p = layer_prefix(i)
    a = p + "attention.attention."
    C = v[a + "query.bias"].shape[0]

    def span(first: str, shape: tuple) -> np.ndarray:
        off = layout.slots[first].offset
        return buf[off:off + int(np.prod(shape))].reshape(shape)

    return {"ln_1.weight": v[p + "layernorm_before.weight"], "ln_1.bias": v[p + "layernorm_before.bias"],
            "attn.c_attn.weight": span(a + "query.weight", (3 * C, C)),
            "attn.c_attn.bias": span(a + "query.bias", (3 * C,)),
            "attn.c_proj.weight": v[p + "attention.output.dense.weight"],
            "attn.c_proj.bias": v[p + "attention.output.dense.bias"],
            "ln_2.weight": v[p + "layernorm_after.weight"], "ln_2.bias": v[p + "layernorm_after.bias"],
            "mlp.c_fc.weight": v[p + "intermediate.dense.weight"],
            "mlp.c_fc.bias": v[p + "intermediate.dense.bias"],
            "mlp.c_proj.weight": v[p + "output.dense.weight"],
            "mlp.c_proj.bias": v[p + "output.dense.bias"]}


def init_params(layout: Layout, cfg: ViTConfig, rng: np.random.Generator) -> np.ndarray:
    """Hugging Face ViT's initialisation: truncated N(0, 0.02) for every
    matrix, the class token and the position embeddings; zero biases, unit
    layernorm weights. (A zero classifier, or GPT-2's scaled residual
    projections, measurably slowed the first epochs on MNIST.)"""
    buf = layout.zeros()
    views = layout.views(buf)
    for name, s in layout.slots.items():
        if s.kind in ("weight", "proj", "pos"):
            views[name][...] = np.clip(rng.normal(0.0, 1.0, s.shape), -2.0, 2.0) * 0.02
        elif s.kind == "ln_w":
            views[name][...] = 1.0
    return buf

# ---------------------------------------------------------------- images


def patchify(images: np.ndarray, P: int, out: np.ndarray | None = None) -> np.ndarray:
    """images (B, ch, H, W) -> (B, Np, ch*P*P): row-major over the patch grid,
    each patch flattened channel-major (ch, P, P), as Conv2d weights are."""
    B, ch, H, W = images.shape
    gh, gw = H // P, W // P
    x = images.reshape(B, ch, gh, P, gw, P).transpose(0, 2, 4, 1, 3, 5)  # (B, gh, gw, ch, P, P)
    if out is None:
        return np.ascontiguousarray(x, F32).reshape(B, gh * gw, ch * P * P)
    out.reshape(B, gh, gw, ch, P, P)[...] = x
    return out


def check_images(cfg: ViTConfig, images: np.ndarray) -> np.ndarray:
    if images.ndim != 4:
        raise ShapeError(f"images must be (B, channels, H, W), got shape {images.shape}")
    B, ch, H, W = images.shape
    if ch != cfg.num_channels:
        raise ShapeError(f"images have {ch} channel(s), the model takes {cfg.num_channels}")
    if H % cfg.patch_size or W % cfg.patch_size:
        raise ShapeError(f"image size {H}x{W} is not divisible by the patch size {cfg.patch_size}")
    if H != cfg.image_size or W != cfg.image_size:
        raise ShapeError(f"images are {H}x{W}, the model takes {cfg.image_size}x{cfg.image_size}")
    return np.ascontiguousarray(images, F32)

# ---------------------------------------------------------------- model


class _Acts(StackActs):
    """The stack's buffers (blocks, last, dx...) and the embedding's and head's."""

    def __init__(self, cfg: ViTConfig, stack: Stack, B: int, with_grads: bool, dev: Device = CPU):
        super().__init__(stack, B, cfg.seq_len, with_grads)
        C, T, K, Np = cfg.n_embd, cfg.seq_len, cfg.num_classes, cfg.num_patches
        e = lambda *s: dev.empty(s)
        self.patches = e(B, Np, cfg.patch_dim)
        # the GPU's input: patchified on the host (a re-layout of the batch, the
        # images' own bytes), then uploaded from here
        self.patches_host = np.empty((B, Np, cfg.patch_dim), F32) if dev.is_cuda else self.patches
        # The embedding is a lookup in `table`: row 0 the class token, row
        # 1 + b*Np + j the projection of patch j of image b; `ids` (B, T) picks
        # the class token and then the image's patches, and the kernel adds the
        # position rows: emb[b, 0] = cls + pos[0], emb[b, t] = pe[b, t-1] + pos[t].
        self.table = e(1 + B * Np, C)
        self.pe = self.table.reshape(-1)[C:].reshape(B, Np, C)     # patch projections
        ids = np.zeros((B, T), np.int32)
        ids[:, 1:] = 1 + np.arange(B * Np, dtype=np.int32).reshape(B, Np)
        self.ids = dev.put(ids)
        self.emb = e(B, T, C)
        self.emb_drop = e(B, T, C) if cfg.dropout > 0 else None
        self.emb_mask = dev.empty((B, T, C), np.uint8) if cfg.dropout > 0 else None
        self.cls = e(B, C)
        self.lnf, self.lnf_mean, self.lnf_rstd = e(B, C), e(B), e(B)
        self.logits = e(B, K)
        # the loss (with label smoothing, nn/loss.py), on the device: only the
        # labels go up (into `labels` on the GPU) and one number comes down
        self.probs, self.losses = e(B, K), e(B)
        self.labels = dev.empty((B,), np.int32) if dev.is_cuda else None
        if with_grads:
            self.dlosses = e(B)
            self.dcls = dev.zeros((B, C))      # d(layernormed class token)
            self.dtable = e(1 + B * Np, C)     # zeroed each step; row 0: d(class token)
            self.dpe = self.dtable.reshape(-1)[C:].reshape(B, Np, C)
            self.dpos = e(T, C)


class ViT(FlatModel):
    def __init__(self, cfg: ViTConfig, params: np.ndarray | None = None, seed: int = 0,
                 device: Device = CPU):
        """A fresh initialisation (params None) draws from seed (FlatModel)."""
        super().__init__(cfg, vit_slots(cfg), params,
                         lambda: init_params(self.layout, cfg, np.random.default_rng(seed)), device)
        C = cfg.n_embd
        self._wp = self.p["vit.embeddings.patch_embeddings.projection.weight"].reshape(C, cfg.patch_dim)
        self._dwp = self.g["vit.embeddings.patch_embeddings.projection.weight"].reshape(C, cfg.patch_dim)
        self.stack = Stack(cfg, self.params, self.grads, lambda buf, i: block_views(self.layout, buf, i),
                           causal=False, act=cfg.act, cls_only=True, device=device)
        self._acts: _Acts | None = None
        self._last = None

    def num_params(self) -> int:
        return self.layout.size

    def _buffers(self, B: int, with_grads: bool) -> _Acts:
        a = self._acts
        if a is None or a.B != B or (with_grads and a.grads is None):
            self._acts = None   # free the old buffers first
            a = self._acts = _Acts(self.cfg, self.stack, B, with_grads, self.device)
        return a

    # ------------------------------------------------------------ forward

    def forward(self, images: np.ndarray, labels: np.ndarray | None = None, train: bool = False,
                seed: int = 0, label_smoothing: float = 0.0):
        """images (B, ch, H, W) float32, normalised (a host array). With
        labels: returns the mean loss and keeps what backward needs. Without:
        returns logits (B, K), a view of an internal buffer (on the model's
        device) valid until the next call."""
        cfg = self.cfg
        images = check_images(cfg, images)
        B = images.shape[0]
        C, T = cfg.n_embd, cfg.seq_len
        a = self._buffers(B, with_grads=train)
        drop = cfg.dropout if train else 0.0
        patchify(images, cfg.patch_size, a.patches_host)
        if a.patches_host is not a.patches:   # the GPU: the batch goes up
            a.patches.copy_from(a.patches_host)
        ops.matmul_forward(a.patches, self._wp, self.p["vit.embeddings.patch_embeddings.projection.bias"],
                           a.pe)                                                        # (B, Np, C)
        ops.copy(a.table.reshape(-1)[:C], self.p["vit.embeddings.cls_token"].reshape(C))
        ops.embedding_forward(a.ids, a.table, self.p["vit.embeddings.position_embeddings"].reshape(T, C),
                              a.emb)                                                    # (B, T, C)
        x = a.emb
        if drop > 0:
            x, _ = ops.dropout_forward(a.emb, drop, mix_seed(seed, 0), a.emb_drop, a.emb_mask)
        out = self.stack.forward(a, x, drop, seed)                                # (B, 1, C)
        ops.copy(a.cls, out.reshape(B, C))
        ops.layernorm_forward(a.cls, self.p["vit.layernorm.weight"], self.p["vit.layernorm.bias"],
                              cfg.layer_norm_eps, a.lnf, a.lnf_mean, a.lnf_rstd)
        ops.matmul_forward(a.lnf, self.p["classifier.weight"], self.p["classifier.bias"], a.logits)
        if labels is None:
            self._last = None
            return a.logits
        labels = np.ascontiguousarray(labels, np.int32)
        if labels.shape != (B,):
            raise ShapeError(f"labels have shape {labels.shape}, expected ({B},)")
        n = count_rows(labels)
        if a.labels is not None:   # the GPU: checked, then up (the CPU's kernel checks host labels)
            ops.check_ids("labels", labels, cfg.num_classes, allow=ops.IGNORE_INDEX)
            labels = a.labels.copy_from(labels)
        loss = smoothed_crossentropy_forward(a.logits, labels, label_smoothing, a.losses, a.probs, n)
        self._last = (labels, label_smoothing, n) if train else None
        return loss

    def attentions(self) -> list[np.ndarray]:
        """Attention probabilities (B, NH, T, T) of each layer, from the last
        forward (host arrays: on the GPU, copies)."""
        return [to_host(att) for att in self._acts.attention_maps()]

    # ------------------------------------------------------------ backward

    def backward(self, loss_scale: float = 1.0) -> None:
        """Adds d(loss * loss_scale)/d(params) into self.grads."""
        if self._last is None:
            raise RuntimeError("backward() needs a forward(images, labels, train=True) first")
        cfg = self.cfg
        labels, eps, n = self._last
        a = self._acts
        drop = cfg.dropout
        C, T = cfg.n_embd, cfg.seq_len
        dlogits = smoothed_crossentropy_backward(a.probs, labels, eps, n, a.dlosses, loss_scale)   # (B, K)
        ops.fill(a.dcls, 0)
        ops.matmul_backward(dlogits, a.lnf, self.p["classifier.weight"], a.dcls,
                            self.g["classifier.weight"], self.g["classifier.bias"])
        ops.fill(a.dout, 0)    # d(class token out of the stack) (B, 1, C)
        ops.layernorm_backward(a.dcls, a.cls, self.p["vit.layernorm.weight"], a.lnf_mean, a.lnf_rstd,
                               a.dout.reshape(a.B, C), self.g["vit.layernorm.weight"], self.g["vit.layernorm.bias"])
        demb, free = self.stack.backward(a)                                             # (B, T, C)
        if drop > 0:
            demb = ops.dropout_backward(demb, a.emb_mask, drop, free, accumulate=False)
        # The lookup's backward: d(table) (row 0: the class token's, summed
        # over the batch; then d(patch projections)) and d(positions) (summed
        # over the batch), each sum in batch order from 0, then added to the
        # gradients as numpy's `g += d.sum(0)` adds.
        ops.fill(a.dtable, 0)
        ops.fill(a.dpos, 0)
        ops.embedding_backward(demb, a.ids, a.dtable.shape[0], T, a.dtable, a.dpos)
        dcls_token = self.g["vit.embeddings.cls_token"].reshape(C)
        ops.residual_forward(dcls_token, a.dtable.reshape(-1)[:C], dcls_token)
        dpos = self.g["vit.embeddings.position_embeddings"].reshape(T, C)
        ops.residual_forward(dpos, a.dpos, dpos)
        ops.matmul_backward(a.dpe, a.patches, self._wp, None, self._dwp,
                            self.g["vit.embeddings.patch_embeddings.projection.bias"], need_dx=False)
        self._last = None

