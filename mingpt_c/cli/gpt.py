"""GPT commands: train, sample, eval (and what `mingpt info` says of a GPT)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from mingpt_c.cli import options
from mingpt_c.errors import MinGPTError

# ------------------------------------------------------------------ train


def _train_options(f):
    """`mingpt train`'s options, in --help order; defaults from TrainConfig."""
    from mingpt_c.gpt.train import TrainConfig

    d = TrainConfig()
    return options.decorate(f, [
        options.out(d.out),
        click.option("--tokenizer", default=d.tokenizer, help="char | byte | gpt2 | path to a tokenizer file"),
        options.preset(["baby", "small", "gpt2"]),
        *options.model_size(d),
        click.option("--block-size", type=options.POSITIVE_INT, default=d.block_size,
                     help="context length in tokens"),
        options.dropout(d),
        options.batch_size(d),
        options.grad_accum(d),
        click.option("--max-iters", type=options.NON_NEGATIVE_INT, default=d.max_iters,
                     help="optimizer steps"),
        options.lr(d),
        options.min_lr(d),
        options.warmup_iters(d),
        click.option("--lr-decay-iters", type=options.POSITIVE_INT, default=None, help="cosine length [default: max-iters]"),
        options.weight_decay(d),
        click.option("--beta1", type=options.BETA, default=d.beta1, help="AdamW's first-moment decay"),
        options.beta2(d),
        options.grad_clip(d),
        options.ema(d),
        click.option("--embd-init-std", type=options.POSITIVE, default=d.embd_init_std,
                     help="spread of fresh token and position embeddings (GPT-2: 0.02)"),
        click.option("--eval-interval", type=options.POSITIVE_INT, default=d.eval_interval,
                     help="iterations between evaluations (and checkpoints)"),
        click.option("--eval-iters", type=options.POSITIVE_INT, default=d.eval_iters, help="batches per evaluation"),
        options.log_interval(d),
        click.option("--val-fraction", type=options.OPEN_FRACTION, default=d.val_fraction,
                     help="share of the text held out for validation (without --val)"),
        click.option("--val", "val_file", type=click.Path(), default=None, help="validation text file"),
        options.seed(d),
        options.train_threads(),
        options.resume(),
        options.init_from("fine-tune from a checkpoint"),
        options.no_progress(),
        *options.run_options(d),
    ])


@click.command()
@click.argument("files", nargs=-1, type=click.Path())
@_train_options
@click.pass_context
def train(ctx, files, preset, resume, no_progress, **opts):
    """Train a GPT on text FILES (none: Python's own documentation, offline).

    The defaults are nanoGPT's CPU recipe for Tiny Shakespeare (4 layers,
    4 heads, width 128, block 64, batch 12, 2000 iterations)."""
    from mingpt_c.gpt.config import PRESETS
    from mingpt_c.gpt.train import TrainConfig, train as run_train

    options.check_lr(opts)   # each option's range: its type, at parse time
    given = options.given(ctx)
    if preset:
        options.apply_preset(opts, PRESETS[preset], given, preset)
    tc = TrainConfig(**opts, files=tuple(files), progress=not no_progress)
    res = run_train(tc, resume=resume, log=lambda m: click.echo(m, err=True), given=given)
    options.exit_if_interrupted(res)
    if res["main"]:
        best = f"{res['best_val']:.4f}" if res["best_val"] < float("inf") else "n/a"
        where = options.saved(tc.out)
        click.echo(f"done: {res['iter']} iterations, val loss {res.get('val_loss', float('nan')):.4f} "
                   f"(best {best}); {where}" + (f"; sample with: mingpt sample {tc.out}"
                                                 if where.startswith("checkpoint") else ""))


# ------------------------------------------------------------------ sample / eval


@click.command()
@click.argument("ckpt", type=click.Path())
@click.option("--prompt", default="", help="start text, or @FILE to read it from a file")
@click.option("--max-new-tokens", type=options.NON_NEGATIVE_INT, default=500, help="tokens to generate")
@click.option("--temperature", type=options.NON_NEGATIVE, default=0.8, help="0: greedy")
@click.option("--top-k", type=options.NON_NEGATIVE_INT, default=200, help="0: off")
@click.option("--top-p", type=options.Float("(0, 1]"), default=1.0, help="nucleus sampling (1: off)")
@click.option("--seed", type=options.SEED, default=1337, help="seed of the sampling draws")
@click.option("--num-samples", type=options.POSITIVE_INT, default=1, help="samples to generate, one after another")
@click.option("--stream/--no-stream", default=True, help="print tokens as they come")
@click.option("--block-size", type=options.POSITIVE_INT, default=None, help="context to use (at most the model's)")
@click.option("--no-cache", is_flag=True, help="recompute the whole context for every token")
@options.threads()
@options.device_option
def sample(ckpt, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, stream,
           block_size, no_cache, threads, device, dtype):
    """Generate text from a trained (or imported) model."""
    import numpy as np

    from mingpt_c.gpt import checkpoint
    from mingpt_c.gpt.model import GPT
    from mingpt_c.gpt.sample import generate, stream_text

    options.use_threads(threads)
    loaded = checkpoint.load(ckpt)
    cfg, tok = loaded["cfg"], loaded["tokenizer"]
    if tok is None:
        raise click.ClickException(f"{loaded['path']} has no tokenizer.json: cannot turn text into tokens")
    if block_size is not None:
        if block_size > cfg.block_size:   # (below 1: refused by its type)
            raise click.ClickException(f"--block-size {block_size} is above the model's block size "
                                       f"{cfg.block_size}: give at most {cfg.block_size}")
        cfg.block_size = block_size
    if prompt.startswith("@"):
        try:
            prompt = Path(prompt[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"cannot read prompt file {prompt[1:]}: {e}")
    model = GPT(loaded["cfg"], loaded["params"], device=options.to_device(device, dtype))
    model.cfg.block_size = cfg.block_size
    ids = tok.encode(prompt) if prompt else _start_ids(tok)
    for n in range(num_samples):
        rng = np.random.default_rng([seed, n])
        gen = generate(model, ids, max_new_tokens, rng, temperature, top_k or None,
                       top_p if top_p < 1 else None, tok.eot_token, use_cache=not no_cache)
        gen = (t for t in gen if t != tok.eot_token)
        if stream:
            click.echo(prompt, nl=False)
            for piece in stream_text(tok.decode, gen):
                click.echo(piece, nl=False)
            click.echo()
        else:
            click.echo(prompt + tok.decode(list(gen)))
        if n + 1 < num_samples:
            click.echo("---------------")


def _start_ids(tok):
    if tok.eot_token is not None:
        return [tok.eot_token]
    try:
        return tok.encode("\n")
    except MinGPTError:
        return [0]


@click.command(name="eval")
@click.argument("ckpt", type=click.Path())
@click.argument("file", type=click.Path())
@click.option("--batch-size", type=options.POSITIVE_INT, default=8, help="blocks per forward pass")
@click.option("--max-batches", type=options.POSITIVE_INT, default=None, help="stop after this many batches")
@options.threads()
@options.device_option
def eval_cmd(ckpt, file, batch_size, max_batches, threads, device, dtype):
    """Loss and perplexity of a model on a text file (every full block)."""
    from mingpt_c.gpt import checkpoint
    from mingpt_c.gpt.evaluate import evaluate_text

    options.use_threads(threads)
    loaded = checkpoint.load(ckpt)
    res = evaluate_text(loaded, file, batch_size, max_batches, options.to_device(device, dtype))
    click.echo(f"loss {res['loss']:.4f}  perplexity {res['perplexity']:.3f}  "
               f"({res['tokens']:,} tokens in {res['blocks']} blocks of {res['block_size']})")


@click.command(name="attention")
@click.argument("ckpt", type=click.Path())
@click.option("--prompt", required=True, help="the text whose tokens attend to each other")
@click.option("--out", required=True, type=options.ImageFile(), help="image to write (PNG, SVG, PDF...)")
@click.option("--layer", type=options.POSITIVE_INT, default=None, help="layer, from 1 [default: the last]")
@click.option("--head", type=options.POSITIVE_INT, default=None, help="one head, from 1 [default: their mean]")
@options.threads()
def attention(ckpt, prompt, out, layer, head, threads):
    """Draw a GPT's self-attention over --prompt as a token x token heatmap."""
    from mingpt_c.gpt import checkpoint
    from mingpt_c.gpt.attention import self_attention
    from mingpt_c.gpt.model import GPT
    from mingpt_c.run.plot import heatmap

    options.use_threads(threads)
    loaded = checkpoint.load(ckpt)
    tok = loaded["tokenizer"]
    if tok is None:
        raise click.ClickException(f"{loaded['path']} has no tokenizer.json: cannot turn text into tokens")
    model = GPT(loaded["cfg"], loaded["params"])
    ids = tok.encode(prompt)
    A = self_attention(model, ids, None if layer is None else layer - 1, None if head is None else head - 1)
    labels = [tok.decode([i]) for i in ids]
    which = f"layer {layer or model.cfg.n_layer}" + (f", head {head}" if head else ", mean of the heads")
    heatmap(A, labels, labels, out, title=f"self-attention, {which}", xlabel="attended token", ylabel="token")
    click.echo(f"wrote {out} ({len(ids)} tokens)")


# ------------------------------------------------------------------ info


def describe(loaded: dict, path: Path) -> list[tuple[str, str]]:
    """`mingpt info`: the rows that describe a GPT checkpoint (loaded from path)."""
    rows = []
    cfg = loaded["cfg"]
    rows.append(("model", f"GPT, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
                          f"block {cfg.block_size}, vocab {cfg.vocab_size}"))
    n = loaded["params"].size - cfg.block_size * cfg.n_embd
    rows.append(("parameters", f"{n:,} (without position embeddings)"))
    tok = loaded["tokenizer"]
    rows.append(("tokenizer", f"{tok.kind if tok else 'none'}"))
    st = path / "train_state.json"
    if st.exists():
        s = json.loads(st.read_text())
        rows.append(("trained", f"{s.get('iter')} iterations, best val loss {s.get('best_val')}"))
    return rows