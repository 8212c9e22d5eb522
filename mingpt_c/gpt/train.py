"""The GPT training loop: data preparation, AdamW steps with gradient
accumulation and clipping, evaluation, logging, checkpoints, resume.

Run directory (--out):
    run_config.json   every resolved option
    data/             token files (train.tokens, val.tokens) and their source
    latest/ best/     checkpoints (mingpt_c.checkpoint)
    log.jsonl         one JSON object per evaluation (and every log interval)
    loss.png          the loss curves, drawn at the end

Determinism: batches come from a generator fixed by (seed, iteration,
micro-step) and dropout masks from (seed, iteration, micro-step, site), so a
run resumed from a checkpoint at iteration k continues bit for bit as the
uninterrupted run would (same thread count).
Ctrl-C sets a flag; the loop finishes the current step, saves latest/ and
returns. A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mingpt_c import data
from mingpt_c.gpt import checkpoint
from mingpt_c._lib import set_num_threads
from mingpt_c.device import Device, default_dtype
from mingpt_c.errors import CheckpointError, DataError, MinGPTError
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import GPT
from mingpt_c.nn.optim import AdamW, lr_at
from mingpt_c.run.signals import StopFlag
from mingpt_c.tokenizers.tokenfile import read_tokens


@dataclass
class TrainConfig:
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
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # cosine decay length; default max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # max global gradient norm; 0 disables
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


def step_seed(seed: int, it: int, micro: int, rank: int = 0) -> int:
    """The dropout seed of one micro-step on one rank."""
    return (((seed * 1_000_003 + it) * 1_009 + micro) * 10_007 + rank) & 0x7FFFFFFFFFFFFFFF


def _chain(*iters):
    for it in iters:
        yield from it

# ------------------------------------------------------------------ loop


def evaluate(model: GPT, splits: dict, tc: TrainConfig, it: int, world) -> dict:
    """Mean loss over eval_iters global batches of each split (no dropout),
    drawn from a generator fixed by the iteration, not the training stream;
    each rank takes its slice of every batch."""
    out = {}
    for k, (name, toks) in enumerate(splits.items()):
        total = 0.0
        for e in range(tc.eval_iters):
            x, y = _rank_batch(toks, tc, world, data.batch_rng(tc.seed, it, e, 1 + k))
            total += model.forward(x, y)
        out[name] = world.allreduce_sum(total) / (tc.eval_iters * world.size)
    return out


def _rank_batch(tokens, tc: TrainConfig, world, rng):
    """This rank's rows of the global batch (batch_size rows per rank)."""
    x, y = data.get_batch(tokens, tc.batch_size * world.size, tc.block_size, rng)
    rows = slice(world.rank * tc.batch_size, (world.rank + 1) * tc.batch_size)
    return np.ascontiguousarray(x[rows]), np.ascontiguousarray(y[rows])


def _load_prepared(run: Path, tc: TrainConfig):
    """The token files and tokenizer that _prepare_data left in run/data."""
    train_toks = read_tokens(run / "data" / "train.tokens")
    if (run / "data" / "val.tokens").exists():
        val_toks = read_tokens(run / "data" / "val.tokens")
    else:
        train_toks, val_toks = data.split_tokens(train_toks, tc.val_fraction)
    return train_toks, val_toks


def _start(tc: TrainConfig, run: Path, world, log, dev: Device):
    """Builds (model, tokenizer, tokens, optimizer moments, state, source) for
    a new run; rank 0 prepares the data, the other ranks read what it wrote."""
    if not tc.init_from:  # check the architecture before any work is done
        GPTConfig(vocab_size=1, block_size=tc.block_size, n_layer=tc.n_layer, n_head=tc.n_head,
                  n_embd=tc.n_embd, dropout=tc.dropout)
    init = checkpoint.load(tc.init_from) if tc.init_from else None
    failure = None
    if world.is_main:
        try:
            run.mkdir(parents=True, exist_ok=True)
            tok, train_toks, val_toks, source = _prepare_data(tc, run, init["tokenizer"] if init else None)
            tok.save(run / "data" / "tokenizer.json")
            (run / "data" / "source.txt").write_text(source + "\n")
        except MinGPTError as e:
            failure = e
    if world.any(failure is not None):
        if failure is not None:
            raise failure
        raise DataError("rank 0 could not prepare the training data (see its message)")
    if not world.is_main:
        from mingpt_c.tokenizers.tokenizer import load_tokenizer
        tok = load_tokenizer(run / "data" / "tokenizer.json")
        train_toks, val_toks = _load_prepared(run, tc)
        source = (run / "data" / "source.txt").read_text().strip()
    if init:
        cfg = init["cfg"]
        if tc.block_size > cfg.block_size:
            raise DataError(f"--block-size {tc.block_size} exceeds the block size "
                            f"{cfg.block_size} of {tc.init_from}")
        cfg.dropout = tc.dropout
        model = GPT(cfg, init["params"], device=dev)
    else:
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=tc.block_size, n_layer=tc.n_layer,
                        n_head=tc.n_head, n_embd=tc.n_embd, dropout=tc.dropout)
        model = GPT(cfg, seed=tc.seed, embd_std=tc.embd_init_std, device=dev)
    return model, tok, train_toks, val_toks, None, None, source


def _resume(tc: TrainConfig, run: Path, world, log, dev: Device):
    ck = run / "latest"
    try:
        loaded = checkpoint.load(ck, with_optimizer=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {ck}: {e}") from None
    state = loaded["train_state"]
    gb = state.get("global_batch")
    if gb and gb != tc.batch_size * world.size:
        # the same global batch sequence, cut among this many ranks
        if gb % world.size:
            raise DataError(f"the run's global batch of {gb} rows cannot be split among "
                            f"{world.size} ranks")
        tc.batch_size = gb // world.size
        log(f"resuming a global batch of {gb} rows on {world.size} rank(s): {tc.batch_size} per rank")
    train_toks, val_toks = _load_prepared(run, tc)
    model = GPT(loaded["cfg"], loaded["params"], device=dev)
    return (model, loaded["tokenizer"], train_toks, val_toks, loaded["optimizer"], state,
            state.get("source", ""))


def _device(tc: TrainConfig, world) -> Device:
    """The run's device; on the GPU tc.dtype is resolved to its default."""
    if tc.device == "cuda" and world.size > 1:
        raise MinGPTError("data parallelism over MPI runs on the CPU; --device cuda trains "
                          "on one GPU (run without mpiexec)")
    if tc.device == "cuda" and tc.dtype is None:
        Device("cuda")   # says plainly when there is no GPU
        tc.dtype = default_dtype("cuda")
    return Device(tc.device, tc.dtype)


def train(tc: TrainConfig, resume: bool = False, log=print) -> dict:
    """Runs (or resumes) training; returns a summary dict. Under an MPI
    launcher with several ranks, runs data-parallel (mingpt_c.distributed)."""
    from mingpt_c.run.distributed import default_threads, get_world

    run = Path(tc.out)
    world = get_world(tc.dist_timeout)
    if tc.threads:
        set_num_threads(tc.threads)
    elif world.size > 1:
        set_num_threads(default_threads(world))
    say = log if world.is_main else (lambda m: None)
    dev = _device(tc, world)
    model, tok, train_toks, val_toks, moments, state, source = (
        _resume if resume else _start)(tc, run, world, say, dev)
    cfg = model.cfg
    cfg.extra = {"tokenizer": tok.kind, "eot_token": tok.eot_token}
    opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, 1e-8,
                tc.weight_decay, tc.grad_clip, moments[2] if moments else 0)
    if moments:
        opt.load_moments(moments[0], moments[1])
    if world.is_main:
        (run / "run_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=2, default=str) + "\n")

    start = state["iter"] if state else 0
    best_val = state.get("best_val", math.inf) if state else math.inf
    splits = {"train": train_toks, "val": val_toks}
    global_batch = tc.batch_size * world.size
    tokens_per_iter = global_batch * tc.block_size * tc.grad_accum
    say(f"model: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, block {cfg.block_size}, "
        f"vocab {cfg.vocab_size}: {model.num_params() / 1e6:.2f}M parameters")
    if dev.is_cuda:
        from mingpt_c import cuda
        say(f"device: {cuda.info()['name']}, {tc.dtype} matrix products")
    say(f"data: {source}: {len(train_toks):,} train / {len(val_toks):,} val tokens; "
        f"{tokens_per_iter:,} tokens per iteration"
        + (f" ({world.size} ranks x {tc.batch_size} rows)" if world.size > 1 else ""))

    def train_state(it):
        return {"iter": it, "best_val": best_val, "seed": tc.seed, "source": source,
                "sampler": "numpy default_rng([seed, iter, micro, 0]), global batch cut by rank",
                "global_batch": global_batch, "world_size": world.size,
                "tokens_seen": it * tokens_per_iter, "options": dataclasses.asdict(tc)}

    def save(name, it):
        if world.is_main:
            checkpoint.save(run / name, cfg, model.params, tok, opt, train_state(it))

    logf = open(run / "log.jsonl", "a", buffering=1) if world.is_main else None  # line-buffered
    bar = None
    if tc.progress and world.is_main:
        from tqdm import tqdm
        bar = tqdm(total=tc.max_iters, initial=start, unit="it", dynamic_ncols=True, leave=True)
    note = bar.write if bar else say
    nan_streak = 0
    last_losses = []
    t_last, tok_last = time.perf_counter(), 0
    it = start
    stopped = False
    result = {}
    try:
        with StopFlag() as stop:
            while True:
                if it % tc.eval_interval == 0 or it == tc.max_iters:
                    ev = evaluate(model, splits, tc, it, world)
                    if logf:
                        logf.write(json.dumps({"type": "eval", "iter": it, "train_loss": ev["train"],
                                               "val_loss": ev["val"], "lr": lr_at(
                                                   it, tc.lr, tc.min_lr, tc.warmup_iters,
                                                   tc.decay_iters())}) + "\n")
                    note(f"iter {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
                    result.update(train_loss=ev["train"], val_loss=ev["val"])
                    if it > 0 and ev["val"] < best_val:
                        best_val = ev["val"]
                        save("best", it)
                    if it > start:
                        save("latest", it)
                if it >= tc.max_iters:
                    break
                if world.any(stop.requested):
                    stopped = True
                    break
                lr = lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, tc.decay_iters())
                model.zero_grad()
                loss = 0.0
                for micro in range(tc.grad_accum):
                    x, y = _rank_batch(train_toks, tc, world, data.batch_rng(tc.seed, it, micro))
                    loss += model.forward(x, y, train=True,
                                          seed=step_seed(tc.seed, it, micro, world.rank))
                    model.backward(1.0 / tc.grad_accum)
                world.allreduce_mean_(model.grads)
                loss = world.allreduce_sum(loss) / (tc.grad_accum * world.size)
                norm = opt.step(model.grads, lr) if math.isfinite(loss) else float("nan")
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    nan_streak += 1
                    note(f"iter {it}: non-finite loss or gradient (loss {loss}, grad norm {norm}): "
                         f"step skipped")
                    if nan_streak >= tc.max_nan_steps:
                        raise MinGPTError(
                            f"training diverged: {nan_streak} non-finite steps in a row at iteration {it}; "
                            f"the last good checkpoint is in {run / 'latest'} (try a lower --lr)")
                else:
                    nan_streak = 0
                it += 1
                last_losses.append(loss)
                tok_last += tokens_per_iter
                if it % tc.log_interval == 0:
                    now = time.perf_counter()
                    tps = tok_last / max(now - t_last, 1e-9)
                    if logf:
                        logf.write(json.dumps({"type": "train", "iter": it, "loss": float(np.mean(last_losses)),
                                               "lr": lr, "grad_norm": norm, "tokens_per_s": tps}) + "\n")
                    t_last, tok_last, last_losses = now, 0, []
                    if bar:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                if bar:
                    bar.update(1)
            if stopped:
                save("latest", it)
    finally:
        if bar:
            bar.close()
        if logf:
            logf.close()
    if world.is_main:
        plot_losses(run / "log.jsonl", run / "loss.png")
    result.update(iter=it, interrupted=stopped, best_val=best_val, out=str(run), main=world.is_main)
    if stopped:
        say(f"interrupted at iteration {it}: checkpoint saved in {run / 'latest'}; "
            f"continue with: mingpt train --out {run} --resume")
    return result


def plot_losses(log_path: Path, png: Path) -> None:
    """Train and val loss against iterations, from log.jsonl."""
    recs = [json.loads(line) for line in open(log_path) if line.strip()]
    if not recs:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    tr = [(r["iter"], r["loss"]) for r in recs if r["type"] == "train"]
    ev = [(r["iter"], r["train_loss"], r["val_loss"]) for r in recs if r["type"] == "eval"]
    if tr:
        ax.plot(*zip(*tr), lw=0.8, alpha=0.6, label="train (batch)")
    if ev:
        its, trl, val = zip(*ev)
        ax.plot(its, trl, "o-", ms=3, label="train (eval)")
        ax.plot(its, val, "o-", ms=3, label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
