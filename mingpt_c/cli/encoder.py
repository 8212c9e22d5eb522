"""`mingpt encoder`: BERT-style encoder: masked-LM pretraining, text
classification, evaluation, prediction (and what `mingpt info` says of one)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mingpt_c.cli import options


def _encoder_options(f):
    """The options pretrain and train share, in --help order; defaults from EncoderTrainConfig."""
    from mingpt_c.encoder.train import EncoderTrainConfig

    d = EncoderTrainConfig()
    return options.decorate(f, [
        options.out(),
        options.init_from("start from an encoder checkpoint (ours, or imported with `mingpt import`)"),
        click.option("--tokenizer", default=None, type=click.Path(dir_okay=False),
                     help="BPE file with [PAD] [UNK] [CLS] [SEP] [MASK] [default: train one]"),
        click.option("--vocab-size", type=options.POSITIVE_INT, default=d.vocab_size, help="BPE vocabulary to train"),
        click.option("--lower/--no-lower", default=d.lower, help="lower-case texts for the trained BPE"),
        click.option("--bpe-pattern", type=click.Choice(["gpt2", "none", "phrases"]), default=d.bpe_pattern,
                     help="the trained BPE's pre-split: GPT-2's (tokens stay within words), none "
                          "(merges cross spaces, so frequent phrases become tokens), or phrases (two "
                          "stages: GPT-2's split, then the last --phrase-share of the merges across words)"),
        click.option("--phrase-share", type=options.Float("[0, 1]"), default=d.phrase_share,
                     help="with --bpe-pattern phrases: share of the merges learned across words"),
        click.option("--max-len", type=options.Int("[3, inf)"), default=d.max_len,
                     help="tokens per text with [CLS] and [SEP]; longer texts are cut (with a note)"),
        click.option("--truncate", type=click.Choice(["head", "head_tail"]), default=d.truncate,
                     help="what a cut text keeps"),
        *options.model_size(d),
        options.dropout(d),
        click.option("--act", type=click.Choice(["gelu", "gelu_tanh"]), default=d.act,
                     help="GELU: exact (BERT) or tanh approximation (faster)"),
        click.option("--pre-ln", is_flag=True, help="pre-layernorm blocks (GPT-2 order) instead of BERT's post-LN"),
        click.option("--bigram-buckets", type=options.NON_NEGATIVE_INT, default=d.bigram_buckets,
                     help="rows of a hashed embedding table for pairs of adjacent tokens, added to "
                          "each token's embedding (0: none)"),
        options.batch_size(d),
        options.grad_accum(d),
        click.option("--epochs", type=options.POSITIVE, default=d.epochs,
                     help="passes over the training data (may be fractional)"),
        click.option("--max-iters", type=options.POSITIVE_INT, default=None, help="iterations (overrides --epochs)"),
        *options.optim(d),
        click.option("--limit", type=options.POSITIVE_INT, default=None, help="use only the first N training examples"),
        options.log_interval(d),
        options.seed(d),
        options.train_threads(),
        options.no_progress(),
        options.resume("continue the run in --out from its latest checkpoint (same command otherwise)"),
        *options.run_options(d),
    ])


def _encoder_config(opts: dict, **more):
    from mingpt_c.encoder.train import EncoderTrainConfig

    options.check_lr(opts)   # each option's range: its type, at parse time
    if opts["tokenizer"] is None and opts["init_from"] is None and not opts["resume"]:
        _check_vocab_size(opts["vocab_size"])
    progress = not opts.pop("no_progress")
    resume = opts.pop("resume")
    return EncoderTrainConfig(**opts, **more, progress=progress), resume


def _check_vocab_size(n: int) -> None:
    """A BPE trained here needs room for its bytes and specials: the
    trainer's own rule, asked before the run directory is made."""
    from mingpt_c.encoder.data import SPECIALS
    from mingpt_c.errors import MinGPTError
    from mingpt_c.tokenizers.bpe_train import check_train_args

    try:
        check_train_args(n, SPECIALS, "gpt2", 0)
    except MinGPTError as e:
        raise click.BadParameter(str(e), param_hint="'--vocab-size'") from None


@click.group()
def encoder() -> None:
    """BERT-style encoder: masked-LM pretraining, text classification."""


@encoder.command("pretrain")
@click.argument("file", type=click.Path())
@_encoder_options
@click.option("--mask-prob", type=options.Float("(0, 1]"), default=0.15, help="share of tokens chosen for masking")
@click.pass_context
def encoder_pretrain(ctx, file, mask_prob, **opts):
    """Masked-LM pretraining on FILE: text (one document per line) or JSON Lines (its "text")."""
    from mingpt_c.encoder.train import pretrain

    tc, resume = _encoder_config(opts, train_file=file, mask_prob=mask_prob)
    res = pretrain(tc, resume, log=lambda m: click.echo(m, err=True),
                   given=options.given(ctx, rename={"file": "train_file"}))
    options.exit_if_interrupted(res)
    if not res["main"]:
        return
    click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s; {options.saved(tc.out)}; "
               f"fine-tune with: mingpt encoder train --init-from {tc.out} --train DATA.jsonl --out DIR")


# The recipe behind the published IMDB figure (docs/experiments.md: 0.8940
# test accuracy from scratch): a new run from scratch on IMDB starts from it,
# any option given on the command line winning.
RECIPES = {
    "imdb": dict(vocab_size=32768, bigram_buckets=262144, max_len=384, truncate="head_tail", n_layer=1,
                 n_embd=128, act="gelu_tanh", pooling="mean", token_dropout=0.1, epochs=2.0, lr=2e-3),
}


def _recipe(choice: str, train_file: str, init_from: str | None, resume: bool) -> str | None:
    """The recipe a run starts from: --recipe NAME, or with auto the one whose
    name the --train file's name or its folder's holds (IMDB: data/imdb/
    train.jsonl.xz); none on --resume (the run keeps its configuration) or
    with auto and --init-from (a recipe trains from scratch)."""
    if resume or choice == "none":
        return None
    if choice != "auto":
        if init_from:
            raise options.OptionConflict(f"--recipe {choice} trains from scratch and does not apply with "
                                         f"--init-from: leave --recipe out, or pass --recipe none")
        return choice
    if init_from:
        return None
    p = Path(train_file)
    where = f"{p.parent.name}/{p.name}".lower()
    return next((name for name in RECIPES if name in where), None)


@encoder.command("train")
@click.option("--train", "train_file", required=True, type=click.Path(), help="JSON Lines with text and label")
@click.option("--recipe", type=click.Choice(["auto", *RECIPES, "none"]), default="auto",
              help="start a new run from scratch from a data set's published recipe; auto: imdb when the "
                   "--train file's name or its folder's contains 'imdb' (any case), none: the defaults; "
                   "a flag given on the command line wins (" + "; ".join(
                       f"{k}: {options.flags(v)}" for k, v in RECIPES.items()) + ")")
@click.option("--val", "val_file", type=click.Path(), default=None, help="JSON Lines to validate on each epoch")
@click.option("--pooling", type=click.Choice(["cls", "mean", "max"]), default="mean", help="classifier input")
@click.option("--val-limit", type=options.POSITIVE_INT, default=None, help="validate on the first N examples")
@click.option("--token-dropout", type=options.FRACTION, default=0.0,
              help="hide this share of each training text's tokens (word dropout)")
@_encoder_options
@click.pass_context
def encoder_train(ctx, recipe, **opts):
    """Train a text classifier on JSON Lines ({"text": ..., "label": ...}; any labels)."""
    from mingpt_c.encoder.train import train_classifier

    given = options.given(ctx)
    given.pop("recipe", None)   # not a field of the run: the options it set are
    name = _recipe(recipe, opts["train_file"], opts["init_from"], opts["resume"])
    if name:
        options.apply_recipe(opts, RECIPES[name], given, name)
    tc, resume = _encoder_config(opts)
    res = train_classifier(tc, resume, log=lambda m: click.echo(m, err=True), given=given)
    options.exit_if_interrupted(res)
    if not res["main"]:
        return
    acc = res.get("val_accuracy")
    click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s"
               + (f", val accuracy {acc:.4f} (best {res['best_val_accuracy']:.4f})" if acc is not None else "")
               + f"; evaluate with: mingpt encoder eval {tc.out} DATA.jsonl")


@encoder.command("eval")
@click.argument("ckpt", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--batch-size", type=options.POSITIVE_INT, default=64, help="texts per forward pass")
@click.option("--limit", type=options.POSITIVE_INT, default=None, help="evaluate on the first N examples")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@options.threads()
@options.device_option
def encoder_eval(ckpt, data, batch_size, limit, as_json, threads, device, dtype):
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on DATA (JSON Lines)."""
    from mingpt_c.encoder.train import evaluate_file

    options.use_threads(threads)
    r = evaluate_file(ckpt, data, batch_size, limit, log=lambda m: click.echo(m, err=True),
                      progress=sys.stderr.isatty(), device=options.to_device(device, dtype))
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    names = [str(n) for n in r["labels"]]
    w = max(8, *(len(n) for n in names))
    click.echo(f"accuracy {r['accuracy']:.4f} on {r['n']:,} examples (macro F1 {r['macro_f1']:.4f})")
    click.echo(f"{'label':<{w}}  precision  recall     f1  support")
    for p in r["per_class"]:
        click.echo(f"{str(p['label']):<{w}}  {p['precision']:9.4f}  {p['recall']:6.4f}  {p['f1']:.4f}  {p['support']:7d}")
    click.echo("confusion matrix (rows: true, columns: predicted)")
    click.echo(" " * w + "  " + " ".join(f"{n:>{w}}" for n in names))
    for n, row in zip(names, r["confusion"]):
        click.echo(f"{n:<{w}}  " + " ".join(f"{v:>{w}d}" for v in row))


@encoder.command("predict")
@click.argument("ckpt", type=click.Path())
@click.argument("texts", nargs=-1, required=True)
@options.threads()
@options.device_option
def encoder_predict(ckpt, texts, threads, device, dtype):
    """Label and class probabilities of each TEXT: one line 'label<TAB>probabilities<TAB>text'."""
    from mingpt_c.encoder.train import predict_texts

    options.use_threads(threads)
    names, probs = predict_texts(ckpt, list(texts), log=lambda m: click.echo(m, err=True),
                                 device=options.to_device(device, dtype))
    for t, p in zip(texts, probs):
        ps = " ".join(f"{n}={v:.4f}" for n, v in zip(names, p))
        click.echo(f"{names[int(p.argmax())]}\t{ps}\t{t[:60]}")


# ------------------------------------------------------------------ info


def describe(loaded: dict, path: Path) -> list[tuple[str, str]]:
    """`mingpt info`: the rows that describe an encoder checkpoint (loaded from path)."""
    rows = []
    cfg, tok = loaded["cfg"], loaded["tokenizer"]
    rows.append(("model", f"encoder ({'pre' if cfg.pre_ln else 'post'}-LN), {cfg.n_layer} layers, "
                          f"{cfg.n_head} heads, width {cfg.n_embd}, max length {cfg.block_size}, vocab {cfg.vocab_size}, "
                          f"{cfg.act}" + (f", {cfg.bigram_buckets:,} bigram buckets" if cfg.bigram_buckets else "")))
    rows.append(("parameters", f"{loaded['params'].size:,}"))
    heads = (["masked LM"] if cfg.mlm_head else []) + (
        [f"classifier ({cfg.pooling} pooling), {cfg.num_labels} labels: "
         f"{', '.join(map(str, (cfg.extra.get('labels') or [])[:10]))}"] if cfg.num_labels else [])
    rows.append(("heads", f"{'; '.join(heads) or 'none (the trunk only)'}"))
    rows.append(("tokenizer", f"{tok.describe().get('kind', type(tok).__name__) if tok else 'none'}"))
    s = loaded["train_state"]
    if s:
        acc = s.get("val_accuracy")
        rows.append(("trained", f"{s.get('iter')} iterations"
                                + (f", val accuracy {acc:.4f}" if acc is not None else "")))
    return rows