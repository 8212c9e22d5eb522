"""Data-parallel scaling: training tokens/s of 1 and 2 MPI ranks (1 thread
each) on the small config, and the share of the step spent in the gradient
all-reduce.

    python bench/bench_mpi.py [--ranks 1,2] [--steps 10] [--config small]

Each rank holds batch_size rows of the global batch (batch 8 per rank, as in
`mingpt bench`), so 2 ranks process twice the tokens per step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(config: str, steps: int) -> None:
    import numpy as np

    from mingpt_c._lib import set_num_threads
    from mingpt_c.benchmarks.cpu import CONFIGS
    from mingpt_c.run.distributed import get_world
    from mingpt_c.gpt.config import GPTConfig
    from mingpt_c.gpt.model import GPT
    from mingpt_c.nn.optim import AdamW

    c = CONFIGS[config]
    world = get_world()
    set_num_threads(1)
    model = GPT(GPTConfig(vocab_size=c["V"], block_size=c["T"], n_layer=c["L"], n_head=c["NH"],
                          n_embd=c["C"]), seed=0)
    opt = AdamW(model.params, model.layout.decay_mask())
    rng = np.random.default_rng(world.rank)
    x = rng.integers(0, c["V"], (c["B"], c["T"])).astype(np.int32)
    step_t, ar_t = [], []
    for i in range(steps + 2):
        world.barrier()
        t0 = time.perf_counter()
        model.zero_grad()
        model.forward(x, x, train=True)
        model.backward()
        t1 = time.perf_counter()
        world.allreduce_mean_(model.grads)
        t2 = time.perf_counter()
        opt.step(model.grads, 1e-4)
        t3 = time.perf_counter()
        if i >= 2:
            step_t.append(t3 - t0)
            ar_t.append(t2 - t1)
    if world.is_main:
        step = statistics.median(step_t)
        print(json.dumps({"ranks": world.size, "tok_s": world.size * c["B"] * c["T"] / step,
                          "step_s": step, "allreduce_s": statistics.median(ar_t)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--config", default="small")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.config, a.steps)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    rows = []
    for n in (int(r) for r in a.ranks.split(",")):
        cmd = ["mpiexec", "-n", str(n), "--oversubscribe", "--bind-to", "none", sys.executable, __file__,
               "--worker", "--steps", str(a.steps), "--config", a.config]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = rows[0]["tok_s"]
    print(f"{a.config} config, 1 thread per rank, median of {a.steps} steps")
    print(f"{'ranks':>5} {'tokens/s':>10} {'speed-up':>9} {'step ms':>8} {'all-reduce ms':>14} {'share':>6}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['tok_s']:>10,.0f} {r['tok_s'] / base:>8.2f}x {r['step_s'] * 1e3:>8.1f} "
              f"{r['allreduce_s'] * 1e3:>14.2f} {r['allreduce_s'] / r['step_s']:>6.1%}")


if __name__ == "__main__":
    main()
