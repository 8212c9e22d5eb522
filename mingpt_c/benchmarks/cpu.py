"""Training and sampling throughput, ours beside PyTorch eager, in one run.

Every measurement runs in a fresh worker process (so peak RSS is each
side's own), ours and PyTorch alternating round by round on the same
configuration and thread count; tokens/s is reported as the median, min and
max over rounds. Model FLOP utilisation is counted against numpy's float32
GEMM rate, measured by a worker in the same run:

    FLOPs per token = 6 N + 12 L C T     (N: parameters without position
                                          embeddings, tied embedding once)

`--profile` times each group of C kernels inside our training step instead
(ours only; a worker wraps the ops functions with timers before the model is
imported); "Python and glue" is the rest of the step: sequencing, numpy
views and allocation.

Usage: mingpt bench [--config baby,small,gpt2] [--rounds 5] [--steps 10]
       mingpt bench --profile [--config small] [--steps 10]
       python -m mingpt_c.benchmark ...   (the same)
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "baby": dict(V=65, L=4, NH=4, C=128, T=64, B=12),
    "small": dict(V=65, L=6, NH=6, C=384, T=256, B=8),
    "gpt2": dict(V=50257, L=12, NH=12, C=768, T=256, B=4),
}


def flops_per_token(c: dict) -> float:
    C, L, V, T = c["C"], c["L"], c["V"], c["T"]
    n = V * C + L * (12 * C * C + 13 * C) + 2 * C
    return 6 * n + 12 * L * C * T


# ops functions timed by --profile, by group (every kernel a training step calls)
PROFILE_GROUPS = {
    "matmul": ("matmul_forward", "matmul_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "layernorm": ("layernorm_forward", "layernorm_backward"),
    "GELU": ("gelu_forward", "gelu_backward", "gelu_erf_forward", "gelu_erf_backward"),
    "loss": ("crossentropy_forward", "crossentropy_backward"),
    "AdamW": ("global_norm", "adamw_update"),
    "embedding, residual, dropout": ("embedding_forward", "embedding_backward",
                                     "residual_forward", "residual_backward",
                                     "dropout_forward", "dropout_backward"),
}
PY_GROUP = "Python and glue"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

# ------------------------------------------------------------------ workers


def _our_trainer(c: dict, threads: int):
    """Our GPT for config c and a function that runs one training step."""
    from mingpt_c._lib import set_num_threads
    from mingpt_c.gpt.config import GPTConfig
    from mingpt_c.gpt.model import GPT
    from mingpt_c.nn.optim import AdamW

    set_num_threads(threads)
    model = GPT(GPTConfig(vocab_size=c["V"], block_size=c["T"], n_layer=c["L"], n_head=c["NH"],
                          n_embd=c["C"]), seed=0)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.99, 1e-8, 0.1, 1.0)

    def step(x, y):
        model.zero_grad()
        model.forward(x, y, train=True)
        model.backward()
        opt.step(model.grads, 1e-4)
    return step


def _worker_train(side: str, c: dict, steps: int, warmup: int, threads: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    B, T = c["B"], c["T"]
    batches = [(rng.integers(0, c["V"], (B, T)), rng.integers(0, c["V"], (B, T)))
               for _ in range(4)]
    times = []
    if side == "ours":
        step = _our_trainer(c, threads)
        batches = [(x.astype(np.int32), y.astype(np.int32)) for x, y in batches]
        for i in range(warmup + steps):
            x, y = batches[i % 4]
            t0 = time.perf_counter()
            step(x, y)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    else:
        import torch

        from mingpt_c.benchmarks.torch_gpt import TorchGPT

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = TorchGPT(c["V"], T, c["L"], c["NH"], c["C"])
        opt = model.optimizer(1e-4)
        batches = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
        for i in range(warmup + steps):
            x, y = batches[i % 4]
            t0 = time.perf_counter()
            model.train_step(opt, x, y, 1e-4)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {"tok_s": B * T / statistics.median(times), "rss_mb": _peak_rss_mb()}


def _worker_profile(c: dict, steps: int, warmup: int, threads: int) -> dict:
    """Milliseconds per training step in each kernel group (ours)."""
    import numpy as np

    from mingpt_c import ops

    spent = {g: 0.0 for g in PROFILE_GROUPS}

    def timed(fn, group):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[group] += time.perf_counter() - t0
        return wrapper

    # Before the model modules are imported: some keep kernel tables.
    for group, names in PROFILE_GROUPS.items():
        for name in names:
            setattr(ops, name, timed(getattr(ops, name), group))
    step = _our_trainer(c, threads)
    rng = np.random.default_rng(0)
    B, T = c["B"], c["T"]
    x = rng.integers(0, c["V"], (B, T)).astype(np.int32)
    y = rng.integers(0, c["V"], (B, T)).astype(np.int32)
    total = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            spent.update({g: 0.0 for g in spent})
        t0 = time.perf_counter()
        step(x, y)
        if i >= warmup:
            total += time.perf_counter() - t0
    groups = {g: 1e3 * v / steps for g, v in spent.items()}
    groups[PY_GROUP] = max(0.0, 1e3 * total / steps - sum(groups.values()))
    return {"step_ms": 1e3 * total / steps, "groups": groups}


def _worker_sample(side: str, c: dict, n_new: int, threads: int) -> dict:
    import numpy as np

    T = c["T"]
    if side == "ours":
        from mingpt_c._lib import set_num_threads
        from mingpt_c.gpt.config import GPTConfig
        from mingpt_c.gpt.model import GPT
        from mingpt_c.gpt.sample import generate

        set_num_threads(threads)
        model = GPT(GPTConfig(vocab_size=c["V"], block_size=T, n_layer=c["L"], n_head=c["NH"],
                              n_embd=c["C"]), seed=0)
        t0 = time.perf_counter()
        got = list(generate(model, [0], n_new, np.random.default_rng(0), 1.0, None, None))
    else:
        import torch

        from mingpt_c.benchmarks.torch_gpt import TorchGPT

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = TorchGPT(c["V"], T, c["L"], c["NH"], c["C"]).eval()
        t0 = time.perf_counter()
        got = model.generate(torch.zeros(1, 1, dtype=torch.long), n_new, torch.Generator().manual_seed(0))[0]
    dt = time.perf_counter() - t0
    return {"tok_s": len(got) / dt, "rss_mb": _peak_rss_mb()}


def _worker_gemm(threads: int) -> dict:
    import numpy as np

    best = 0.0
    for M, K, N in ((2048, 768, 3072), (2048, 3072, 768), (2048, 384, 1536)):
        a = np.random.default_rng(0).standard_normal((M, K), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((K, N), dtype=np.float32)
        a @ b
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        best = max(best, 2.0 * M * K * N / statistics.median(ts) / 1e9)
    return {"gflops": best}


def _run_worker(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    # `python -m` puts the current directory first on the path: run from the
    # folder that holds the package this process imported, so a worker never
    # picks up another (perhaps unbuilt) source tree in the user's directory.
    home = Path(__file__).resolve().parent.parent.parent
    r = subprocess.run([sys.executable, "-m", "mingpt_c.benchmarks.cpu", "--worker", *args],
                       capture_output=True, text=True, env=env, cwd=home)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark worker {args} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

# ------------------------------------------------------------------ driver


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def parse_configs(text: str) -> list[str]:
    """"baby,small" -> ["baby", "small"]; "" -> [] (sampling only)."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown config {unknown[0]!r}: choose from {', '.join(CONFIGS)}")
    return names


def run(configs: list[str], rounds: int, steps: int, threads: int, sample_tokens: int,
        torch_side: bool, echo=print) -> dict:
    torch_side = torch_side and _have_torch()
    sides = ["ours", "torch"] if torch_side else ["ours"]
    # numpy's GEMM rate, the MFU's yardstick, is measured again after each
    # config and the best is used: one reading taken while the shared machine
    # is busy would flatter every MFU of the run.
    gemms = [_run_worker(["gemm", str(threads)], threads)["gflops"]]
    echo(f"numpy float32 GEMM: {gemms[0]:.1f} GFLOP/s ({threads} threads; measured again after "
         f"each config); {rounds} rounds x {steps} steps, sides alternating")
    results = {"gemm_runs": gemms, "train": {}, "sample": {}}
    for name in configs:
        warm = 2 if name != "gpt2" else 1
        per = {s: [] for s in sides}
        rss = {s: 0.0 for s in sides}
        for r in range(rounds):
            for s in (sides if r % 2 == 0 else sides[::-1]):
                out = _run_worker(["train", s, name, str(steps), str(warm), str(threads)], threads)
                per[s].append(out["tok_s"])
                rss[s] = max(rss[s], out["rss_mb"])
        results["train"][name] = {s: {"median": statistics.median(v), "min": min(v), "max": max(v),
                                      "rss_mb": rss[s]} for s, v in per.items()}
        gemms.append(_run_worker(["gemm", str(threads)], threads)["gflops"])
    results["gemm_gflops"] = max(gemms)
    if sample_tokens:
        per = {s: [] for s in sides}
        for r in range(rounds):
            for s in (sides if r % 2 == 0 else sides[::-1]):
                per[s].append(_run_worker(["sample", s, "small", str(sample_tokens), str(threads)], threads)["tok_s"])
        results["sample"]["small"] = {s: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                                      for s, v in per.items()}
    _print_table(results, threads, torch_side, echo)
    return results


def run_profile(configs: list[str], steps: int, threads: int, echo=print) -> dict:
    """Per-kernel-group time of our training step, one worker per config."""
    results = {}
    for name in configs:
        warm = 2 if name != "gpt2" else 1
        out = _run_worker(["profile", name, str(steps), str(warm), str(threads)], threads)
        results[name] = out
        c = CONFIGS[name]
        echo(f"profile: {name} (batch {c['B']} x block {c['T']}), {threads} threads, "
             f"{steps} steps: {out['step_ms']:,.1f} ms/step, "
             f"{c['B'] * c['T'] / out['step_ms'] * 1e3:,.0f} tokens/s")
        echo(f"  {'kernels':<30} {'ms/step':>9} {'share':>6}")
        for group, ms in sorted(out["groups"].items(), key=lambda kv: -kv[1]):
            echo(f"  {group:<30} {ms:>9.1f} {ms / out['step_ms']:>6.1%}")
    return results


def _print_table(res: dict, threads: int, torch_side: bool, echo) -> None:
    gemm, runs = res["gemm_gflops"], res["gemm_runs"]
    echo("")
    echo(f"training tokens/s ({threads} threads): median [min-max]; MFU against numpy's best "
         f"GEMM rate of the run, {gemm:.1f} GFLOP/s ({len(runs)} readings, "
         f"{min(runs):.1f}-{max(runs):.1f})")
    hdr = f"{'config':<7} {'ours':>26} {'MFU':>5} {'RSS MB':>7}"
    if torch_side:
        hdr += f" {'pytorch':>26} {'MFU':>5} {'RSS MB':>7} {'ratio':>6}"
    echo(hdr)
    for name, r in res["train"].items():
        fpt = flops_per_token(CONFIGS[name])
        o = r["ours"]
        cell = lambda d: f"{d['median']:>9,.0f} [{d['min']:,.0f}-{d['max']:,.0f}]"
        line = f"{name:<7} {cell(o):>26} {fpt * o['median'] / 1e9 / gemm:>5.0%} {o['rss_mb']:>7.0f}"
        if torch_side:
            t = r["torch"]
            line += (f" {cell(t):>26} {fpt * t['median'] / 1e9 / gemm:>5.0%} {t['rss_mb']:>7.0f}"
                     f" {o['median'] / t['median']:>5.2f}x")
        echo(line)
    for name, r in res["sample"].items():
        echo("")
        o = r["ours"]
        line = f"sampling ({name}, KV cache): ours {o['median']:,.0f} tokens/s"
        if torch_side:
            t = r["torch"]
            line += f", pytorch {t['median']:,.0f} tokens/s, ratio {o['median'] / t['median']:.2f}x"
        echo(line)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        kind, rest = argv[1], argv[2:]
        if kind == "train":
            side, name, steps, warm, threads = rest
            out = _worker_train(side, CONFIGS[name], int(steps), int(warm), int(threads))
        elif kind == "profile":
            name, steps, warm, threads = rest
            out = _worker_profile(CONFIGS[name], int(steps), int(warm), int(threads))
        elif kind == "sample":
            side, name, n_new, threads = rest
            out = _worker_sample(side, CONFIGS[name], int(n_new), int(threads))
        else:
            out = _worker_gemm(int(rest[0]))
        print(json.dumps(out))
        return
    import argparse

    ap = argparse.ArgumentParser(description="mingpt-c training and sampling throughput beside PyTorch")
    ap.add_argument("--config", default="baby,small,gpt2", help='comma-separated; "" for sampling only')
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample-tokens", type=int, default=256)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--profile", action="store_true", help="time each kernel group of ours instead")
    a = ap.parse_args(argv)
    try:
        configs = parse_configs(a.config)
    except ValueError as e:
        ap.error(str(e))
    if a.profile:
        run_profile(configs, a.steps, a.threads)
        return
    run(configs, a.rounds, a.steps, a.threads, a.sample_tokens, not a.no_torch)


if __name__ == "__main__":
    main()
