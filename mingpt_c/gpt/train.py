"""The GPT training loop: data preparation, AdamW steps with gradient
accumulation and clipping, evaluation. The run scaffold (mingpt_c.run.
scaffold) does the rest: run directory and lock, logging, progress, Ctrl-C
and SIGTERM, the non-finite policy, best/ and latest/, --resume, MPI.

Run directory (--out):
    run_config.json   every resolved option
    data/             token files (train.tokens, val.tokens) and their source;
                      a new run that fails before its first checkpoint removes it
    latest/ best/     checkpoints (mingpt_c.checkpoint); best/ has the lowest val loss
    log.jsonl         one JSON object per evaluation (and every log interval)
    loss.png          the loss curves, drawn at the end

Determinism: batches come from the stream STREAM_BATCHES at (iteration,
micro-step) and dropout masks from dropout_seed(seed, iteration,
micro-step, rank) (mingpt_c.nn.seeds), so a run resumed from a checkpoint at
iteration k continues bit for bit as the uninterrupted run would (same
thread count).
"""
from __future__ import annotations

import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mingpt_c import data
from mingpt_c.checkpoint import training_weights
from mingpt_c.errors import CheckpointError, DataError, MinGPTError
from mingpt_c.gpt import checkpoint
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import GPT, memory_bytes
from mingpt_c.nn.optim import AdamW, OptimConfig, lr_at
from mingpt_c.nn.seeds import STREAM_BATCHES, STREAM_EVAL, dropout_seed, stream_rng
from mingpt_c.run.rundir import has_run
from mingpt_c.run.scaffold import Run
from mingpt_c.tokenizers.tokenfile import read_tokens


@dataclass
class TrainConfig(OptimConfig):
    out: str = "out"                 # run directory
    files: tuple = ()                # training text files; empty: the embedded corpus
    val_file: str | None = None      # validation text; default: the tail of the training text
    val_fraction: float = 0.1        # share of the training text held out for validation
    tokenizer: str = "char"          # char | byte | gpt2 | path to a trained tokenizer file
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    batch_size: int = 12
    grad_accum: int = 1              # micro-batches per optimizer step
    max_iters: int = 2000
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # cosine decay length; default max_iters
    embd_init_std: float = 0.05      # spread of the fresh token/position embeddings (GPT-2: 0.02)
    eval_interval: int = 250
    eval_iters: int = 20             # batches per split and evaluation
    log_interval: int = 10           # iterations between train-loss records in log.jsonl
    seed: int = 1337
    threads: int | None = None       # C core threads; default: all cores
    init_from: str | None = None     # fine-tune: start from this checkpoint's weights
    max_nan_steps: int = 5           # consecutive non-finite steps before giving up
    progress: bool = True
    dist_timeout: float = 300.0      # seconds a rank waits for the others before aborting the job
    device: str = "cpu"              # cpu | cuda
    dtype: str | None = None         # GPU matrix products: fp32 | tf32 | bf16; default: bf16 where supported

    def decay_iters(self) -> int:
        return self.lr_decay_iters if self.lr_decay_iters else self.max_iters


# ------------------------------------------------------------------ data


def _prepare_data(tc: TrainConfig, run: Path, tokenizer_override=None):
    """Tokenizes the text into run/data/*.tokens; returns (tokenizer,
    train tokens, val tokens, source description)."""
    from mingpt_c.tokenizers.tokenizer import build_tokenizer

    ddir = run / "data"
    ddir.mkdir(parents=True, exist_ok=True)
    if tc.files:
        paths = [data.check_text_file(f) for f in tc.files]
        source = ", ".join(str(p) for p in paths)
        pieces = lambda: data.iter_text(paths)
    else:
        source, text = data.default_corpus()
        pieces = lambda: iter([text])
    val_paths = [data.check_text_file(tc.val_file)] if tc.val_file else []
    tok = tokenizer_override or build_tokenizer(tc.tokenizer, lambda: _chain(pieces(), *(
        data.iter_text(val_paths) for _ in [0] if val_paths)))
    tokens = data.tokenize_to_file(pieces(), tok, ddir / "train.tokens")
    if val_paths:
        train, val = tokens, data.tokenize_to_file(data.iter_text(val_paths), tok, ddir / "val.tokens")
    else:
        if not 0.0 < tc.val_fraction < 1.0:
            raise DataError(f"--val-fraction {tc.val_fraction} must be in (0, 1), or pass --val FILE")
        train, val = data.split_tokens(tokens, tc.val_fraction)
    data.require_length(train, tc.block_size, "training")
    data.require_length(val, tc.block_size, "validation")
    return tok, train, val, source


@contextmanager
def _data_removed_on_failure(run: Run, resume: bool):
    """A new run that fails before its first checkpoint (an error, a refusal
    found once the data is tokenized, Ctrl-C while preparing) removes the
    data/ it made: nothing could resume from it. A data/ that was there
    before (a resumed run's, one a killed run left) stays as it is."""
    ddir = run.dir / "data"
    made_here = run.is_main and not resume and not ddir.exists()
    try:
        yield
    except BaseException:
        if made_here and not has_run(run.dir):
            shutil.rmtree(ddir, ignore_errors=True)
        raise


def _chain(*iters):
    for it in iters:
        yield from it

# ------------------------------------------------------------------ setup


def _rank_batch(tokens, tc: TrainConfig, world, rng):
    """This rank's rows of the global batch (batch_size rows per rank)."""
    x, y = data.get_batch(tokens, tc.batch_size * world.size, tc.block_size, rng)
    rows = slice(world.rank * tc.batch_size, (world.rank + 1) * tc.batch_size)
    return np.ascontiguousarray(x[rows]), np.ascontiguousarray(y[rows])


def evaluate(model: GPT, splits: dict, tc: TrainConfig, it: int, world) -> dict:
    """Mean loss over eval_iters global batches of each split (no dropout),
    drawn from the evaluation stream at this iteration, not the training
    stream; each rank takes its slice of every batch."""
    out = {}
    for k, (name, toks) in enumerate(splits.items()):
        total = 0.0
        for e in range(tc.eval_iters):
            x, y = _rank_batch(toks, tc, world, stream_rng(tc.seed, STREAM_EVAL + k, it, e))
            total += model.forward(x, y)
        out[name] = world.allreduce_sum(total) / (tc.eval_iters * world.size)
    return out


def _load_prepared(run: Path, tc: TrainConfig):
    """The token files and tokenizer that _prepare_data left in run/data."""
    train_toks = read_tokens(run / "data" / "train.tokens")
    if (run / "data" / "val.tokens").exists():
        val_toks = read_tokens(run / "data" / "val.tokens")
    else:
        train_toks, val_toks = data.split_tokens(train_toks, tc.val_fraction)
    return train_toks, val_toks


def _start(tc: TrainConfig, run: Run):
    """(model, tokenizer, train and val tokens, moments, state, source,
    weight average) of a new run (_resume: of the run in run.dir); rank 0
    prepares the data, the other ranks read what it wrote."""
    init = checkpoint.load(tc.init_from) if tc.init_from else None
    if not init:   # before any work: the model without its vocabulary must fit already
        _check_memory(GPTConfig(vocab_size=1, block_size=tc.block_size, n_layer=tc.n_layer, n_head=tc.n_head,
                                n_embd=tc.n_embd), tc, run)
    failure = None
    if run.is_main:
        try:
            tok, train_toks, val_toks, source = _prepare_data(tc, run.dir, init["tokenizer"] if init else None)
            tok.save(run.dir / "data" / "tokenizer.json")
            (run.dir / "data" / "source.txt").write_text(source + "\n")
        except MinGPTError as e:
            failure = e
    if run.world.any(failure is not None):
        if failure is not None:
            raise failure
        raise DataError("rank 0 could not prepare the training data (see its message)")
    if not run.is_main:
        from mingpt_c.tokenizers.tokenizer import load_tokenizer
        tok = load_tokenizer(run.dir / "data" / "tokenizer.json")
        train_toks, val_toks = _load_prepared(run.dir, tc)
        source = (run.dir / "data" / "source.txt").read_text().strip()
    if init:
        cfg = init["cfg"]
        if tc.block_size > cfg.block_size:
            raise DataError(f"--block-size {tc.block_size} exceeds the block size "
                            f"{cfg.block_size} of {tc.init_from}")
        cfg.dropout = tc.dropout
        model = GPT(cfg, init["params"], device=run.device)
    else:
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=tc.block_size, n_layer=tc.n_layer,
                        n_head=tc.n_head, n_embd=tc.n_embd, dropout=tc.dropout)
        _check_memory(cfg, tc, run)
        model = GPT(cfg, seed=tc.seed, embd_std=tc.embd_init_std, device=run.device)
    return model, tok, train_toks, val_toks, None, None, source, None


def _check_memory(cfg: GPTConfig, tc: TrainConfig, run: Run) -> None:
    run.device.check_fits(memory_bytes(cfg, tc.batch_size, tc.block_size, train=True),
                          f"training this model ({cfg.n_layer} layers, width {cfg.n_embd}, block "
                          f"{tc.block_size}) at batch {tc.batch_size}")


def _resume(tc: TrainConfig, run: Run):
    ck = run.dir / "latest"
    try:
        loaded = checkpoint.load(ck, with_optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {ck}: {e}") from None
    state = loaded["train_state"]
    train_toks, val_toks = _load_prepared(run.dir, tc)
    weights, average = training_weights(loaded)
    model = GPT(loaded["cfg"], weights, device=run.device)
    return (model, loaded["tokenizer"], train_toks, val_toks, loaded["optimizer"], state,
            state.get("source", ""), average)

# ------------------------------------------------------------------ loop


def train(tc: TrainConfig, resume: bool = False, log=print, given: dict | None = None) -> dict:
    """Runs (or resumes) training; returns a summary dict. Under an MPI
    launcher with several ranks, runs data-parallel. given: the options
    the command line gave (for the --resume rule; None: every field of tc)."""
    if not resume and not tc.init_from:  # the architecture, before the run directory exists
        GPTConfig(vocab_size=1, block_size=tc.block_size, n_layer=tc.n_layer, n_head=tc.n_head,
                  n_embd=tc.n_embd, dropout=tc.dropout)
    with Run(tc, resume, given, log) as run, _data_removed_on_failure(run, resume):
        tc, world = run.cfg, run.world
        model, tok, train_toks, val_toks, moments, state, source, average = (_resume if resume else _start)(tc, run)
        cfg = model.cfg
        cfg.extra = {"tokenizer": tok.kind, "eot_token": tok.eot_token}
        opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, 1e-8,
                    tc.weight_decay, tc.grad_clip, moments[2] if moments else 0)
        if moments:
            opt.load_moments(moments[0], moments[1])
        run.average_weights(opt, average)
        start = state["iter"] if state else 0
        splits = {"train": train_toks, "val": val_toks}
        rows = tc.batch_size * tc.block_size                      # tokens of one micro-batch on one rank
        tokens_per_iter = rows * world.size * tc.grad_accum
        run.say(f"model: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, block {cfg.block_size}, "
                f"vocab {cfg.vocab_size}: {model.num_params() / 1e6:.2f}M parameters")
        run.say_device()
        run.say(f"data: {source}: {len(train_toks):,} train / {len(val_toks):,} val tokens; "
                f"{tokens_per_iter:,} tokens per iteration"
                + (f" ({world.size} ranks x {tc.batch_size} rows)" if world.size > 1 else ""))
        run.begin(start, tc.max_iters,
                  save=lambda path, st: checkpoint.save(path, cfg, tokenizer=tok, optimizer=opt, train_state=st,
                                                        **run.checkpoint_weights(model.params)),
                  state=lambda it: {"source": source, "tokens_seen": it * tokens_per_iter,
                                    "sampler": "numpy default_rng([seed, iter, micro, 0]), global batch cut by rank"},
                  best_key="best_val", command=f"mingpt train --out {run.dir}")
        scale, w = run.weights(rows, tokens_per_iter)
        it, result = start, {}
        while True:
            # a resumed run does not evaluate its first iteration again: the log has it
            if (it % tc.eval_interval == 0 or it == tc.max_iters) and not (resume and it == start):
                with run.evaluating(model.params):
                    ev = evaluate(model, splits, tc, it, world)
                run.record({"type": "eval", "iter": it, "train_loss": ev["train"], "val_loss": ev["val"],
                            "lr": lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, tc.decay_iters())})
                run.say(f"iter {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
                result.update(train_loss=ev["train"], val_loss=ev["val"])
                if it > 0:
                    run.save_best(it, ev["val"])
                if it > start:
                    run.save_latest(it)
            if it >= tc.max_iters or run.should_stop():
                break
            lr = lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, tc.decay_iters())
            model.zero_grad()
            loss = 0.0
            for micro in range(tc.grad_accum):
                x, y = _rank_batch(train_toks, tc, world, stream_rng(tc.seed, STREAM_BATCHES, it, micro))
                loss += w * model.forward(x, y, train=True, seed=dropout_seed(tc.seed, it, micro, world.rank))
                model.backward(scale)
            loss = run.all_reduce(model.grads, loss)
            norm = run.step(opt, model.grads, loss, lr, it)
            it += 1
            run.tick(it, loss, lr, norm, tokens_per_iter)
        return run.finish(it, dict(result, best_val=math.inf if run.best is None else run.best))
