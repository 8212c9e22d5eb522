"""nanoGPT's CPU recipe on Tiny Shakespeare, ours and PyTorch in one sitting.

Recipe: char level, 4 layers, 4 heads, width 128, block 64, batch 12, 2000
iterations, lr 1e-3 cosine to 1e-4 with 100 warmup iterations, AdamW betas
(0.9, 0.99), weight decay 0.1, clip 1.0, no dropout, 90/10 split; token and
position embeddings initialised N(0, 0.05) on both sides (nanoGPT: 0.02).
Prints the final val loss (200 eval batches) and wall time of each side.

    python bench/shakespeare.py [--iters 2000] [--threads 2] [--no-torch]
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT))


def ours(args, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", str(DATA), "--out", str(out),
           "--tokenizer", "char", "--n-layer", "4", "--n-head", "4", "--n-embd", "128",
           "--block-size", "64", "--batch-size", "12", "--max-iters", str(args.iters),
           "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", "100", "--beta2", "0.99",
           "--weight-decay", "0.1", "--grad-clip", "1.0", "--dropout", "0",
           "--embd-init-std", str(args.embd_init_std),
           "--eval-interval", str(args.iters), "--eval-iters", str(args.eval_iters),
           "--threads", str(args.threads), "--seed", str(args.seed), "--no-progress"]
    print("ours:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    import json
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    return [r for r in recs if r["type"] == "eval"][-1]["val_loss"], wall


def pytorch(args) -> tuple[float, float]:
    import numpy as np
    import torch

    from mingpt_c.nn.optim import lr_at
    from mingpt_c.benchmarks.torch_gpt import TorchGPT

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    text = DATA.read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], np.int64)
    n = int(0.9 * len(data))
    train, val = torch.from_numpy(data[:n]), torch.from_numpy(data[n:])
    B, T = 12, 64
    model = TorchGPT(len(chars), T, 4, 4, 128, embd_std=args.embd_init_std)
    opt = model.optimizer(1e-3, 0.1, (0.9, 0.99))

    def batch(d):
        ix = torch.randint(len(d) - T, (B,))
        return torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + 1 + T] for i in ix])

    for it in range(args.iters):
        x, y = batch(train)
        model.train_step(opt, x, y, lr_at(it, 1e-3, 1e-4, 100, args.iters))
    model.eval()
    with torch.no_grad():
        val_loss = float(np.mean([model(*batch(val)).item() for _ in range(args.eval_iters)]))
    return val_loss, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--embd-init-std", type=float, default=0.05)
    ap.add_argument("--out", default=None, help="run directory for ours [default: a temp dir]")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"Tiny Shakespeare not found at {DATA}")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        v_ours, t_ours = ours(args, out)
        rows = [("mingpt-c", v_ours, t_ours)]
        if not args.no_torch:
            v_t, t_t = pytorch(args)
            rows.append(("pytorch eager", v_t, t_t))
    print(f"\n{'':<14} {'val loss':>9} {'wall s':>8}")
    for name, v, t in rows:
        print(f"{name:<14} {v:>9.4f} {t:>8.1f}")
    if len(rows) == 2 and not math.isnan(rows[1][2]):
        print(f"speed ratio (pytorch wall / ours): {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()
