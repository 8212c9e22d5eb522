"""The behaviours every training command gets from the run scaffold
(mingpt_c.run.scaffold), checked the same way for each family through the
CLI: the non-finite policy, --seed reaching the dropout masks, --resume bit
for bit (the saved configuration wins), a contradicting option refused,
best/ and latest/, --ema's weight average, and 2 MPI ranks equal to 1 rank
with the doubled batch.
tests/<family>/test_<family>_run.py run them for their family."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conftest import ROOT, assert_close, invoke, one_line_error

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 8
WORDS = {"pos": "good great fine lovely", "neg": "bad awful poor dull", "mid": "plain average so so"}
TIMING = ("tokens_per_s", "images_per_s", "seconds", "elapsed_s")


@dataclass
class Family:
    name: str
    head: list            # the command and its data ("{data}" stands for the data folder)
    tiny: list            # a tiny model, run and schedule (every family: --lr, --log-interval 1)
    model: tuple          # (module, class, the method whose train=True call returns the loss)
    best_key: str | None  # the train state's best metric
    resume_head: list = field(default_factory=list)   # what --resume needs besides --out (the encoder: --train)
    longer: tuple = ("--max-iters", "40")              # a resumed run that goes on for longer
    same: tuple = ("--n-layer", "1")                   # an option given again on --resume with its saved value

    def argv(self, data: Path, *more) -> list:
        return [str(a).replace("{data}", str(data)) for a in (*self.head, *self.tiny, *more)]

    def resume_argv(self, data: Path, out: Path, *more) -> list:
        head = [str(a).replace("{data}", str(data)) for a in self.resume_head]
        return [*head, "--out", out, "--resume", *more]


COMMON = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--log-interval", "1", "--threads", "1",
          "--no-progress", "--warmup-iters", "2"]

FAMILIES = {
    "gpt": Family("gpt", ["train", "{data}/text.txt"],
                  [*COMMON, "--block-size", "16", "--batch-size", "2", "--max-iters", "6", "--lr-decay-iters", "6",
                   "--eval-interval", "3", "--eval-iters", "1", "--dropout", "0.1"],
                  ("mingpt_c.gpt.model", "GPT", "forward"), "best_val", ["train"]),
    "encoder": Family("encoder", ["encoder", "train", "--train", "{data}/train.jsonl", "--val", "{data}/val.jsonl"],
                      [*COMMON, "--max-len", "16", "--vocab-size", "300", "--batch-size", "6", "--epochs", "2",
                       "--dropout", "0.1"],
                      ("mingpt_c.encoder.model", "Encoder", "classify"), "best_val_accuracy",
                      ["encoder", "train", "--train", "{data}/train.jsonl"]),
    "vit": Family("vit", ["vit", "train"],
                  [*COMMON, "--patch-size", "7", "--batch-size", "16", "--train-limit", "64", "--eval-limit", "32",
                   "--epochs", "2", "--dropout", "0.1"],
                  ("mingpt_c.vit.model", "ViT", "forward"), "best_test_accuracy", ["vit", "train"],
                  ("--epochs", "10")),
    "seq2seq": Family("seq2seq", ["seq2seq", "train", "--train", "{data}/pairs.tsv", "--val", "{data}/pairs.tsv"],
                      ["--enc-layers", "1", "--dec-layers", "1", "--n-head", "2", "--n-embd", "16", "--log-interval",
                       "1", "--threads", "1", "--no-progress", "--warmup-iters", "2", "--batch-size", "8",
                       "--epochs", "2", "--dropout", "0.1", "--eval-limit", "4"],
                      ("mingpt_c.seq2seq.model", "Seq2Seq", "loss"), "best_val_loss", ["seq2seq", "train"],
                      ("--epochs", "10"), ("--enc-layers", "1")),
}


def write_data(d: Path) -> Path:
    """The GPT's text, the encoder's JSON Lines and the seq2seq's pairs
    (words -> their letters reversed) in d (the ViT's shapes are generated)."""
    (d / "text.txt").write_text(TEXT)
    rows = [{"text": f"this film was {WORDS[lab].split()[i % 4]} really {WORDS[lab].split()[(i + 1) % 4]}",
             "label": lab} for i in range(12) for lab in WORDS]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))
    words = sorted(set(TEXT.lower().replace(",", " ").replace(".", " ").replace(":", " ").replace("?", " ").split()))
    (d / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words))
    return d

# ------------------------------------------------------------------ helpers


def run(*args):
    return invoke(*args, catch_exceptions=False)


def ok(res):
    assert res.exit_code == 0, res.stderr
    return res


def records(out: Path) -> list:
    """log.jsonl without its timings."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in map(json.loads, open(out / "log.jsonl"))]


def weights(ckpt: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def error_at_end(res, *needles) -> str:
    """A run that failed after it started: exit 1, its last line on stderr
    the error naming each needle, no traceback."""
    assert res.exit_code == 1, res.stderr
    assert "Traceback" not in res.output + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, last
    return last


def _model_class(fam: Family):
    import importlib

    mod, cls, method = fam.model
    return getattr(importlib.import_module(mod), cls), method


def poison(monkeypatch, fam: Family, calls=None):
    """The training loss of the given training calls (1-based; None: all) is nan."""
    cls, method = _model_class(fam)
    real, n = getattr(cls, method), [0]

    def wrapped(self, *a, **k):
        out = real(self, *a, **k)
        if not k.get("train"):
            return out
        n[0] += 1
        if calls is None or n[0] in calls:
            return (out[0], float("nan")) if isinstance(out, tuple) else float("nan")
        return out

    monkeypatch.setattr(cls, method, wrapped)


class StopAfter:
    """Stands in for the scaffold's Ctrl-C flag: SIGINT is 'received' at the
    n-th check (the loops check once per step)."""

    signum = signal.SIGINT

    def __init__(self, n):
        self.n, self.checks = n, 0

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.checks += 1
        return self.checks >= self.n

# ------------------------------------------------------------------ the checks


def check_non_finite(fam: Family, data: Path, tmp: Path, monkeypatch) -> None:
    """One non-finite step is skipped and the run goes on; --max-nan-steps
    of them in a row stop the run with one line, latest/ intact."""
    with monkeypatch.context() as m:
        poison(m, fam, calls={2})
        res = ok(run(*fam.argv(data, "--out", tmp / "once")))
    assert "iter 1: non-finite loss or gradient" in res.stderr and "step skipped" in res.stderr
    assert {r["iter"] for r in records(tmp / "once") if r["type"] == "train"} >= {1, 2, 3}
    assert (tmp / "once" / "latest").exists()
    before = weights(tmp / "once" / "latest")
    with monkeypatch.context() as m:
        poison(m, fam)
        res = run(*fam.resume_argv(data, tmp / "once", *fam.longer, "--max-nan-steps", "2"))
    error_at_end(res, "training diverged: 2 non-finite steps in a row", str(tmp / "once" / "latest"))
    after = weights(tmp / "once" / "latest")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def check_seed_reaches_dropout(fam: Family, data: Path, tmp: Path, monkeypatch) -> None:
    """--seed reaches the dropout masks: the same seed draws the same masks
    from the same seeds, another seed draws from other seeds."""
    from mingpt_c import ops

    def masks(name, *seed):
        seen = []
        real = ops.dropout_forward

        def recording(x, p, seed, out=None, mask=None):
            o, msk = real(x, p, seed, out, mask)
            seen.append((int(seed), hashlib.sha256(np.asarray(msk).tobytes()).hexdigest()))
            return o, msk

        with monkeypatch.context() as m:
            m.setattr(ops, "dropout_forward", recording)
            ok(run(*fam.argv(data, "--out", tmp / name, "--max-iters", "2", *seed)))
        assert seen
        return seen

    a, b, c = masks("a", "--seed", "5"), masks("b", "--seed", "5"), masks("c", "--seed", "6")
    assert a == b
    assert not {s for s, _ in a} & {s for s, _ in c}
    assert [h for _, h in a] != [h for _, h in c]


def check_resume_bit_exact(fam: Family, data: Path, tmp: Path, monkeypatch) -> None:
    """A run stopped by SIGINT (exit 130, latest/ saved) and resumed with
    --out and --resume alone (its saved configuration wins) ends on the
    uninterrupted run's weights and log, each iteration logged once, its
    seconds counted on from the first sitting's; the uninterrupted run has
    best/ and latest/."""
    import mingpt_c.run.scaffold as scaffold

    full, cut = tmp / "full", tmp / "cut"
    ok(run(*fam.argv(data, "--out", full)))
    for name in ("best", "latest"):
        st = json.loads((full / name / "train_state.json").read_text())
        assert st["iter"] > 0 and "options" in st and st["global_batch"] > 0
        if fam.best_key:
            assert st[fam.best_key] is not None
    with monkeypatch.context() as m:
        m.setattr(scaffold, "StopFlag", StopAfter(4))
        res = run(*fam.argv(data, "--out", cut))
    assert res.exit_code == 130, res.stderr
    assert "--resume" in res.stderr
    stopped = json.loads((cut / "latest" / "train_state.json").read_text())
    assert stopped["iter"] == 3 and stopped["seconds"] > 0
    ok(run(*fam.resume_argv(data, cut)))
    # the clock goes on from the checkpoint's: the run's seconds over both sittings
    assert json.loads((cut / "latest" / "train_state.json").read_text())["seconds"] > stopped["seconds"]
    assert same_weights(full / "latest", cut / "latest")
    assert records(cut) == records(full)
    its = [r["iter"] for r in records(cut) if r["type"] == "train"]
    assert its == sorted(set(its))


def check_contradicting_flag(fam: Family, data: Path, tmp: Path, monkeypatch) -> None:
    """--resume with an option that contradicts the saved configuration is
    one line naming it; the same value again, or a longer run, is fine."""
    out = tmp / "run"
    ok(run(*fam.argv(data, "--out", out, "--max-iters", "2")))
    one_line_error(run(*fam.resume_argv(data, out, "--lr", "0.5")), "--lr 0.5", "contradicts")
    one_line_error(run(*fam.resume_argv(data, out, "--seed", "99")), "--seed 99", "contradicts")
    ok(run(*fam.resume_argv(data, out, *fam.same, "--max-iters", "3")))
    assert json.loads((out / "latest" / "train_state.json").read_text())["iter"] == 3

def check_weight_average(fam: Family, data: Path, tmp: Path, monkeypatch) -> None:
    """--ema: training is untouched (the same training losses, and the plain
    run's final weights kept beside the moments), while evaluation and
    model.safetensors see the average; a run stopped and resumed ends on
    the uninterrupted run's average, training weights and log."""
    import importlib

    from safetensors.numpy import load_file

    load = importlib.import_module(f"mingpt_c.{fam.name}.checkpoint").load
    ok(run(*fam.argv(data, "--out", tmp / "plain")))
    averaged = dataclasses.replace(fam, tiny=[*fam.tiny, "--ema", "0.9"])
    check_resume_bit_exact(averaged, data, tmp, monkeypatch)
    full, cut, plain = tmp / "full" / "latest", tmp / "cut" / "latest", tmp / "plain" / "latest"
    trained = load_file(str(full / "optimizer.safetensors"))["params"]
    assert np.array_equal(trained, load(plain)["params"])
    assert np.array_equal(trained, load_file(str(cut / "optimizer.safetensors"))["params"])
    assert np.abs(load(full)["params"] - trained).max() > 1e-6
    assert "params" not in load_file(str(plain / "optimizer.safetensors"))
    runs = {name: records(tmp / name) for name in ("plain", "full")}
    assert [r for r in runs["full"] if r["type"] == "train"] == [r for r in runs["plain"] if r["type"] == "train"]
    losses = {name: [(r["iter"], k, v) for r in recs if r["type"] == "eval" and r["iter"] > 0
                     for k, v in r.items() if k.endswith("loss")] for name, recs in runs.items()}
    assert len(losses["full"]) == len(losses["plain"]) > 0
    for (it, k, v), (_, _, w) in zip(losses["full"], losses["plain"]):
        assert v != w, (it, k)

# ------------------------------------------------------------------ MPI

MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")


def mpi_missing() -> str | None:
    if shutil.which("mpiexec") is None:
        return "mpiexec not found (install Open MPI)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    return None


def cli(n: int, *args, timeout=180):
    """`mingpt ARGS` in n MPI ranks (n = 1: a plain process)."""
    cmd = [sys.executable, str(ROOT / "cli.py"), *[str(a) for a in args]]
    if n > 1:
        cmd = ["mpiexec", "-n", str(n), "--oversubscribe", *cmd]
    r = subprocess.run(cmd, env=MPI_ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def train_losses(out: Path) -> dict:
    return {r["iter"]: r["loss"] for r in records(out) if r["type"] == "train"}


def check_mpi_equals_double_batch(fam: Family, data: Path, tmp: Path, batch: int, *more) -> None:
    """2 ranks of batch B train as 1 rank of batch 2B: the same losses at
    every iteration and the same weights, to float rounding."""
    one, two = tmp / "one", tmp / "two"
    cli(1, *fam.argv(data, "--out", one, "--batch-size", 2 * batch, "--dropout", "0", *more))
    cli(2, *fam.argv(data, "--out", two, "--batch-size", batch, "--dropout", "0", *more))
    l1, l2 = train_losses(one), train_losses(two)
    assert sorted(l1) == sorted(l2) and len(l1) >= 4
    assert_close([l2[k] for k in sorted(l2)], [l1[k] for k in sorted(l1)], rtol=1e-5, atol=0)
    w1, w2 = weights(one / "latest"), weights(two / "latest")
    scale = max(np.abs(w).max() for w in w1.values())
    for k in w1:
        if k.endswith(("k_proj.bias", "key.bias")):
            # a key's bias shifts a query's scores alike, which the softmax
            # cancels: its true gradient is 0 and only float rounding (which
            # Adam scales up to lr-sized steps) moves it; 1 and 2 ranks round apart
            continue
        assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5 * scale, what=k)
    st = json.loads((two / "latest" / "train_state.json").read_text())
    assert st["world_size"] == 2 and st["global_batch"] == 2 * batch


CHECKS = {"non_finite": check_non_finite, "seed_reaches_dropout": check_seed_reaches_dropout,
          "resume_bit_exact": check_resume_bit_exact, "contradicting_flag": check_contradicting_flag,
          "weight_average": check_weight_average}


def behaviour_test(family: str):
    """The scaffold's behaviours as one parametrized test for a family's
    module: `test_run_behaviour = behaviour_test("vit")`."""
    import pytest

    @pytest.mark.parametrize("check", list(CHECKS))
    def test_run_behaviour(check, tmp_path, monkeypatch):
        data = write_data(tmp_path)
        CHECKS[check](FAMILIES[family], data, tmp_path, monkeypatch)
    return test_run_behaviour
