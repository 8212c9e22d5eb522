"""`mingpt bench --device cuda`: GPT training steps on one GPU, ours beside
PyTorch (eager with bf16 autocast, and torch.compile) in one process, the
sides alternating round by round.

Each side trains the same shape on random tokens: forward, cross-entropy,
backward, gradient clipping at 1.0, AdamW. Reported: tokens/s (median, min,
max over rounds), MFU against the bf16 matrix rate measured in the same run
(an 8192^3 product through torch; without torch no MFU is printed), and peak
GPU memory (ours: device memory taken by the model, its optimizer and its
buffers, read from the driver; PyTorch: its allocator's peak).

Model FLOPs per token: 6 N + 12 L C T (benchmark.flops_per_token).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from mingpt_c.benchmarks.cpu import flops_per_token

CUDA_CONFIGS = {
    # GPT-2 124M, the vocabulary padded to 50304 as llm.c and nanoGPT do
    "gpt2-1024": dict(V=50304, L=12, NH=12, C=768, T=1024, B=16),
    "gpt2-1024-b32": dict(V=50304, L=12, NH=12, C=768, T=1024, B=32),
    "tiny": dict(V=512, L=2, NH=4, C=128, T=128, B=8),
}


def _batches(c: dict, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, min(c["V"], 50257), (c["B"], c["T"]), dtype=np.int32),
             rng.integers(0, min(c["V"], 50257), (c["B"], c["T"]), dtype=np.int32)) for _ in range(n)]


class _Ours:
    name = "mingpt-c"

    def __init__(self, c: dict, dtype: str):
        from mingpt_c import cuda
        from mingpt_c.device import Device
        from mingpt_c.gpt.config import GPTConfig
        from mingpt_c.gpt.model import GPT
        from mingpt_c.nn.optim import AdamW

        self.label = f"mingpt-c {dtype}"
        cuda.synchronize()
        free0 = cuda.info()["free_memory"]
        cfg = GPTConfig(vocab_size=c["V"], block_size=c["T"], n_layer=c["L"], n_head=c["NH"],
                        n_embd=c["C"])
        self.model = GPT(cfg, seed=0, device=Device("cuda", dtype))
        self.opt = AdamW(self.model.params, self.model.layout.decay_mask(), 0.9, 0.95, 1e-8, 0.1, 1.0)
        self._free0 = free0
        self.peak_bytes = 0

    def step(self, x, y) -> float:
        self.model.zero_grad()
        loss = self.model.forward(x, y, train=True)
        self.model.backward()
        self.opt.step(self.model.grads, 6e-4)
        return loss

    def sync(self) -> None:
        from mingpt_c import cuda
        cuda.synchronize()
        self.peak_bytes = max(self.peak_bytes, self._free0 - cuda.info()["free_memory"])


class _Torch:
    def __init__(self, c: dict, compiled: bool):
        import torch

        from mingpt_c.benchmarks.torch_gpt import TorchGPT

        torch.manual_seed(0)
        torch.backends.cuda.matmul.allow_tf32 = True
        self.torch = torch
        self.label = "torch.compile bf16" if compiled else "PyTorch eager bf16"
        self.model = TorchGPT(c["V"], c["T"], c["L"], c["NH"], c["C"]).cuda()
        self.opt = self.model.optimizer(6e-4, 0.1, (0.9, 0.95))
        self.fwd = torch.compile(self.model) if compiled else self.model
        torch.cuda.reset_peak_memory_stats()

    def step(self, x, y) -> float:
        torch = self.torch
        x = torch.from_numpy(x.astype(np.int64)).cuda(non_blocking=True)
        y = torch.from_numpy(y.astype(np.int64)).cuda(non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = self.fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss  # a tensor: reading it would sync every step

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    @property
    def peak_bytes(self) -> int:
        return self.torch.cuda.max_memory_allocated()


def matmul_rate_tflops() -> float | None:
    """The GPU's bf16 matrix rate on an 8192^3 product (torch), best of 10."""
    try:
        import torch
    except ImportError:
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n ** 3 / best / 1e12


def _time(side, batches, steps: int) -> float:
    """Seconds per step over `steps` steps (after the side's warm-up)."""
    side.sync()
    t = time.perf_counter()
    for i in range(steps):
        side.step(*batches[i % len(batches)])
    side.sync()
    return (time.perf_counter() - t) / steps


def run_cuda(names: list[str], rounds: int = 3, steps: int = 10, dtype: str = "bf16",
             torch_side: bool = True, compile_side: bool = True, echo=print) -> dict:
    from mingpt_c import cuda

    cuda.require()
    info = cuda.info()
    echo(f"GPU: {info['name']} (compute capability {info['capability']}, "
         f"{info['total_memory'] / 2**30:.0f} GiB), CUDA runtime {info['runtime_version']}")
    if torch_side:
        try:
            import torch  # noqa: F401
        except ImportError:
            echo("PyTorch is not installed: ours only")
            torch_side = False
    rate = matmul_rate_tflops() if torch_side else None
    if rate:
        echo(f"bf16 matmul 8192^3: {rate:.1f} TFLOP/s (the MFU yardstick)")
    results = {}
    for name in names:
        c = CUDA_CONFIGS[name]
        tokens = c["B"] * c["T"]
        fpt = flops_per_token(c)
        batches = _batches(c, 4)
        sides = [_Ours(c, dtype)]
        if torch_side:
            sides.append(_Torch(c, compiled=False))
            if compile_side:
                sides.append(_Torch(c, compiled=True))
        for s in sides:   # warm-up: allocation, cuBLAS heuristics, compilation
            for i in range(3):
                s.step(*batches[i % len(batches)])
            s.sync()
        times = {s.label: [] for s in sides}
        for r in range(rounds):
            for s in sides:
                times[s.label].append(_time(s, batches, steps))
            echo(f"  round {r + 1}: " + ", ".join(f"{s.label} {tokens / times[s.label][-1]:,.0f}"
                                                  for s in sides) + " tokens/s")
        echo(f"\n{name}: {c['L']} layers, {c['NH']} heads, width {c['C']}, block {c['T']}, "
             f"batch {c['B']}, vocab {c['V']}; {steps} steps x {rounds} rounds")
        echo(f"{'side':<22} {'tokens/s (median)':>18} {'min':>10} {'max':>10} {'MFU':>6} {'peak GiB':>9}")
        res = {}
        for s in sides:
            tps = [tokens / t for t in times[s.label]]
            med = statistics.median(tps)
            mfu = f"{100 * med * fpt / (rate * 1e12):.1f}%" if rate else "-"
            res[s.label] = dict(median=med, min=min(tps), max=max(tps), peak_bytes=s.peak_bytes)
            echo(f"{s.label:<22} {med:>18,.0f} {min(tps):>10,.0f} {max(tps):>10,.0f} {mfu:>6} "
                 f"{s.peak_bytes / 2**30:>9.2f}")
        ours = res[sides[0].label]["median"]
        for s in sides[1:]:
            echo(f"  ours / {s.label}: {ours / res[s.label]['median']:.2f}x")
        results[name] = res
        del sides
    return results


def profile_cuda(name: str, steps: int = 5, dtype: str = "bf16", echo=print) -> dict:
    """Milliseconds per training step in each kernel group of ours on the GPU:
    every ops call is bracketed by synchronisations, so each group's time is
    its kernels' (plus a launch's overhead); the rest is Python and glue.
    The LM head's products are counted apart from the layers'."""
    from mingpt_c import cuda, ops
    from mingpt_c.benchmarks.cpu import PROFILE_GROUPS, PY_GROUP

    cuda.require()
    c = CUDA_CONFIGS[name]
    spent: dict[str, float] = {}

    def timed(fn, group):
        def wrapper(*args, **kwargs):
            cuda.synchronize()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cuda.synchronize()
                g = group
                if group == "matmul":
                    w = args[1] if fn.__name__ == "matmul_forward" else args[2]
                    g = "matmul (LM head)" if w.shape[0] == c["V"] else "matmul (layers)"
                spent[g] = spent.get(g, 0.0) + time.perf_counter() - t0
        wrapper.__name__ = fn.__name__
        return wrapper

    for group, names in PROFILE_GROUPS.items():   # before the model modules import them
        for fname in names:
            setattr(ops, fname, timed(getattr(ops, fname), group))
    from mingpt_c.nn import block
    block.ACTS.update({k: (getattr(ops, f.__name__), getattr(ops, b.__name__))
                       for k, (f, b) in block.ACTS.items()})
    side = _Ours(c, dtype)
    batches = _batches(c, 2)
    for i in range(2):
        side.step(*batches[i % 2])
    side.sync()
    spent.clear()
    total = _time(side, batches, steps) * steps
    groups = {g: 1e3 * v / steps for g, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    groups[PY_GROUP] = max(0.0, 1e3 * total / steps - sum(groups.values()))
    echo(f"\n{name} ({dtype}), {1e3 * total / steps:.1f} ms a step, per kernel group "
         f"(each call synchronised):")
    for g, ms in groups.items():
        echo(f"  {g:<30} {ms:8.2f} ms  {100 * ms / (1e3 * total / steps):5.1f}%")
    return groups
