"""Training loop of the ViT: shuffled mini-batches with augmentation, AdamW
with warmup + cosine decay (optim.lr_at), label smoothing, evaluation at the
end of every epoch, checkpoints, Ctrl-C and resume.

Run directory (--out):
    run_config.json   every resolved option
    latest/           checkpoint (mingpt_c.vit_checkpoint) after each epoch,
                      on Ctrl-C and at the end
    log.jsonl         train-loss records and one eval record per epoch
    curves.png        train loss and test accuracy, drawn at the end

The test split is only reported, never used to pick a checkpoint: latest/
is the model the run ends with.
Determinism: the order of an epoch comes from (seed, epoch), augmentation
from (seed, iteration), dropout from (seed, iteration); a resumed run goes on
exactly as the uninterrupted one (same thread count).
--device cuda trains on the GPU (the model's buffers and AdamW's moments in
GPU memory); checkpoints hold host copies, so a run may resume, and a model
be evaluated, on either device.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mingpt_c.vit import images as imgs
from mingpt_c.vit import checkpoint as vit_checkpoint
from mingpt_c._lib import set_num_threads
from mingpt_c.device import Device, default_dtype, to_host
from mingpt_c.errors import CheckpointError, DataError, MinGPTError
from mingpt_c.vit.model import ViT, ViTConfig
from mingpt_c.nn.optim import AdamW, lr_at
from mingpt_c.run.signals import StopFlag


@dataclass
class ViTTrainConfig:
    out: str = "out-vit"             # run directory
    dataset: str | None = None       # KIND:PATH (mingpt_c.images); None: generated shapes
    image_size: int | None = None    # resize folder images to this; default: as stored
    patch_size: int = 4
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    batch_size: int = 128
    epochs: int = 5
    max_iters: int | None = None     # stop after this many iterations (the schedule still spans epochs)
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_iters: int = 200
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # max global gradient norm; 0 disables
    label_smoothing: float = 0.0
    crop_pad: int = 0                # random crop after zero padding of this many pixels
    hflip: bool = False              # random horizontal flip (not for digits)
    val_fraction: float = 0.1        # held out of a folder without train/ and test/
    train_limit: int | None = None   # train on the first N images only (quick runs)
    eval_limit: int | None = None    # evaluate on the first N test images only
    eval_batch_size: int = 500
    log_interval: int = 20
    seed: int = 1337
    threads: int | None = None       # C core threads; default: all cores
    progress: bool = True
    device: str = "cpu"              # cpu | cuda
    dtype: str | None = None         # GPU matrix products: fp32 | tf32 | bf16; default: bf16 where supported

# ------------------------------------------------------------------ evaluation


def predict_logits(model: ViT, data: imgs.ImageSet, batch_size: int = 500) -> np.ndarray:
    """Logits (N, K) of a whole data set, in batches."""
    cfg = model.cfg
    norm = imgs.Normalizer(cfg.image_mean, cfg.image_std)
    out = np.empty((len(data), cfg.num_classes), np.float32)
    for s in range(0, len(data), batch_size):
        out[s:s + batch_size] = to_host(model.forward(norm(data.images[s:s + batch_size])))
    return out


def check_compatible(cfg: ViTConfig, data: imgs.ImageSet) -> None:
    if data.channels != cfg.num_channels:
        raise DataError(f"{data.source}: images have {data.channels} channel(s), the model takes "
                        f"{cfg.num_channels}")
    if data.size != (cfg.image_size, cfg.image_size):
        raise DataError(f"{data.source}: images are {data.size[0]}x{data.size[1]}, the model takes "
                        f"{cfg.image_size}x{cfg.image_size} (pass --image-size to resize a folder)")
    if data.labels.size and data.labels.max() >= cfg.num_classes:
        raise DataError(f"{data.source}: label {data.labels.max()} is outside the model's "
                        f"{cfg.num_classes} classes")


def evaluate(model: ViT, data: imgs.ImageSet, batch_size: int = 500) -> dict:
    """Accuracy, mean cross-entropy and the confusion matrix (rows: true
    class, columns: predicted)."""
    check_compatible(model.cfg, data)
    logits = predict_logits(model, data, batch_size).astype(np.float64)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    pred = logits.argmax(1)
    K = model.cfg.num_classes
    conf = np.zeros((K, K), np.int64)
    np.add.at(conf, (data.labels, pred), 1)
    n = max(len(data), 1)
    return {"accuracy": float((pred == data.labels).sum() / n),
            "loss": float(-logp[np.arange(len(data)), data.labels].mean()) if len(data) else float("nan"),
            "confusion": conf, "n": len(data)}

# ------------------------------------------------------------------ loop


def _load_data(tc: ViTTrainConfig):
    train, test = imgs.load_splits(tc.dataset, tc.image_size, tc.val_fraction, tc.seed)
    if len(train) == 0:
        raise DataError(f"{train.source}: no training images")
    if tc.train_limit:
        train = train.subset(slice(0, tc.train_limit))
    if tc.eval_limit:
        test = test.subset(slice(0, tc.eval_limit))
    return train, test


def _device(tc: ViTTrainConfig) -> Device:
    """The run's device; on the GPU tc.dtype is resolved to its default."""
    if tc.device == "cuda" and tc.dtype is None:
        Device("cuda")   # says plainly when there is no GPU
        tc.dtype = default_dtype("cuda")
    return Device(tc.device, tc.dtype)


def train(tc: ViTTrainConfig, resume: bool = False, log=print) -> dict:
    """Runs (or resumes) training; returns a summary dict."""
    run = Path(tc.out)
    if tc.threads:
        set_num_threads(tc.threads)
    dev = _device(tc)
    if tc.batch_size < 1 or tc.epochs < 1 or tc.eval_batch_size < 1:
        raise DataError("batch size, epochs and eval batch size must be positive")
    if not 0.0 <= tc.label_smoothing < 1.0:
        raise DataError(f"label smoothing {tc.label_smoothing} must be in [0, 1)")
    if tc.crop_pad < 0:
        raise DataError(f"crop padding {tc.crop_pad} must be >= 0")
    t0 = time.perf_counter()
    train_set, test_set = _load_data(tc)
    state = None
    if resume:
        try:
            loaded = vit_checkpoint.load(run / "latest", with_optimizer=True)
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume from {run / 'latest'}: {e}") from None
        cfg, state = loaded["cfg"], loaded["train_state"]
        model = ViT(cfg, loaded["params"], device=dev)
        m, v, t = loaded["optimizer"]
    else:
        H, W = train_set.size
        if H != W:
            raise DataError(f"{train_set.source}: images are {H}x{W}; only square images are supported")
        mean, std = imgs.channel_stats(train_set.images)
        cfg = ViTConfig(image_size=H, patch_size=tc.patch_size, num_channels=train_set.channels,
                        num_classes=len(train_set.classes), n_layer=tc.n_layer, n_head=tc.n_head,
                        n_embd=tc.n_embd, dropout=tc.dropout, labels=list(train_set.classes),
                        image_mean=mean, image_std=std)
        model = ViT(cfg, seed=tc.seed, device=dev)
        m = v = None
        t = 0
    check_compatible(cfg, train_set)
    check_compatible(cfg, test_set)
    opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, 1e-8, tc.weight_decay,
                tc.grad_clip, t)
    if m is not None:
        opt.load_moments(m, v)
    run.mkdir(parents=True, exist_ok=True)
    (run / "run_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=2) + "\n")

    B = tc.batch_size
    N = len(train_set)
    if N < B:
        raise DataError(f"{train_set.source}: {N} training images, fewer than one batch of {B}: "
                        f"lower --batch-size")
    per_epoch = N // B   # the last partial batch of an epoch is dropped
    schedule = per_epoch * tc.epochs  # the cosine spans every epoch, so stopping early and
    total = schedule                  # resuming later gives exactly the uninterrupted run
    if tc.max_iters is not None:
        total = min(total, tc.max_iters)
    start = state["iter"] if state else 0
    norm = imgs.Normalizer(cfg.image_mean, cfg.image_std)
    log(f"model: ViT {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, patch {cfg.patch_size} "
        f"on {cfg.image_size}x{cfg.image_size}x{cfg.num_channels} ({cfg.seq_len} tokens), "
        f"{cfg.num_classes} classes: {model.num_params() / 1e6:.3f}M parameters")
    if dev.is_cuda:
        from mingpt_c import cuda
        log(f"device: {cuda.info()['name']}, {tc.dtype} matrix products")
    log(f"data: {train_set.source}: {N:,} train / {len(test_set):,} test images; "
        f"{per_epoch} iterations per epoch, {total} in all")

    def train_state(it, acc):
        return {"iter": it, "epoch": it / per_epoch, "test_accuracy": acc, "seed": tc.seed,
                "source": train_set.source, "options": dataclasses.asdict(tc)}

    logf = open(run / "log.jsonl", "a")
    bar = None
    if tc.progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, leave=True)
    say = lambda msg: (bar.write if bar else log)(msg)
    result = {"test_accuracy": state.get("test_accuracy") if state else None}
    it, stopped, nan_streak = start, False, 0
    losses, seen, t_last = [], 0, time.perf_counter()
    x = np.empty((B, cfg.num_channels, cfg.image_size, cfg.image_size), np.float32)
    perm, perm_epoch = None, -1
    try:
        with StopFlag() as stop:
            while it < total:
                if stop.requested:
                    stopped = True
                    break
                epoch, k = divmod(it, per_epoch)
                if epoch != perm_epoch:
                    perm, perm_epoch = np.random.default_rng([tc.seed, epoch]).permutation(N), epoch
                idx = np.sort(perm[k * B:(k + 1) * B])   # sorted: faster gathers, same batch
                batch = imgs.augment(train_set.images[idx], np.random.default_rng([tc.seed, it, 1]),
                                     tc.crop_pad, tc.hflip)
                lr = lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, schedule)
                model.zero_grad()
                loss = model.forward(norm(batch, x), train_set.labels[idx], train=True,
                                     seed=tc.seed * 1_000_003 + it, label_smoothing=tc.label_smoothing)
                model.backward()
                gnorm = float("nan")
                if math.isfinite(loss):
                    gnorm = opt.step(model.grads, lr)
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    nan_streak += 1
                    say(f"iter {it}: non-finite loss or gradient: step skipped")
                    if nan_streak >= 5:
                        raise MinGPTError(f"training diverged at iteration {it} (try a lower --lr)")
                else:
                    nan_streak = 0
                it += 1
                losses.append(loss)
                seen += B
                if it % tc.log_interval == 0 or it == total:
                    now = time.perf_counter()
                    ips = seen / max(now - t_last, 1e-9)
                    logf.write(json.dumps({"type": "train", "iter": it, "epoch": it / per_epoch,
                                           "loss": float(np.mean(losses)), "lr": lr, "grad_norm": gnorm,
                                           "images_per_s": ips}) + "\n")
                    logf.flush()
                    losses, seen, t_last = [], 0, now
                    if bar:
                        bar.set_postfix(epoch=f"{it / per_epoch:.2f}", loss=f"{loss:.4f}", lr=f"{lr:.1e}",
                                        img_s=f"{ips:,.0f}")
                if bar:
                    bar.update(1)
                if it % per_epoch == 0 or it == total:
                    ev = evaluate(model, test_set, tc.eval_batch_size)
                    rec = {"type": "eval", "iter": it, "epoch": it / per_epoch, "test_loss": ev["loss"],
                           "test_accuracy": ev["accuracy"], "elapsed_s": time.perf_counter() - t0}
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    say(f"epoch {it / per_epoch:.2f} (iter {it}): test loss {ev['loss']:.4f}, "
                        f"accuracy {100 * ev['accuracy']:.2f}%")
                    result.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"])
                    vit_checkpoint.save(run / "latest", cfg, model.params, opt,
                                        train_state(it, ev["accuracy"]))
            if stopped:
                vit_checkpoint.save(run / "latest", cfg, model.params, opt,
                                    train_state(it, result.get("test_accuracy")))
    finally:
        if bar:
            bar.close()
        logf.close()
    plot_curves(run / "log.jsonl", run / "curves.png")
    result.update(iter=it, total=total, interrupted=stopped, out=str(run),
                  seconds=time.perf_counter() - t0)
    if stopped:
        log(f"interrupted at iteration {it}: checkpoint saved in {run / 'latest'}; "
            f"continue with: mingpt vit train --out {run} --resume")
    return result


def plot_curves(log_path: Path, png: Path) -> None:
    """Train loss and test accuracy against iterations, from log.jsonl."""
    recs = [json.loads(line) for line in open(log_path) if line.strip()]
    tr = [(r["iter"], r["loss"]) for r in recs if r["type"] == "train"]
    ev = [(r["iter"], 100 * r["test_accuracy"]) for r in recs if r["type"] == "eval"]
    if not tr and not ev:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if tr:
        ax.plot(*zip(*tr), lw=0.8, color="tab:blue", label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ev:
        ax2 = ax.twinx()
        ax2.plot(*zip(*ev), "o-", ms=3, color="tab:orange", label="test accuracy (%)")
        ax2.set_ylabel("test accuracy (%)")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
