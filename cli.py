"""The `mingpt` command line: parse, validate, call mingpt_c, print.

Errors from the package (MinGPTError) become one line on stderr and exit
code 1; nothing here computes anything itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mingpt_c.errors import MinGPTError


class Group(click.Group):
    """Turns MinGPTError (and Ctrl-C outside training) into one clear line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinGPTError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="mingpt-c", message="mingpt-c %(version)s")
def main():
    """mingpt-c: train and run small transformers on a fast C core."""


# ------------------------------------------------------------------ env / info


@main.command()
def env():
    """What this build has: compiler, OpenMP and threads, vector path, CUDA."""
    from mingpt_c._lib import build_info

    info = build_info()
    yes = lambda b: "yes" if b else "no"
    click.echo(f"mingpt-c {info['version']}")
    click.echo(f"python      {sys.version.split()[0]}")
    click.echo(f"compiler    {info['compiler']}")
    click.echo(f"openmp      {yes(info['openmp'])} ({info['threads']} threads)")
    click.echo(f"vector path {info['simd']}")
    click.echo(f"cuda        {_cuda_line(info['cuda'])}")
    from mingpt_c.run.distributed import mpi_available
    mpi = mpi_available()
    click.echo(f"mpi         {mpi or 'no (pip install mingpt-c[mpi] for data-parallel training)'}")


def _cuda_line(built: bool) -> str:
    """CUDA build yes/no, and the GPU: name, capability, memory, versions."""
    if not built:
        return "no (this build has no CUDA path; `make cuda` builds it on a machine with nvcc)"
    from mingpt_c import cuda

    try:
        i = cuda.info()
    except MinGPTError as e:
        return f"built, but no usable GPU: {e}"
    return (f"yes: {i['name']}, compute capability {i['capability']}, "
            f"{i['total_memory'] / 2**30:.1f} GiB ({i['free_memory'] / 2**30:.1f} free), "
            f"runtime {i['runtime_version']}, driver {i['driver_version']}; fp32 path deterministic, "
            f"tf32/bf16 products from cuBLAS's heuristics (deterministic on one GPU and version)")


@main.command()
@click.argument("ckpt", type=click.Path())
def info(ckpt):
    """What a checkpoint (or run directory) holds."""
    from mingpt_c.gpt import checkpoint

    path = checkpoint.resolve(ckpt)
    kind = json.loads((path / "config.json").read_text()).get("model_type")
    if kind == "vit":
        return _vit_info(path)
    if kind == "bert":
        return _encoder_info(path)
    loaded = checkpoint.load(path)
    cfg = loaded["cfg"]
    click.echo(f"checkpoint  {path}")
    click.echo(f"model       GPT, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
               f"block {cfg.block_size}, vocab {cfg.vocab_size}")
    n = loaded["params"].size - cfg.block_size * cfg.n_embd
    click.echo(f"parameters  {n:,} (without position embeddings)")
    tok = loaded["tokenizer"]
    click.echo(f"tokenizer   {tok.kind if tok else 'none'}")
    st = path / "train_state.json"
    if st.exists():
        s = json.loads(st.read_text())
        click.echo(f"trained     {s.get('iter')} iterations, best val loss {s.get('best_val')}")


# ---------------------------------------------------------------- tokenize
import time  # noqa: E402  (the tokenize group keeps its imports with it)


def _check_out(out: Path, resume: bool) -> None:
    """--resume needs a run in --out; a new run needs an --out without one."""
    has_run = (out / "latest").exists()
    if resume and not has_run:
        raise click.ClickException(f"--resume: no checkpoint to resume in {out} (expected {out}/latest)")
    if has_run and not resume:
        raise click.ClickException(f"{out} already holds a run: pass --resume to continue it, "
                                   f"or choose another --out")


def _train_config(cls, resume: bool, opts: dict, given: set):
    """A new run's config from the options; a resumed run's from its
    run_config.json, with the options given on the command line on top."""
    out = Path(opts["out"])
    _check_out(out, resume)
    if not resume:
        return cls(**opts)
    saved = out / "run_config.json"
    if not saved.exists():
        raise click.ClickException(f"--resume: {saved} is missing")
    base = json.loads(saved.read_text())
    base.update({k: opts[k] for k in given})
    return cls(**{k: v for k, v in base.items() if k in cls.__dataclass_fields__})


def _read_text_arg(text: str | None) -> str:
    if text is not None:
        return text
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"standard input is not UTF-8 (invalid byte at offset {e.start})")


def _special_kwargs(allow_special: tuple[str, ...], special_as_text: bool) -> dict:
    allowed = "all" if "all" in allow_special else set(allow_special)
    return {"allowed_special": allowed, "disallowed_special": () if special_as_text else "all"}


_TOKENIZER_HELP = "gpt2, byte, or a tokenizer file (from `mingpt tokenize train`)"


@main.group()
def tokenize() -> None:
    """Byte-level BPE: train a vocabulary, encode, decode, inspect."""


@tokenize.command("train")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--vocab-size", type=int, required=True,
              help="256 bytes + merges + special tokens")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), required=True,
              help="tokenizer file to write (JSON, mingpt-bpe v1)")
@click.option("--pattern", type=click.Choice(["gpt2", "gpt4", "none"]), default="gpt2",
              help="pre-split regex: GPT-2's, GPT-4's (cl100k), or none (lines)")
@click.option("--special", "specials", multiple=True, metavar="TOKEN",
              help="special token, e.g. '<|endoftext|>' (repeatable); ids follow the merges")
@click.option("--min-frequency", type=int, default=2,
              help="stop when the best pair occurs fewer times than this")
@click.option("--phrases-after", type=int, default=None, metavar="N",
              help="two stages: the first N merges on the pattern's split, the rest across words "
                   "(phrase tokens); the tokenizer then splits lines only")
def tokenize_train(files, vocab_size, out, pattern, specials, min_frequency, phrases_after):
    """Learn a BPE vocabulary from text FILES (UTF-8)."""
    from mingpt_c.tokenizers import bpe_train

    t0 = time.perf_counter()
    tok = bpe_train.train_files(files, vocab_size, pattern=pattern, special_tokens=specials,
                                min_frequency=min_frequency, phrases_after=phrases_after)
    seconds = time.perf_counter() - t0
    tok.save(out)
    st = tok.train_stats
    click.echo(f"learned {st['merges']} merges from {st['bytes'] / 1e6:.2f} MB "
               f"({st['distinct_chunks']} distinct chunks) in {seconds:.2f} s; "
               f"vocab size {tok.vocab_size} -> {out}")
    if st["merges"] < st["requested_merges"]:
        click.echo(f"note: asked for {st['requested_merges']} merges, but no further pair occurs "
                   f"at least {min_frequency} times; the vocabulary is smaller", err=True)


@tokenize.command("encode")
@click.argument("text", required=False)
@click.option("--tokenizer", "spec", required=True, help=_TOKENIZER_HELP)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False),
              help="write a token file (memory-mappable) instead of printing ids")
@click.option("--allow-special", multiple=True, metavar="TOKEN",
              help="encode this special token as its id (repeatable; 'all' for every one)")
@click.option("--special-as-text", is_flag=True,
              help="encode other special-token strings as ordinary text instead of failing")
def tokenize_encode(text, spec, out, allow_special, special_as_text):
    """Encode TEXT (or standard input) to token ids."""
    from mingpt_c.tokenizers.tokenizer import get_tokenizer

    tok = get_tokenizer(spec)
    ids = tok.encode_array(_read_text_arg(text), **_special_kwargs(allow_special, special_as_text))
    if out:
        from mingpt_c.tokenizers.tokenfile import write_tokens

        n = write_tokens(out, ids, vocab_size=tok.vocab_size)
        click.echo(f"wrote {n} tokens to {out}", err=True)
    else:
        click.echo(" ".join(map(str, ids.tolist())))


@tokenize.command("decode")
@click.argument("ids", nargs=-1, type=int)
@click.option("--tokenizer", "spec", required=True, help=_TOKENIZER_HELP)
@click.option("-i", "--input", "token_file", type=click.Path(dir_okay=False),
              help="read the ids from a token file instead")
def tokenize_decode(ids, spec, token_file):
    """Decode IDS (or whitespace-separated ids on standard input) to text."""
    from mingpt_c.tokenizers.tokenizer import get_tokenizer

    tok = get_tokenizer(spec)
    if token_file:
        from mingpt_c.tokenizers.tokenfile import read_tokens

        ids = read_tokens(token_file).tolist()
    elif not ids:
        words = sys.stdin.read().split()
        try:
            ids = [int(w) for w in words]
        except ValueError:
            bad = next(w for w in words if not w.lstrip("-").isdigit())
            raise click.ClickException(f"{bad!r} on standard input is not a token id") from None
    click.echo(tok.decode(ids), nl=False)


@tokenize.command("show")
@click.argument("text", required=False)
@click.option("--tokenizer", "spec", required=True, help=_TOKENIZER_HELP)
@click.option("--dump", is_flag=True, help="print the whole vocabulary: id, token, merge")
@click.option("--allow-special", multiple=True, metavar="TOKEN",
              help="treat this special token as special (repeatable; 'all')")
@click.option("--special-as-text", is_flag=True,
              help="encode other special-token strings as ordinary text")
def tokenize_show(text, spec, dump, allow_special, special_as_text):
    """Show how TEXT splits into tokens: one 'id<TAB>piece' line per token."""
    from mingpt_c.tokenizers.tokenizer import BPETokenizer, get_tokenizer, printable

    tok = get_tokenizer(spec)
    if dump:
        if not isinstance(tok, BPETokenizer):
            raise click.ClickException(f"--dump is for BPE tokenizers; {spec} is {tok.kind}")
        for line in tok.dump():
            click.echo(line)
        return
    if text is None:
        text = _read_text_arg(None)
    for i, piece in tok.pieces(text, **_special_kwargs(allow_special, special_as_text)):
        click.echo(f"{i}\t{printable(piece)}")


# ------------------------------------------------------------------ train

def _train_options(f):
    from mingpt_c.gpt.train import TrainConfig

    d = TrainConfig()
    opts = [
        click.option("--out", default=d.out, type=click.Path(file_okay=False), help="run directory"),
        click.option("--tokenizer", default=d.tokenizer, help="char | byte | gpt2 | path to a tokenizer file"),
        click.option("--preset", type=click.Choice(["baby", "small", "gpt2"]), default=None,
                     help="model size preset (explicit size flags win)"),
        click.option("--n-layer", type=int, default=d.n_layer),
        click.option("--n-head", type=int, default=d.n_head),
        click.option("--n-embd", type=int, default=d.n_embd),
        click.option("--block-size", type=int, default=d.block_size),
        click.option("--dropout", type=float, default=d.dropout),
        click.option("--batch-size", type=int, default=d.batch_size),
        click.option("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step"),
        click.option("--max-iters", type=int, default=d.max_iters),
        click.option("--lr", type=float, default=d.lr, help="peak learning rate"),
        click.option("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine"),
        click.option("--warmup-iters", type=int, default=d.warmup_iters),
        click.option("--lr-decay-iters", type=int, default=None, help="cosine length [default: max-iters]"),
        click.option("--weight-decay", type=float, default=d.weight_decay),
        click.option("--beta1", type=float, default=d.beta1),
        click.option("--beta2", type=float, default=d.beta2),
        click.option("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)"),
        click.option("--embd-init-std", type=float, default=d.embd_init_std,
                     help="spread of fresh token and position embeddings (GPT-2: 0.02)"),
        click.option("--eval-interval", type=int, default=d.eval_interval),
        click.option("--eval-iters", type=int, default=d.eval_iters, help="batches per evaluation"),
        click.option("--log-interval", type=int, default=d.log_interval,
                     help="iterations between train-loss lines in log.jsonl"),
        click.option("--val-fraction", type=float, default=d.val_fraction),
        click.option("--val", "val_file", type=click.Path(), default=None, help="validation text file"),
        click.option("--seed", type=int, default=d.seed),
        click.option("--threads", type=int, default=None, help="C core threads [default: all cores]"),
        click.option("--resume", is_flag=True, help="continue the run in --out from its latest checkpoint"),
        click.option("--init-from", type=click.Path(), default=None, help="fine-tune from a checkpoint"),
        click.option("--no-progress", is_flag=True, help="no progress bar"),
        click.option("--dist-timeout", type=float, default=d.dist_timeout,
                     help="under MPI: seconds to wait for the other ranks before aborting"),
        *_device_options(),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _device_options(with_dtype: bool = True):
    """--device (and --dtype): the options every command that runs a model shares."""
    opts = [click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                         help="where the model runs (cuda: an NVIDIA GPU, `make cuda` build)")]
    if with_dtype:
        opts.append(click.option("--dtype", type=click.Choice(["fp32", "tf32", "bf16"]), default=None,
                                 help="precision of the GPU's matrix products "
                                      "[default: bf16 where the GPU has it, else fp32]"))
    return opts


def _device(name: str, dtype: str | None):
    """The Device for --device/--dtype (bf16 products by default on a GPU that has them)."""
    from mingpt_c.device import Device, default_dtype

    if name == "cuda" and dtype is None:
        Device("cuda")   # one clear line when there is no GPU
        dtype = default_dtype("cuda")
    return Device(name, dtype)


def device_option(f):
    for o in reversed(_device_options()):
        f = o(f)
    return f


@main.command()
@click.argument("files", nargs=-1, type=click.Path())
@_train_options
@click.pass_context
def train(ctx, files, preset, resume, no_progress, **opts):
    """Train a GPT on text FILES (none: Python's own documentation, offline).

    The defaults are nanoGPT's CPU recipe for Tiny Shakespeare (4 layers,
    4 heads, width 128, block 64, batch 12, 2000 iterations)."""
    from mingpt_c.gpt.config import PRESETS
    from mingpt_c.gpt.train import TrainConfig, train as run_train

    given = {k for k in opts if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    if preset:
        for k, v in PRESETS[preset].items():
            if k not in given:
                opts[k] = v
    tc = _train_config(TrainConfig, resume, dict(opts, files=tuple(files)), given)
    tc.files = tuple(tc.files)
    tc.progress = not no_progress
    if tc.device == "cpu" and "dtype" not in given:
        tc.dtype = None   # a GPU run resumed on the CPU: its products' precision does not apply
    if (tc.batch_size < 1 or tc.max_iters < 0 or tc.grad_accum < 1 or tc.eval_interval < 1
            or tc.eval_iters < 1 or tc.log_interval < 1):
        raise click.ClickException("batch size, grad accum, eval and log intervals and eval iters must be positive")
    res = run_train(tc, resume=resume, log=lambda m: click.echo(m, err=True))
    if res["main"] and not res.get("interrupted"):
        click.echo(f"done: {res['iter']} iterations, val loss {res.get('val_loss', float('nan')):.4f} "
                   f"(best {res['best_val']:.4f}); checkpoints in {tc.out}/best and {tc.out}/latest; "
                   f"sample with: mingpt sample {tc.out}")


# ------------------------------------------------------------------ sample / eval


@main.command()
@click.argument("ckpt", type=click.Path())
@click.option("--prompt", default="", help="start text, or @FILE to read it from a file")
@click.option("--max-new-tokens", type=int, default=500)
@click.option("--temperature", type=float, default=0.8, help="0: greedy")
@click.option("--top-k", type=int, default=200, help="0: off")
@click.option("--top-p", type=float, default=1.0, help="nucleus sampling (1: off)")
@click.option("--seed", type=int, default=1337)
@click.option("--num-samples", type=int, default=1)
@click.option("--stream/--no-stream", default=True, help="print tokens as they come")
@click.option("--block-size", type=int, default=None, help="context to use (at most the model's)")
@click.option("--no-cache", is_flag=True, help="recompute the whole context for every token")
@click.option("--threads", type=int, default=None)
@device_option
def sample(ckpt, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, stream,
           block_size, no_cache, threads, device, dtype):
    """Generate text from a trained (or imported) model."""
    import numpy as np

    from mingpt_c.gpt import checkpoint
    from mingpt_c._lib import set_num_threads
    from mingpt_c.gpt.model import GPT
    from mingpt_c.gpt.sample import generate, stream_text

    if threads:
        set_num_threads(threads)
    loaded = checkpoint.load(ckpt)
    cfg, tok = loaded["cfg"], loaded["tokenizer"]
    if tok is None:
        raise click.ClickException(f"{loaded['path']} has no tokenizer.json: cannot turn text into tokens")
    if block_size is not None:
        if block_size > cfg.block_size or block_size < 1:
            raise click.ClickException(f"--block-size {block_size} is above the model's block size "
                                       f"{cfg.block_size}")
        cfg.block_size = block_size
    if prompt.startswith("@"):
        try:
            prompt = Path(prompt[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"cannot read prompt file {prompt[1:]}: {e}")
    model = GPT(loaded["cfg"], loaded["params"], device=_device(device, dtype))
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


@main.command(name="eval")
@click.argument("ckpt", type=click.Path())
@click.argument("file", type=click.Path())
@click.option("--batch-size", type=int, default=8)
@click.option("--max-batches", type=int, default=None, help="stop after this many batches")
@click.option("--threads", type=int, default=None)
@device_option
def eval_cmd(ckpt, file, batch_size, max_batches, threads, device, dtype):
    """Loss and perplexity of a model on a text file (every full block)."""
    from mingpt_c.gpt import checkpoint
    from mingpt_c._lib import set_num_threads
    from mingpt_c.gpt.evaluate import evaluate_text

    if threads:
        set_num_threads(threads)
    loaded = checkpoint.load(ckpt)
    res = evaluate_text(loaded, file, batch_size, max_batches, _device(device, dtype))
    click.echo(f"loss {res['loss']:.4f}  perplexity {res['perplexity']:.3f}  "
               f"({res['tokens']:,} tokens in {res['blocks']} blocks of {res['block_size']})")


# ------------------------------------------------------------------ encoder


def _encoder_options(f):
    from mingpt_c.encoder.train import EncoderTrainConfig

    d = EncoderTrainConfig()
    opts = [
        click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory"),
        click.option("--init-from", type=click.Path(), default=None,
                     help="start from an encoder checkpoint (ours, or imported with `mingpt import`)"),
        click.option("--tokenizer", default=None, type=click.Path(dir_okay=False),
                     help="BPE file with [PAD] [UNK] [CLS] [SEP] [MASK] [default: train one]"),
        click.option("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary to train"),
        click.option("--lower/--no-lower", default=d.lower, help="lower-case texts for the trained BPE"),
        click.option("--bpe-pattern", type=click.Choice(["gpt2", "none", "phrases"]), default=d.bpe_pattern,
                     help="the trained BPE's pre-split: GPT-2's (tokens stay within words), none "
                          "(merges cross spaces, so frequent phrases become tokens), or phrases (two "
                          "stages: GPT-2's split, then the last --phrase-share of the merges across words)"),
        click.option("--phrase-share", type=float, default=d.phrase_share,
                     help="with --bpe-pattern phrases: share of the merges learned across words"),
        click.option("--max-len", type=int, default=d.max_len,
                     help="tokens per text with [CLS] and [SEP]; longer texts are cut (with a note)"),
        click.option("--truncate", type=click.Choice(["head", "head_tail"]), default=d.truncate,
                     help="what a cut text keeps"),
        click.option("--n-layer", type=int, default=d.n_layer),
        click.option("--n-head", type=int, default=d.n_head),
        click.option("--n-embd", type=int, default=d.n_embd),
        click.option("--dropout", type=float, default=d.dropout),
        click.option("--act", type=click.Choice(["gelu", "gelu_tanh"]), default=d.act,
                     help="GELU: exact (BERT) or tanh approximation (faster)"),
        click.option("--pre-ln", is_flag=True, help="pre-layernorm blocks (GPT-2 order) instead of BERT's post-LN"),
        click.option("--bigram-buckets", type=click.IntRange(min=0), default=d.bigram_buckets,
                     help="rows of a hashed embedding table for pairs of adjacent tokens, added to "
                          "each token's embedding (0: none)"),
        click.option("--batch-size", type=int, default=d.batch_size),
        click.option("--epochs", type=float, default=d.epochs),
        click.option("--max-iters", type=int, default=None, help="iterations (overrides --epochs)"),
        click.option("--lr", type=float, default=d.lr, help="peak learning rate"),
        click.option("--min-lr", type=float, default=d.min_lr),
        click.option("--warmup-iters", type=int, default=d.warmup_iters),
        click.option("--weight-decay", type=float, default=d.weight_decay),
        click.option("--grad-clip", type=float, default=d.grad_clip),
        click.option("--limit", type=int, default=None, help="use only the first N training examples"),
        click.option("--seed", type=int, default=d.seed),
        click.option("--threads", type=int, default=None, help="C core threads [default: all cores]"),
        click.option("--no-progress", is_flag=True),
        click.option("--resume", is_flag=True,
                     help="continue the run in --out from its latest checkpoint (same command otherwise)"),
        *_device_options(),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _encoder_config(opts: dict, **more):
    from mingpt_c.encoder.train import EncoderTrainConfig

    progress = not opts.pop("no_progress")
    resume = opts.pop("resume")
    tc = EncoderTrainConfig(**opts, **more, progress=progress)
    for name in ("batch_size", "max_len"):
        if getattr(tc, name) < (3 if name == "max_len" else 1):
            raise click.ClickException(f"--{name.replace('_', '-')} {getattr(tc, name)} is too small")
    _check_out(Path(tc.out), resume)
    return tc, resume


@main.group()
def encoder() -> None:
    """BERT-style encoder: masked-LM pretraining, text classification."""


@encoder.command("pretrain")
@click.argument("file", type=click.Path())
@_encoder_options
@click.option("--mask-prob", type=float, default=0.15, help="share of tokens chosen for masking")
def encoder_pretrain(file, mask_prob, **opts):
    """Masked-LM pretraining on FILE: text (one document per line) or JSON Lines (its "text")."""
    from mingpt_c.encoder.train import pretrain

    tc, resume = _encoder_config(opts, train_file=file, mask_prob=mask_prob)
    res = pretrain(tc, resume, log=lambda m: click.echo(m, err=True))
    if res["interrupted"]:
        return
    click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s; checkpoint in {tc.out}/latest; "
               f"fine-tune with: mingpt encoder train --init-from {tc.out} --train DATA.jsonl --out DIR")


@encoder.command("train")
@click.option("--train", "train_file", required=True, type=click.Path(), help="JSON Lines with text and label")
@click.option("--val", "val_file", type=click.Path(), default=None, help="JSON Lines to validate on each epoch")
@click.option("--pooling", type=click.Choice(["cls", "mean", "max"]), default="mean", help="classifier input")
@click.option("--val-limit", type=int, default=None, help="validate on the first N examples")
@click.option("--token-dropout", type=float, default=0.0,
              help="hide this share of each training text's tokens (word dropout)")
@_encoder_options
def encoder_train(**opts):
    """Train a text classifier on JSON Lines ({"text": ..., "label": ...}; any labels)."""
    from mingpt_c.encoder.train import train_classifier

    tc, resume = _encoder_config(opts)
    res = train_classifier(tc, resume, log=lambda m: click.echo(m, err=True))
    if res["interrupted"]:
        return
    acc = res.get("val_accuracy")
    click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s"
               + (f", val accuracy {acc:.4f} (best {res['best_val_accuracy']:.4f})" if acc is not None else "")
               + f"; evaluate with: mingpt encoder eval {tc.out} DATA.jsonl")


@encoder.command("eval")
@click.argument("ckpt", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--batch-size", type=int, default=64)
@click.option("--limit", type=int, default=None, help="evaluate on the first N examples")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@click.option("--threads", type=int, default=None)
@device_option
def encoder_eval(ckpt, data, batch_size, limit, as_json, threads, device, dtype):
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on DATA (JSON Lines)."""
    from mingpt_c._lib import set_num_threads
    from mingpt_c.encoder.train import evaluate_file

    if threads:
        set_num_threads(threads)
    r = evaluate_file(ckpt, data, batch_size, limit, log=lambda m: click.echo(m, err=True),
                      progress=sys.stderr.isatty(), device=_device(device, dtype))
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
@click.option("--threads", type=int, default=None)
@device_option
def encoder_predict(ckpt, texts, threads, device, dtype):
    """Label and class probabilities of each TEXT: one line 'label<TAB>probabilities<TAB>text'."""
    from mingpt_c._lib import set_num_threads
    from mingpt_c.encoder.train import predict_texts

    if threads:
        set_num_threads(threads)
    names, probs = predict_texts(ckpt, list(texts), log=lambda m: click.echo(m, err=True),
                                 device=_device(device, dtype))
    for t, p in zip(texts, probs):
        ps = " ".join(f"{n}={v:.4f}" for n, v in zip(names, p))
        click.echo(f"{names[int(p.argmax())]}\t{ps}\t{t[:60]}")


# ------------------------------------------------------------------ import / export


@main.command(name="import")
@click.argument("hf_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="checkpoint directory to write")
@click.option("--tokenizer", default="gpt2", help="tokenizer to store with the model")
def import_cmd(hf_dir, out, tokenizer):
    """Import a Hugging Face GPT2LMHeadModel, ViTForImageClassification or
    BERT-family (BertModel) directory (config.json + model.safetensors; BERT: its vocab.txt or tokenizer.json)."""
    from mingpt_c.hub import import_hf

    path = import_hf(hf_dir, out, tokenizer)
    click.echo(f"imported {hf_dir} -> {path}")


@main.command(name="export")
@click.argument("ckpt", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Hugging Face directory to write")
def export_cmd(ckpt, out):
    """Export a checkpoint as a Hugging Face GPT2LMHeadModel (or, for a ViT,
    ViTForImageClassification) directory."""
    from mingpt_c.hub import export_hf

    path = export_hf(ckpt, out)
    click.echo(f"exported {ckpt} -> {path} (load with transformers' from_pretrained)")


# ------------------------------------------------------------------ bench


@main.command()
@click.option("--config", default="baby,small,gpt2", help="comma-separated: baby, small, gpt2")
@click.option("--rounds", type=int, default=5, help="alternating rounds per side (medians over these)")
@click.option("--steps", type=int, default=10, help="timed training steps per round")
@click.option("--threads", type=int, default=2)
@click.option("--sample-tokens", type=int, default=256, help="sampling benchmark length (0: skip)")
@click.option("--no-torch", is_flag=True, help="ours only, even where PyTorch is installed")
@click.option("--profile", is_flag=True,
              help="instead: time each kernel group of our training step (matmul, attention, ...)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              help="cuda: GPU training steps beside PyTorch eager bf16 and torch.compile "
                   "(configs gpt2-1024, gpt2-1024-b32, tiny)")
@click.option("--dtype", type=click.Choice(["fp32", "tf32", "bf16"]), default="bf16",
              help="with --device cuda: precision of our matrix products")
@click.option("--no-compile", is_flag=True, help="with --device cuda: skip the torch.compile side")
def bench(config, rounds, steps, threads, sample_tokens, no_torch, profile, device, dtype, no_compile):
    """Training and sampling tokens/s beside PyTorch: eager on the CPU; eager
    bf16 and torch.compile on the GPU (--device cuda)."""
    from mingpt_c.benchmarks.cpu import parse_configs, run, run_profile

    if device == "cuda":
        from mingpt_c.benchmarks.cuda import CUDA_CONFIGS, run_cuda

        names = [n for n in config.split(",") if n]
        bad = [n for n in names if n not in CUDA_CONFIGS]
        if bad or not names:
            raise click.ClickException(f"--device cuda configs are {', '.join(CUDA_CONFIGS)}; "
                                       f"got {config!r}")
        if profile:
            from mingpt_c.benchmarks.cuda import profile_cuda

            for n in names:
                profile_cuda(n, steps, dtype, echo=click.echo)
            return
        run_cuda(names, rounds, steps, dtype, not no_torch, not no_compile, echo=click.echo)
        return
    try:
        names = parse_configs(config)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if profile:
        run_profile(names, steps, threads, echo=click.echo)
        return
    run(names, rounds, steps, threads, sample_tokens, not no_torch, echo=click.echo)

# ------------------------------------------------------------------ vit


@main.group()
def vit():
    """Vision Transformer: train, eval, predict, attention maps.

    Data sets (--dataset): mnist:DIR, fashion-mnist:DIR (IDX files),
    cifar10:DIR (python batches), folder:DIR (one sub-folder per class);
    none: a generated set of shapes that needs no download."""


def _vit_train_options(f):
    from mingpt_c.vit.train import ViTTrainConfig

    d = ViTTrainConfig()
    opts = [
        click.option("--dataset", default=None, help="KIND:PATH [default: generated shapes]"),
        click.option("--out", default=d.out, type=click.Path(file_okay=False), help="run directory"),
        click.option("--preset", type=click.Choice(["tiny", "small", "base"]), default=None,
                     help="model size preset (explicit size flags win)"),
        click.option("--image-size", type=int, default=None, help="resize folder images to this"),
        click.option("--patch-size", type=int, default=d.patch_size),
        click.option("--n-layer", type=int, default=d.n_layer),
        click.option("--n-head", type=int, default=d.n_head),
        click.option("--n-embd", type=int, default=d.n_embd),
        click.option("--dropout", type=float, default=d.dropout),
        click.option("--batch-size", type=int, default=d.batch_size),
        click.option("--epochs", type=int, default=d.epochs),
        click.option("--max-iters", type=int, default=None, help="stop after this many iterations"),
        click.option("--lr", type=float, default=d.lr, help="peak learning rate"),
        click.option("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine"),
        click.option("--warmup-iters", type=int, default=d.warmup_iters),
        click.option("--weight-decay", type=float, default=d.weight_decay),
        click.option("--beta2", type=float, default=d.beta2),
        click.option("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)"),
        click.option("--label-smoothing", type=float, default=d.label_smoothing),
        click.option("--crop-pad", type=int, default=d.crop_pad,
                     help="augmentation: random crop after padding this many pixels (0: off)"),
        click.option("--hflip", is_flag=True, help="augmentation: random horizontal flip"),
        click.option("--val-fraction", type=float, default=d.val_fraction,
                     help="held out of a folder with no train/ and test/ inside"),
        click.option("--train-limit", type=int, default=None, help="use the first N training images"),
        click.option("--eval-limit", type=int, default=None, help="evaluate on the first N test images"),
        click.option("--seed", type=int, default=d.seed),
        click.option("--threads", type=int, default=None, help="C core threads [default: all cores]"),
        click.option("--resume", is_flag=True, help="continue the run in --out from its latest checkpoint"),
        click.option("--no-progress", is_flag=True, help="no progress bar"),
        *_device_options(),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _encoder_info(path):
    from mingpt_c.encoder import checkpoint as encoder_checkpoint

    loaded = encoder_checkpoint.load(path)
    cfg, tok = loaded["cfg"], loaded["tokenizer"]
    click.echo(f"checkpoint  {path}")
    click.echo(f"model       encoder ({'pre' if cfg.pre_ln else 'post'}-LN), {cfg.n_layer} layers, "
               f"{cfg.n_head} heads, width {cfg.n_embd}, max length {cfg.block_size}, vocab {cfg.vocab_size}, "
               f"{cfg.act}" + (f", {cfg.bigram_buckets:,} bigram buckets" if cfg.bigram_buckets else ""))
    click.echo(f"parameters  {loaded['params'].size:,}")
    heads = (["masked LM"] if cfg.mlm_head else []) + (
        [f"classifier ({cfg.pooling} pooling), {cfg.num_labels} labels: "
         f"{', '.join(map(str, (cfg.extra.get('labels') or [])[:10]))}"] if cfg.num_labels else [])
    click.echo(f"heads       {'; '.join(heads) or 'none (the trunk only)'}")
    click.echo(f"tokenizer   {tok.describe().get('kind', type(tok).__name__) if tok else 'none'}")
    s = loaded["train_state"]
    if s:
        acc = s.get("val_accuracy")
        click.echo(f"trained     {s.get('iter')} iterations"
                   + (f", val accuracy {acc:.4f}" if acc is not None else ""))


def _vit_info(path):
    from mingpt_c.vit import checkpoint as vit_checkpoint

    loaded = vit_checkpoint.load(path)
    cfg = loaded["cfg"]
    click.echo(f"checkpoint  {path}")
    click.echo(f"model       ViT, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, patch "
               f"{cfg.patch_size} on {cfg.image_size}x{cfg.image_size}x{cfg.num_channels}, {cfg.act}")
    click.echo(f"parameters  {loaded['params'].size:,}")
    click.echo(f"classes     {cfg.num_classes}: {', '.join(cfg.labels[:10])}"
               f"{', ...' if cfg.num_classes > 10 else ''}")
    st = path / "train_state.json"
    if st.exists():
        s = json.loads(st.read_text())
        acc = s.get("test_accuracy")
        click.echo(f"trained     {s.get('iter')} iterations ({s.get('epoch', 0):.2f} epochs), test accuracy "
                   f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}")


@vit.command(name="train")
@_vit_train_options
@click.pass_context
def vit_train(ctx, preset, resume, no_progress, **opts):
    """Train a ViT classifier (defaults: 4 layers, 4 heads, width 64, patch 4)."""
    from mingpt_c.vit.model import PRESETS
    from mingpt_c.vit.train import ViTTrainConfig, train as run_train

    given = {k for k in opts if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    if preset:
        for k, v in PRESETS[preset].items():
            if k not in given:
                opts[k] = v
    tc = _train_config(ViTTrainConfig, resume, opts, given)
    tc.progress = not no_progress
    if tc.device == "cpu" and "dtype" not in given:
        tc.dtype = None   # a GPU run resumed on the CPU: its products' precision does not apply
    res = run_train(tc, resume=resume, log=lambda m: click.echo(m, err=True))
    if not res.get("interrupted"):
        acc = res.get("test_accuracy")
        acc_s = f"{100 * acc:.2f}%" if acc is not None else "n/a"
        click.echo(f"done: {res['iter']} iterations in {res['seconds']:.0f} s, test accuracy {acc_s}; "
                   f"checkpoint in {tc.out}/latest")


@vit.command(name="eval")
@click.argument("ckpt", type=click.Path())
@click.option("--dataset", default=None, help="KIND:PATH [default: generated shapes]")
@click.option("--image-size", type=int, default=None, help="resize folder images to this")
@click.option("--limit", type=int, default=None, help="evaluate the first N images only")
@click.option("--batch-size", type=int, default=500)
@click.option("--threads", type=int, default=None)
@device_option
def vit_eval(ckpt, dataset, image_size, limit, batch_size, threads, device, dtype):
    """Accuracy and confusion matrix of a ViT on a data set's test split."""
    from mingpt_c.vit import images, checkpoint as vit_checkpoint
    from mingpt_c._lib import set_num_threads
    from mingpt_c.vit.model import ViT
    from mingpt_c.vit.train import evaluate

    if threads:
        set_num_threads(threads)
    dev = _device(device, dtype)
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
@click.option("--top-k", type=int, default=3)
@click.option("--convert", is_flag=True, help="convert colour/grayscale and resize to what the model takes")
@device_option
def vit_predict(ckpt, images_, top_k, convert, device, dtype):
    """Top-k classes with probabilities for each IMAGE."""
    from mingpt_c.vit import checkpoint as vit_checkpoint
    from mingpt_c.vit.infer import predict_files

    dev = _device(device, dtype)
    loaded = vit_checkpoint.load(ckpt)
    for path, top in predict_files(loaded, images_, top_k, convert, dev):
        click.echo(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))


@vit.command(name="attention")
@click.argument("ckpt", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--out", default="attention.png", type=click.Path(dir_okay=False), help="PNG to write")
@click.option("--convert", is_flag=True, help="convert colour/grayscale and resize to what the model takes")
def vit_attention(ckpt, image, out, convert):
    """Attention rollout from the class token, drawn over IMAGE."""
    from mingpt_c.vit import checkpoint as vit_checkpoint
    from mingpt_c.vit.attention import attention_map_file

    loaded = vit_checkpoint.load(ckpt)
    name, p = attention_map_file(loaded, image, out, convert)
    click.echo(f"{image}: predicted {name} ({100 * p:.1f}%); attention rollout drawn in {out}")


if __name__ == "__main__":
    main()
