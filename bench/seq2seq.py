"""The encoder-decoder Transformer, ours and PyTorch's nn.Transformer twin,
trained side by side on grapheme-to-phoneme conversion (CMUdict).

Both sides get the same recipe: the model `mingpt seq2seq train` builds
(post-LN, sinusoidal positions, output tied to the target embedding), the
same initial weights (copied into the twin in float32 by from_ours), the
same batches in the same order (batches_by_rows, shuffled per epoch from
the seed), AdamW with our decay groups, the same learning-rate schedule,
label smoothing and gradient clipping at 1.0, the same weight average
(--ema: its update is part of each side's step, and each side decodes
with its average), and the same thread count.
The sides alternate step by step (ours step i, then torch step i), so
machine noise falls on both. Dropout masks differ between the sides.

A step's time is its forward, backward, clipping and update (the batch is
built once, outside). After training each side greedy-decodes the test
words (ours with the KV cache, the twin by re-running the whole prefix
each step, batched) and is scored against every reference pronunciation:
WER (wrong words), PER (phoneme edit distance), BLEU.

    python bench/seq2seq.py [--epochs 20 | --iters N] [--threads 2] [--quick]
                            [--state DIR [--stop-after N]] [--sides both|torch]

The default is the full run of `mingpt seq2seq train` (20 epochs of
batch 64: about 37,600 steps a side); --quick takes 40 steps and scores
200 test words, to check the script works.

A full run takes hours. With --state DIR it keeps its progress in DIR
(both sides' weights and optimizer state, the twin's dropout generator,
every step's time and loss) at each epoch's end and when Ctrl-C or
SIGTERM stops it; the same command then goes on from there and gives
the same bits as a run without a stop. After more than one sitting the
tables list each one's steps and CPU. --sides torch trains the twin
alone: its rates at a recipe whose own run `mingpt seq2seq train` has
made (ours, step for step, is that run: the same batches, dropout seeds
and schedule).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mingpt_c.benchmarks import cpu_model  # after the path insert: the checkout, not an install

# ------------------------------------------------------------------ setup


def parse_args():
    from mingpt_c.seq2seq.train import Seq2SeqTrainConfig
    d = Seq2SeqTrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=None, help="steps a side [default: --epochs of the training set]")
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--enc-layers", type=int, default=d.enc_layers)
    ap.add_argument("--dec-layers", type=int, default=d.dec_layers)
    ap.add_argument("--n-embd", type=int, default=d.n_embd)
    ap.add_argument("--n-head", type=int, default=d.n_head)
    ap.add_argument("--dropout", type=float, default=d.dropout)
    ap.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    ap.add_argument("--ema", type=float, default=d.ema, help="decay of the weight average decoded (0: none)")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--init", choices=["xavier", "gpt2"], default=d.init)
    ap.add_argument("--min-lr", type=float, default=d.min_lr)
    ap.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    ap.add_argument("--schedule", choices=["cosine", "inverse-sqrt"], default=d.schedule)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="score the first N test words [default: all]")
    ap.add_argument("--log-interval", type=int, default=None, help="[default: about 20 lines]")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--sides", choices=["both", "torch"], default="both",
                    help="train both sides alternately, or the twin alone (its rates at a recipe ours has run)")
    ap.add_argument("--state", default=None, metavar="DIR",
                    help="keep the run's progress in DIR (every epoch, and on Ctrl-C or SIGTERM); "
                         "the same command goes on from it")
    ap.add_argument("--stop-after", type=int, default=None, metavar="N",
                    help="stop after N steps this sitting (with --state: go on later)")
    ap.add_argument("--quick", action="store_true", help="40 steps and 200 test words: checks the script works")
    a = ap.parse_args()
    if a.quick:
        a.iters = a.iters or 40
        a.eval_limit = a.eval_limit or 200
    return a, d


def train_config(a, d):
    """The Seq2SeqTrainConfig `mingpt seq2seq train` would run with these options."""
    from dataclasses import replace
    return replace(d, epochs=a.epochs, max_iters=a.iters, batch_size=a.batch_size, enc_layers=a.enc_layers,
                   dec_layers=a.dec_layers, n_embd=a.n_embd, n_head=a.n_head, dropout=a.dropout,
                   label_smoothing=a.label_smoothing, ema=a.ema, lr=a.lr, weight_decay=a.weight_decay,
                   min_lr=a.min_lr, warmup_iters=a.warmup_iters, schedule=a.schedule, seed=a.seed,
                   threads=a.threads, init=a.init)

# ------------------------------------------------------------------ the twin's greedy decoding


def torch_greedy(tm, srcs: list[list[int]], batch_size: int = 256) -> list[list[int]]:
    """Greedy outputs of the twin: the whole prefix re-run every step. As
    seq2seq/decode.py: at most min(2 * source + 10, max_tgt_len) tokens with
    </s>, <pad> and <s> never generated, only </s> at the last position."""
    import numpy as np
    import torch

    from mingpt_c.seq2seq import data as sd
    from mingpt_c.seq2seq.model import BOS, EOS, PAD

    cap = tm.cfg.max_tgt_len
    out = []
    with torch.inference_mode():
        for i in range(0, len(srcs), batch_size):
            batch = srcs[i:i + batch_size]
            s, m = sd.pad(batch, PAD)
            src, mask = torch.from_numpy(s).long(), torch.from_numpy(m).long()
            limit = torch.tensor(np.clip(2 * np.array([len(x) for x in batch]) + 10, 1, cap))
            tokens = torch.full((len(batch), 1), BOS, dtype=torch.long)            # (B, t+1)
            done = torch.zeros(len(batch), dtype=torch.bool)
            for t in range(int(limit.max())):
                logits = tm(src, mask, tokens)[:, -1].clone()                       # (B, V)
                logits[:, PAD] = logits[:, BOS] = -float("inf")
                last = t == limit - 1
                logits[last, :EOS] = logits[last, EOS + 1:] = -float("inf")
                nxt = torch.where(done, PAD, logits.argmax(1))
                tokens = torch.cat([tokens, nxt[:, None]], 1)
                done |= nxt == EOS
                if bool(done.all()):
                    break
            for row in tokens[:, 1:].tolist():
                out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


def by_length(decode_fn, srcs: list[list[int]]) -> list[list[int]]:
    """decode_fn on the sources sorted by length (little padding a batch), in
    the given order again."""
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]))
    hyps = decode_fn([srcs[i] for i in order])
    out = [None] * len(srcs)
    for i, h in zip(order, hyps):
        out[i] = h
    return out

# ------------------------------------------------------------------ main


def main() -> None:
    if importlib.util.find_spec("torch") is None:
        sys.exit("bench/seq2seq.py needs PyTorch to compare against: pip install torch")
    a, d = parse_args()
    # mingpt_c first: it picks OpenMP's wait policy before the runtime (which torch shares) loads
    import numpy as np

    from mingpt_c._lib import WAIT_POLICY, set_num_threads
    from mingpt_c.nn.optim import AdamW, WeightAverage, inverse_sqrt_lr, lr_at
    from mingpt_c.nn.seeds import STREAM_BATCHES, dropout_seed, stream_rng
    from mingpt_c.run.signals import StopFlag
    from mingpt_c.seq2seq import data as sd
    from mingpt_c.seq2seq.decode import DecodeConfig, decode
    from mingpt_c.seq2seq.model import Seq2Seq
    from mingpt_c.seq2seq.train import build_vocabs, encode_pairs, evaluate_outputs, make_batch, new_config

    import torch

    from mingpt_c.benchmarks.torch_seq2seq import decay_groups, from_ours

    tc = train_config(a, d)
    set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    # data and model, as `mingpt seq2seq train` builds them
    split = sd.g2p_split()
    pairs = sd.g2p_pairs(split["train"])
    vocabs = build_vocabs(tc, pairs)
    cfg = new_config(tc, vocabs, pairs)
    max_src, max_tgt = cfg.max_src_len, cfg.max_tgt_len
    model = Seq2Seq(cfg, seed=tc.seed)
    tm = from_ours(model, dtype=torch.float32)                 # before any step: the same initial weights
    tm.train()
    src, tgt, _ = encode_pairs(vocabs, pairs, cfg)
    src_lens, tgt_lens = np.array([len(s) for s in src]), np.array([len(t) for t in tgt])
    B = tc.batch_size
    nb = -(-len(src) // B)
    total = tc.max_iters if tc.max_iters is not None else max(1, int(round(tc.epochs * nb)))
    log_every = a.log_interval or max(1, total // 20)

    opt = AdamW(model.params, model.layout.decay_mask(), tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay,
                tc.grad_clip)
    topt = torch.optim.AdamW(decay_groups(model, tm, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                             eps=tc.adam_eps)

    def lr_of(it: int) -> float:
        if tc.schedule == "inverse-sqrt":
            return inverse_sqrt_lr(it, tc.lr, tc.warmup_iters)
        return lr_at(it, tc.lr, tc.min_lr, tc.warmup_iters, total)

    test = split["test"][:a.eval_limit] if a.eval_limit else split["test"]
    print(f"data: CMUdict G2P: {len(src):,} training pairs ({nb:,} batches of {B} an epoch); "
          f"{len(test):,} of {len(split['test']):,} test words scored")
    print(f"model: {cfg.enc_layers}+{cfg.dec_layers} layers, {cfg.n_head} heads, width {cfg.n_embd}, post-LN, "
          f"{cfg.act}, vocab {cfg.src_vocab_size}/{cfg.tgt_vocab_size}, max lengths {max_src}/{max_tgt}: "
          f"{model.num_params() / 1e6:.2f}M parameters")
    print(f"recipe: {total:,} steps ({total / nb:.2f} epochs), batch {B}, {tc.schedule} lr {tc.lr:g} "
          f"(warmup {tc.warmup_iters}" + (f", min {tc.min_lr:g})" if tc.schedule == "cosine" else ")")
          + f", AdamW betas ({tc.beta1}, {tc.beta2}) eps {tc.adam_eps:g} weight decay {tc.weight_decay:g}, "
          f"clip {tc.grad_clip:g}, label smoothing {tc.label_smoothing:g}, dropout {tc.dropout:g}, {tc.init} init, "
          + (f"weight average {tc.ema:g}, " if tc.ema else "") + f"seed {tc.seed}")
    print(f"cpu: {cpu_model()}, {a.threads} threads a side; torch {torch.__version__}; "
          f"OpenMP wait policy: {WAIT_POLICY}", flush=True)

    # ---------------------------------------------------------- training, alternating
    sides = ("ours", "torch") if a.sides == "both" else ("torch",)
    avg = WeightAverage(model.params, tc.ema) if tc.ema and "ours" in sides else None
    tavg = [p.detach().clone() for p in tm.parameters()] if tc.ema else None
    state = Path(a.state) / "state.pt" if a.state else None
    times = {name: [] for name in sides}
    losses = {name: [] for name in sides}
    sittings: list[dict] = []
    start = 0
    if state is not None and state.exists():
        start = load_state(state, a, model, opt, tm, topt, times, losses, sittings, avg, tavg)
        print(f"resumed from {state} at step {start:,} of {total:,}", flush=True)
    def epoch_order(epoch: int) -> list:
        return sd.batches_by_rows(src_lens, tgt_lens, B, stream_rng(tc.seed, STREAM_BATCHES, epoch))

    epoch, pos = divmod(start, nb)
    order = epoch_order(epoch)
    it = start
    cpu, t_start = cpu_model(), time.perf_counter()
    with StopFlag() as stop:
        while it < total and not stop.requested and (a.stop_after is None or it - start < a.stop_after):
            idx = order[pos]
            s, m, tin, tout = make_batch([src[i] for i in idx], [tgt[i] for i in idx], cfg)
            tsrc, tmask, ttin, ttout = (torch.from_numpy(x).long() for x in (s, m, tin, tout))
            lr = lr_of(it)

            if "ours" in sides:
                t0 = time.perf_counter()
                model.zero_grad()
                loss = model.loss(s, m, tin, tout, train=True, seed=dropout_seed(tc.seed, it),
                                  label_smoothing=tc.label_smoothing)
                model.backward()
                opt.step(model.grads, lr)
                if avg:
                    avg.update(model.params, opt.t)
                times["ours"].append(time.perf_counter() - t0)
                losses["ours"].append(loss)
            t0 = time.perf_counter()
            for g in topt.param_groups:
                g["lr"] = lr
            topt.zero_grad(set_to_none=True)
            tl = tm.loss(tsrc, tmask, ttin, ttout, label_smoothing=tc.label_smoothing)
            tl.backward()
            torch.nn.utils.clip_grad_norm_(tm.parameters(), tc.grad_clip)
            topt.step()
            if tavg:
                torch_average(tavg, tm, tc.ema, it + 1)
            times["torch"].append(time.perf_counter() - t0)
            losses["torch"].append(tl.item())

            it, pos = it + 1, pos + 1
            if pos == nb:
                epoch, pos = epoch + 1, 0
                order = epoch_order(epoch)
            if it % log_every == 0 or it == total:
                k = min(log_every, it)
                print(f"step {it:>6}/{total}  lr {lr:.2e}  loss "
                      + " ".join(f"{name} {np.mean(losses[name][-k:]):.4f}" for name in sides) + "  ms/step "
                      + " ".join(f"{name} {1e3 * np.mean(times[name][-k:]):.0f}" for name in sides)
                      + f"  ({time.perf_counter() - t_start:.0f} s)", flush=True)
            if state is not None and pos == 0 and it < total:
                save_state(state, a, it, model, opt, tm, topt, times, losses,
                           sittings + [sitting(start, it, t_start, cpu)], avg, tavg)
    if it > start:
        sittings.append(sitting(start, it, t_start, cpu))
        if state is not None:
            save_state(state, a, it, model, opt, tm, topt, times, losses, sittings, avg, tavg)
    if it < total:
        why = f"stopped by {signal.Signals(stop.signum).name}" if stop.requested else f"--stop-after {a.stop_after}"
        print(f"{why} at step {it:,} of {total:,}"
              + (f"; state saved in {state}: the same command goes on from there" if state else ""))
        sys.exit(128 + stop.signum if stop.requested else 0)

    # ---------------------------------------------------------- evaluation
    srcs = [vocabs["src"].encode(w)[:max_src] for w, _ in test]
    refs = [r for _, r in test]
    tm.eval()
    if avg:   # each side decodes with its average
        model.params[...] = avg.avg
    if tavg:
        with torch.no_grad():
            for p, pa in zip(tm.parameters(), tavg):
                p.copy_(pa)
    greedy = {"ours": lambda b: decode(model, b, DecodeConfig(batch_size=256)), "torch": lambda b: torch_greedy(tm, b)}
    scores, decode_s = {}, {}
    for name in sides:
        t0 = time.perf_counter()
        hyps = by_length(greedy[name], srcs)
        decode_s[name] = time.perf_counter() - t0
        scores[name] = evaluate_outputs(vocabs, hyps, refs)

    # ---------------------------------------------------------- tables
    labels = {"ours": "mingpt-c", "torch": "pytorch"}
    tail = min(100, total)
    print(f"\n{total:,} steps a side, {a.threads} threads, {cpu}")
    if len(sittings) > 1:
        for k, st in enumerate(sittings, 1):
            print(f"  sitting {k}: steps {st['from']:,} to {st['to']:,} in {st['seconds']:.0f} s on {st['cpu']}")
    print(f"{'':<10} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'steps/s':>8} {'train s':>8} "
          f"{'loss':>7}")
    for name in sides:
        t = times[name]
        print(f"{labels[name]:<10} {1e3 * statistics.median(t):>10.1f} {1e3 * min(t):>8.1f} {1e3 * max(t):>8.1f} "
              f"{len(t) / sum(t):>8.2f} {sum(t):>8.1f} {np.mean(losses[name][-tail:]):>7.4f}")
    if "ours" in sides:
        print(f"speed ratio ours/torch (steps/s): {sum(times['torch']) / sum(times['ours']):.2f}x "
              f"(medians: {statistics.median(times['torch']) / statistics.median(times['ours']):.2f}x); "
              f"loss: the mean of the last {tail} steps (label-smoothed)")
    print(f"\ngreedy decoding of {len(test):,} test words (every pronunciation a reference)")
    print(f"{'':<10} {'WER':>7} {'PER':>7} {'BLEU':>6} {'decode s':>9}")
    for name in sides:
        r = scores[name]
        print(f"{labels[name]:<10} {r['wer']:>7.2%} {r['per']:>7.2%} {r['bleu']:>6.2f} {decode_s[name]:>9.1f}")
    print("decode s: ours with the KV cache, pytorch re-running the prefix each step")

# ------------------------------------------------------------------ a run over several sittings


RECIPE = ("iters", "epochs", "batch_size", "enc_layers", "dec_layers", "n_embd", "n_head", "dropout",
          "label_smoothing", "ema", "lr", "weight_decay", "init", "min_lr", "warmup_iters", "schedule", "seed",
          "threads", "sides")


def torch_average(tavg, tm, decay: float, t: int) -> None:
    """The twin's weight average after step t: nn/optim.py WeightAverage's
    recursion, avg = d avg + (1 - d) p with d = min(decay, (1 + t) / (10 + t))."""
    import torch
    d = min(decay, (1.0 + t) / (10.0 + t))
    with torch.no_grad():
        for pa, p in zip(tavg, tm.parameters()):
            pa.mul_(d).add_(p, alpha=1.0 - d)


def sitting(start: int, it: int, t_start: float, cpu: str) -> dict:
    return {"from": start, "to": it, "seconds": time.perf_counter() - t_start, "cpu": cpu}


def save_state(path: Path, a, it: int, model, opt, tm, topt, times, losses, sittings, avg=None,
               tavg=None) -> None:
    """Both sides' weights, optimizer moments, weight averages and the
    twin's dropout RNG, with the step times and losses so far: written
    beside, then renamed."""
    import torch
    blob = {"recipe": {k: getattr(a, k) for k in RECIPE}, "step": it, "times": times, "losses": losses,
            "sittings": sittings,
            "torch": {"model": tm.state_dict(), "optimizer": topt.state_dict(), "rng": torch.get_rng_state(),
                      "avg": tavg}}
    if "ours" in times:
        blob["ours"] = {"params": torch.from_numpy(model.params.copy()), "m": torch.from_numpy(opt.m.copy()),
                        "v": torch.from_numpy(opt.v.copy()), "t": opt.t,
                        "avg": torch.from_numpy(avg.avg.copy()) if avg else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_state(path: Path, a, model, opt, tm, topt, times, losses, sittings, avg=None, tavg=None) -> int:
    """Restores what save_state wrote; returns the step to go on from."""
    import torch
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one line
        sys.exit(f"bench/seq2seq.py: cannot read {path}: {e}")
    older = {"ema": 0.0, "weight_decay": 0.01}   # states saved before these options existed
    recipe, saved = {k: getattr(a, k) for k in RECIPE}, {**older, **(blob.get("recipe") or {})}
    if saved != recipe:
        diff = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} there, {v!r} here"
                         for k, v in recipe.items() if saved.get(k) != v)
        sys.exit(f"bench/seq2seq.py: {path} holds another recipe ({diff}); give the same options or another --state")
    tm.load_state_dict(blob["torch"]["model"])
    topt.load_state_dict(blob["torch"]["optimizer"])
    torch.set_rng_state(blob["torch"]["rng"])
    if tavg:
        for pa, saved_avg in zip(tavg, blob["torch"]["avg"]):
            pa.copy_(saved_avg)
    if "ours" in times:
        model.params[...] = blob["ours"]["params"].numpy()
        opt.load_moments(blob["ours"]["m"].numpy(), blob["ours"]["v"].numpy())
        opt.t = blob["ours"]["t"]
        if avg:
            avg.avg[...] = blob["ours"]["avg"].numpy()
    for name in times:
        times[name].extend(blob["times"][name])
        losses[name].extend(blob["losses"][name])
    sittings.extend(blob["sittings"])
    return blob["step"]


if __name__ == "__main__":
    main()
