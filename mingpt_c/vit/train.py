"""Training loop of the ViT: shuffled mini-batches with augmentation, AdamW
with warmup + cosine decay (optim.lr_at), label smoothing, evaluation at the
end of every epoch. The run scaffold (mingpt_c.run.scaffold) does the rest:
run directory and lock, logging, progress, signals, the non-finite policy,
checkpoints, --resume, MPI.

Run directory (--out):
    run_config.json   every resolved option
    latest/ best/     checkpoints (mingpt_c.vit.checkpoint) after each epoch,
                      on Ctrl-C and at the end; best/ has the highest
                      accuracy on the evaluated split (a folder's held-out
                      part, or the data set's test split: then the reported
                      accuracy of best/ is no longer an unbiased estimate)
    log.jsonl         train-loss records and one eval record per epoch
    curves.png        train and test loss, test accuracy, drawn at the end

A step takes grad_accum global batches of batch_size images per rank; every
rank draws the same global batch (and its augmentation) and takes its rows,
so 2 ranks of B images train as 1 rank of 2B.
Determinism (mingpt_c.nn.seeds): the order of an epoch comes from
STREAM_BATCHES at (epoch), augmentation from STREAM_AUGMENT at the batch
number, dropout from dropout_seed(seed, iteration, micro-step, rank); a
resumed run goes on exactly as the uninterrupted one (same thread count).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mingpt_c.checkpoint import training_weights
from mingpt_c.device import to_host
from mingpt_c.errors import CheckpointError, DataError
from mingpt_c.nn.loss import mean_cross_entropy
from mingpt_c.nn.model import memory_bytes
from mingpt_c.nn.optim import AdamW, OptimConfig, lr_at
from mingpt_c.nn.params import Layout
from mingpt_c.nn.seeds import STREAM_AUGMENT, STREAM_BATCHES, dropout_seed, stream_rng
from mingpt_c.run.scaffold import Run
from mingpt_c.vit import checkpoint as vit_checkpoint
from mingpt_c.vit import images as imgs
from mingpt_c.vit.model import ViT, ViTConfig, vit_slots


@dataclass
class ViTTrainConfig(OptimConfig):
    out: str = "out-vit"             # run directory
    dataset: str | None = None       # KIND:PATH (mingpt_c.images); None: generated shapes
    image_size: int | None = None    # resize folder images to this; default: as stored
    patch_size: int = 4
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    batch_size: int = 128            # images per rank and micro-batch
    grad_accum: int = 1              # micro-batches per optimizer step
    epochs: int = 5
    max_iters: int | None = None     # stop after this many iterations (the schedule still spans epochs)
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    crop_pad: int = 0                # random crop after zero padding of this many pixels
    hflip: bool = False              # random horizontal flip (not for digits)
    recipe: str | None = None        # the data set's recipe the command line started from (for the log)
    val_fraction: float = 0.1        # held out of a folder without train/ and test/
    train_limit: int | None = None   # train on the first N images only (quick runs)
    eval_limit: int | None = None    # evaluate on the first N test images only
    eval_batch_size: int = 500
    log_interval: int = 20
    seed: int = 1337                 # every random stream (mingpt_c.nn.seeds)
    threads: int | None = None       # C core threads; default: all cores
    max_nan_steps: int = 5           # consecutive non-finite steps before giving up
    progress: bool = True
    dist_timeout: float = 300.0      # under MPI: seconds a rank waits for the others before aborting
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
    logits = predict_logits(model, data, batch_size)
    pred = logits.argmax(1)
    K = model.cfg.num_classes
    conf = np.zeros((K, K), np.int64)
    np.add.at(conf, (data.labels, pred), 1)
    n = max(len(data), 1)
    return {"accuracy": float((pred == data.labels).sum() / n),
            "loss": mean_cross_entropy(logits, data.labels),
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


def _optimizer(tc: ViTTrainConfig, model: ViT, moments=None) -> AdamW:
    m, v, t = moments[:3] if moments else (None, None, 0)
    opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, 1e-8, tc.weight_decay,
                tc.grad_clip, t)
    if m is not None:
        opt.load_moments(m, v)
    return opt


def _start(tc: ViTTrainConfig, run: Run, train_set: imgs.ImageSet):
    """(model, optimizer, no state, no average) of a new run: the image size, channels,
    classes and normalisation from the training images."""
    H, W = train_set.size
    if H != W:
        raise DataError(f"{train_set.source}: images are {H}x{W}; only square images are supported")
    mean, std = imgs.channel_stats(train_set.images)
    cfg = ViTConfig(image_size=H, patch_size=tc.patch_size, num_channels=train_set.channels,
                    num_classes=len(train_set.classes), n_layer=tc.n_layer, n_head=tc.n_head,
                    n_embd=tc.n_embd, dropout=tc.dropout, labels=list(train_set.classes),
                    image_mean=mean, image_std=std)
    run.device.check_fits(memory_bytes(Layout(vit_slots(cfg)).size, cfg, tc.batch_size, cfg.seq_len, True),
                          f"training this ViT ({cfg.n_layer} layers, width {cfg.n_embd}, {cfg.seq_len} tokens "
                          f"an image) at batch {tc.batch_size}")
    model = ViT(cfg, seed=tc.seed, device=run.device)
    return model, _optimizer(tc, model), None, None


def _resume(tc: ViTTrainConfig, run: Run, train_set: imgs.ImageSet):
    """(model at its training weights, optimizer, train state, weight average
    or None) from the run's latest checkpoint."""
    try:
        loaded = vit_checkpoint.load(run.dir / "latest", with_optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {run.dir / 'latest'}: {e}") from None
    weights, average = training_weights(loaded)
    model = ViT(loaded["cfg"], weights, device=run.device)
    return model, _optimizer(tc, model, loaded["optimizer"]), loaded["train_state"], average


def train(tc: ViTTrainConfig, resume: bool = False, log=print, given: dict | None = None) -> dict:
    """Runs (or resumes) training; returns a summary dict. Under an MPI
    launcher with several ranks, runs data-parallel. given: the options the
    command line gave (for the --resume rule; None: every field of tc)."""
    with Run(tc, resume, given, log) as run:
        tc, world = run.cfg, run.world
        if tc.epochs < 1 or tc.eval_batch_size < 1:
            raise DataError("epochs and eval batch size must be positive")
        if not 0.0 <= tc.label_smoothing < 1.0:
            raise DataError(f"label smoothing {tc.label_smoothing} must be in [0, 1)")
        if tc.crop_pad < 0:
            raise DataError(f"crop padding {tc.crop_pad} must be >= 0")
        train_set, test_set = _load_data(tc)
        model, opt, state, average = (_resume if resume else _start)(tc, run, train_set)
        run.average_weights(opt, average)
        cfg = model.cfg
        check_compatible(cfg, train_set)
        check_compatible(cfg, test_set)

        B, GB, N = tc.batch_size, tc.batch_size * world.size, len(train_set)
        per_step = GB * tc.grad_accum   # images of one step over all ranks and micro-batches
        if N < per_step:
            raise DataError(f"{train_set.source}: {N} training images, fewer than one step of {per_step}: "
                            f"lower --batch-size or --grad-accum")
        per_epoch = N // per_step           # the last partial step of an epoch is dropped
        schedule = per_epoch * tc.epochs    # the cosine spans every epoch, so stopping early and
        total = schedule                    # resuming later gives exactly the uninterrupted run
        if tc.max_iters is not None:
            total = min(total, tc.max_iters)
        start = state["iter"] if state else 0
        norm = imgs.Normalizer(cfg.image_mean, cfg.image_std)
        if tc.recipe:
            run.say(f"recipe: {tc.recipe}")
        run.say(f"model: ViT {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, patch "
                f"{cfg.patch_size} on {cfg.image_size}x{cfg.image_size}x{cfg.num_channels} ({cfg.seq_len} "
                f"tokens), {cfg.num_classes} classes: {model.num_params() / 1e6:.3f}M parameters")
        run.say_device()
        run.say(f"data: {train_set.source}: {N:,} train / {len(test_set):,} test images; "
                f"{per_epoch} iterations per epoch, {total} in all"
                + (f" ({world.size} ranks x {B} images)" if world.size > 1 else ""))
        result = {"test_accuracy": state.get("test_accuracy") if state else None}
        run.begin(start, total,
                  save=lambda path, st: vit_checkpoint.save(path, cfg, optimizer=opt, train_state=st,
                                                            **run.checkpoint_weights(model.params)),
                  state=lambda it: {"epoch": it / per_epoch, "test_accuracy": result.get("test_accuracy"),
                                    "source": train_set.source},
                  best_key="best_test_accuracy", best_mode="max", unit="images", plot="curves.png",
                  command=f"mingpt vit train --out {run.dir}")
        rows = slice(world.rank * B, (world.rank + 1) * B)   # this rank's rows of a global batch
        scale, w = run.weights(B, per_step)
        x = np.empty((B, cfg.num_channels, cfg.image_size, cfg.image_size), np.float32)
        perm, perm_epoch = None, -1
        it = start
        while it < total and not run.should_stop():
            epoch, k = divmod(it, per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = stream_rng(tc.seed, STREAM_BATCHES, epoch).permutation(N), epoch
            lr = lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, schedule)
            model.zero_grad()
            loss = 0.0
            for micro in range(tc.grad_accum):
                b = k * tc.grad_accum + micro                # the epoch's global batch b
                idx = np.sort(perm[b * GB:(b + 1) * GB])     # sorted: faster gathers, same batch
                batch = imgs.augment(train_set.images[idx], stream_rng(tc.seed, STREAM_AUGMENT,
                                                                       it * tc.grad_accum + micro),
                                     tc.crop_pad, tc.hflip)[rows]
                loss += w * model.forward(norm(batch, x), train_set.labels[idx][rows], train=True,
                                          seed=dropout_seed(tc.seed, it, micro, world.rank),
                                          label_smoothing=tc.label_smoothing)
                model.backward(scale)
            loss = run.all_reduce(model.grads, loss)
            gnorm = run.step(opt, model.grads, loss, lr, it)
            it += 1
            run.tick(it, loss, lr, gnorm, per_step, epoch=it / per_epoch)
            if it % per_epoch == 0 or it == total:
                with run.evaluating(model.params):
                    ev = evaluate(model, test_set, tc.eval_batch_size)
                run.record({"type": "eval", "iter": it, "epoch": it / per_epoch, "test_loss": ev["loss"],
                            "test_accuracy": ev["accuracy"], "elapsed_s": run.elapsed()})
                run.say(f"epoch {it / per_epoch:.2f} (iter {it}): test loss {ev['loss']:.4f}, "
                        f"accuracy {100 * ev['accuracy']:.2f}%")
                result.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"])
                run.save_best(it, ev["accuracy"])
                run.save_latest(it)
        return run.finish(it, dict(result, total=total))
