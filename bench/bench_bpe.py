"""BPE merge training: mingpt-c beside Hugging Face tokenizers' BpeTrainer.

Corpora: Tiny Shakespeare at vocab 4096 and the IMDB train texts (33 MB) at
vocab 32768, both with the GPT-2 byte-level pre-split, min_frequency 2, all
cores for both. Each training runs in a fresh subprocess, so its peak RSS
(ru_maxrss of that process: Python, the corpus in memory, the trainer) is
its own; runs alternate between the two systems and the table shows medians.
The wall time is the training call only (for Shakespeare: from the file
path, reading included, on both sides; for IMDB: from the texts already in
memory). "same" counts HF's tokens that mingpt-c also learned (the tie rules
differ, so the vocabularies need not be identical).

    python bench/bench_bpe.py [--rounds 3] [--imdb-docs N]
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def load_corpus(name: str, imdb_docs: int):
    if name == "shakespeare":
        return DATA / "tinyshakespeare.txt"
    with lzma.open(DATA / "imdb" / "train.jsonl.xz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return texts[:imdb_docs] if imdb_docs else texts


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_ours(corpus, vocab: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from mingpt_c.tokenizers import bpe_train

    bpe_train.codepoint_classes()  # warm the on-disk cache outside the timing, once
    t0 = time.perf_counter()
    if isinstance(corpus, Path):
        tok = bpe_train.train_files([corpus], vocab, pattern="gpt2", min_frequency=2)
    else:
        tok = bpe_train.train(corpus, vocab, pattern="gpt2", min_frequency=2)
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": [b.hex() for b in tok.id_to_bytes]}


def run_hf(corpus, vocab: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    if isinstance(corpus, Path):
        tok.train([str(corpus)], trainer=trainer)
    else:
        tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    wall = time.perf_counter() - t0
    byte_of = _gpt2_unicode_to_byte()
    tokens = [bytes(byte_of[c] for c in s).hex() for s in tok.get_vocab()]
    return {"wall": wall, "tokens": tokens}


def _gpt2_unicode_to_byte() -> dict[str, int]:
    sys.path.insert(0, str(ROOT))
    from mingpt_c.tokenizers.tokenizer import _gpt2_bytes_to_unicode

    return {c: b for b, c in _gpt2_bytes_to_unicode().items()}


def child(system: str, corpus_name: str, vocab: int, imdb_docs: int) -> None:
    corpus = load_corpus(corpus_name, imdb_docs)
    rss_loaded = peak_rss_mb()
    out = (run_ours if system == "ours" else run_hf)(corpus, vocab)
    out.update(rss=peak_rss_mb(), rss_loaded=rss_loaded)
    print(json.dumps(out))


def measure(system: str, corpus_name: str, vocab: int, imdb_docs: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", system, corpus_name, str(vocab),
                        str(imdb_docs)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"{system} on {corpus_name} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--imdb-docs", type=int, default=0, help="first N IMDB reviews (0: all 25,000)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        system, corpus_name, vocab, imdb_docs = args.child
        child(system, corpus_name, int(vocab), int(imdb_docs))
        return
    if not (DATA / "tinyshakespeare.txt").exists():
        raise SystemExit(f"shared data not found at {DATA}")
    import tokenizers

    print(f"cpus {os.cpu_count()}, tokenizers {tokenizers.__version__}, rounds {args.rounds} (medians)")
    header = ("corpus", "vocab", "ours s", "ours MB", "HF s", "HF MB", "HF/ours", "same")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for corpus_name, vocab in (("shakespeare", 4096), ("imdb", 32768)):
        runs: dict[str, list[dict]] = {"ours": [], "hf": []}
        for _ in range(args.rounds):
            for system in ("ours", "hf"):
                runs[system].append(measure(system, corpus_name, vocab, args.imdb_docs))
        wall = {s: statistics.median(r["wall"] for r in runs[s]) for s in runs}
        rss = {s: statistics.median(r["rss"] for r in runs[s]) for s in runs}
        ours_tokens, hf_tokens = set(runs["ours"][0]["tokens"]), set(runs["hf"][0]["tokens"])
        same = f"{len(ours_tokens & hf_tokens)}/{len(hf_tokens)}"
        loaded = statistics.median(r["rss_loaded"] for r in runs["ours"])
        print(f"| {corpus_name} | {vocab} | {wall['ours']:.3f} | {rss['ours']:.0f} | "
              f"{wall['hf']:.3f} | {rss['hf']:.0f} | {wall['hf'] / wall['ours']:.1f}x | "
              f"{same} |", flush=True)
        print(f"  (RSS with the corpus loaded, before training: {loaded:.0f} MB; "
              f"ours {len(ours_tokens)} tokens, HF {len(hf_tokens)})", file=sys.stderr)


if __name__ == "__main__":
    main()
