"""`mingpt vit`: Vision Transformer: train, eval, predict, attention maps
(and what `mingpt info` says of a ViT)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from mingpt_c.cli import options


@click.group()
def vit():
    """Vision Transformer: train, eval, predict, attention maps.

    Data sets (--dataset): mnist:DIR, fashion-mnist:DIR (IDX files),
    cifar10:DIR (python batches), folder:DIR (one sub-folder per class);
    none: a generated set of shapes that needs no download."""


# ------------------------------------------------------------------ train


def _vit_train_options(f):
    """`mingpt vit train`'s options, in --help order; defaults from ViTTrainConfig."""
    from mingpt_c.vit.train import ViTTrainConfig

    d = ViTTrainConfig()
    return options.decorate(f, [
        click.option("--dataset", default=None,
                     help="KIND:PATH [default: generated shapes]; mnist: and fashion-mnist: start from the "
                          "recipes of the published figures (" + "; ".join(
                              f"{k}: {options.flags(v)}" for k, v in DATASET_RECIPES.items()) + ")"),
        options.out(d.out),
        options.preset(["tiny", "small", "base"]),
        click.option("--image-size", type=options.POSITIVE_INT, default=None, help="resize folder images to this"),
        click.option("--patch-size", type=options.POSITIVE_INT, default=d.patch_size,
                     help="side of the square patches (divides --image-size)"),
        *options.model_size(d),
        options.dropout(d),
        options.batch_size(d),
        options.grad_accum(d),
        click.option("--epochs", type=options.POSITIVE_INT, default=d.epochs,
                     help="passes over the training images"),
        click.option("--max-iters", type=options.POSITIVE_INT, default=None, help="stop after this many iterations"),
        *options.optim(d, betas=("beta2",)),
        click.option("--label-smoothing", type=options.FRACTION, default=d.label_smoothing,
                     help="share of each target spread over all classes"),
        click.option("--crop-pad", type=options.NON_NEGATIVE_INT, default=d.crop_pad,
                     help="augmentation: random crop after padding this many pixels (0: off)"),
        click.option("--hflip", is_flag=True, help="augmentation: random horizontal flip"),
        click.option("--val-fraction", type=options.OPEN_FRACTION, default=d.val_fraction,
                     help="held out of a folder with no train/ and test/ inside"),
        click.option("--train-limit", type=options.POSITIVE_INT, default=None, help="use the first N training images"),
        click.option("--eval-limit", type=options.POSITIVE_INT, default=None, help="evaluate on the first N test images"),
        options.log_interval(d),
        options.seed(d),
        options.train_threads(),
        options.resume(),
        options.no_progress(),
        *options.run_options(d),
    ])


# The recipes behind the published MNIST and Fashion-MNIST figures
# (docs/experiments.md): a new run on such a data set starts from them, any
# option given on the command line winning.
DATASET_RECIPES = {
    "mnist": dict(patch_size=7, epochs=12, lr=1e-3, warmup_iters=300, crop_pad=2, label_smoothing=0.1),
    "fashion-mnist": dict(patch_size=7, epochs=40, lr=1e-3, warmup_iters=300, hflip=True, dropout=0.05,
                          label_smoothing=0.1),
}


@vit.command(name="train")
@_vit_train_options
@click.pass_context
def vit_train(ctx, preset, resume, no_progress, **opts):
    """Train a ViT classifier (defaults: 4 layers, 4 heads, width 64, patch 4)."""
    from mingpt_c.vit.model import PRESETS
    from mingpt_c.vit.train import ViTTrainConfig, train as run_train

    options.check_lr(opts)   # each option's range: its type, at parse time
    if opts["image_size"] is not None and opts["image_size"] % opts["patch_size"]:
        raise options.OptionConflict(f"--image-size {opts['image_size']} is not divisible by --patch-size "
                               f"{opts['patch_size']}: choose a patch size that divides it")
    given = options.given(ctx)
    if preset:
        options.apply_preset(opts, PRESETS[preset], given, preset)
    kind = (opts["dataset"] or "").partition(":")[0]
    if kind in DATASET_RECIPES and not resume:
        options.apply_recipe(opts, DATASET_RECIPES[kind], given, kind)
    tc = ViTTrainConfig(**opts, progress=not no_progress)
    res = run_train(tc, resume=resume, log=lambda m: click.echo(m, err=True), given=given)
    options.exit_if_interrupted(res)
    if res["main"]:
        acc = res.get("test_accuracy")
        acc_s = f"{100 * acc:.2f}%" if acc is not None else "n/a"
        click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s, test accuracy {acc_s}; "
                   f"{options.saved(tc.out)}")


# ------------------------------------------------------------------ eval / predict / attention


@vit.command(name="eval")
@click.argument("ckpt", type=click.Path())
@click.option("--dataset", default=None, help="KIND:PATH [default: generated shapes]")
@click.option("--image-size", type=options.POSITIVE_INT, default=None, help="resize folder images to this")
@click.option("--limit", type=options.POSITIVE_INT, default=None, help="evaluate the first N images only")
@click.option("--batch-size", type=options.POSITIVE_INT, default=500, help="images per forward pass")
@options.threads()
@options.device_option
def vit_eval(ckpt, dataset, image_size, limit, batch_size, threads, device, dtype):
    """Accuracy and confusion matrix of a ViT on a data set's test split."""
    from mingpt_c.vit import images, checkpoint as vit_checkpoint
    from mingpt_c.vit.model import ViT
    from mingpt_c.vit.train import evaluate

    options.use_threads(threads)
    dev = options.to_device(device, dtype)
    loaded = vit_checkpoint.load(ckpt)
    data = images.load_eval_split(dataset, image_size)
    if limit:
        data = data.subset(slice(0, limit))
    res = evaluate(ViT(loaded["cfg"], loaded["params"], device=dev), data, batch_size)
    click.echo(f"{data.source}: accuracy {100 * res['accuracy']:.2f}% ({res['n']:,} images), "
               f"loss {res['loss']:.4f}")
    names = loaded["cfg"].labels
    w = max(6, max(len(str(v)) for v in res["confusion"].flat) + 1)
    click.echo("confusion matrix (rows: true class, columns: predicted)")
    click.echo(" " * 14 + "".join(f"{i:>{w}}" for i in range(len(names))))
    for i, row in enumerate(res["confusion"]):
        click.echo(f"{i:>3} {names[i][:10]:<10}" + "".join(f"{v:>{w}}" for v in row))


@vit.command(name="predict")
@click.argument("ckpt", type=click.Path())
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=options.POSITIVE_INT, default=3, help="classes to print per image")
@click.option("--convert", is_flag=True, help="convert to the model's channels (RGB or grayscale) and resize to its "
                   "image size (bilinear, aspect ratio not kept)")
@options.device_option
def vit_predict(ckpt, images_, top_k, convert, device, dtype):
    """Top-k classes with probabilities for each IMAGE."""
    from mingpt_c.vit import checkpoint as vit_checkpoint
    from mingpt_c.vit.infer import predict_files

    dev = options.to_device(device, dtype)
    loaded = vit_checkpoint.load(ckpt)
    for path, top in predict_files(loaded, images_, top_k, convert, dev):
        click.echo(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))


@vit.command(name="attention")
@click.argument("ckpt", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--out", default="attention.png", type=options.ImageFile(),
              help="image to write (.png, .pdf, .svg, .jpg, ...: what matplotlib writes)")
@click.option("--convert", is_flag=True, help="convert to the model's channels (RGB or grayscale) and resize to its "
                   "image size (bilinear, aspect ratio not kept)")
def vit_attention(ckpt, image, out, convert):
    """Attention rollout from the class token, drawn over IMAGE."""
    from mingpt_c.vit import checkpoint as vit_checkpoint
    from mingpt_c.vit.attention import attention_map_file

    loaded = vit_checkpoint.load(ckpt)
    name, p = attention_map_file(loaded, image, out, convert)
    click.echo(f"{image}: predicted {name} ({100 * p:.1f}%); attention rollout drawn in {out}")


# ------------------------------------------------------------------ info


def describe(loaded: dict, path: Path) -> list[tuple[str, str]]:
    """`mingpt info`: the rows that describe a ViT checkpoint (loaded from path)."""
    rows = []
    cfg = loaded["cfg"]
    rows.append(("model", f"ViT, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, patch "
                          f"{cfg.patch_size} on {cfg.image_size}x{cfg.image_size}x{cfg.num_channels}, {cfg.act}"))
    rows.append(("parameters", f"{loaded['params'].size:,}"))
    rows.append(("classes", f"{cfg.num_classes}: {', '.join(cfg.labels[:10])}"
                            f"{', ...' if cfg.num_classes > 10 else ''}"))
    st = path / "train_state.json"
    if st.exists():
        s = json.loads(st.read_text())
        acc = s.get("test_accuracy")
        rows.append(("trained", f"{s.get('iter')} iterations ({s.get('epoch', 0):.2f} epochs), test accuracy "
                                f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}"))
    return rows