"""Golden runs: a few steps of a tiny GPT (with a sample), encoder and ViT
through the CLI, reduced to what must not change when code moves around:
every logged loss, a hash of the saved weights, the sampled text.

The bits depend on the vector path (AVX-512, AVX2 or portable), so the
recorded values are kept per path (tests/golden/runs.json); the runs use one
thread. `python tests/golden_runs.py` records this machine's path."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
GOLDEN = HERE / "golden" / "runs.json"

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 8
WORDS = {"pos": "good great fine lovely", "neg": "bad awful poor dull", "mid": "plain average so so"}


def _weights_hash(ckpt: Path) -> str:
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    tensors = load_file(str(ckpt / "model.safetensors"))
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].tobytes())
    return h.hexdigest()


def _losses(run: Path) -> list:
    return [{k: v for k, v in r.items() if "loss" in k or "acc" in k or k in ("iter", "type")}
            for r in map(json.loads, open(run / "log.jsonl")) if r["type"] != "train" or "loss" in r]


def _ok(res):
    assert res.exit_code == 0, res.stderr
    return res


def gpt_run(tmp: Path) -> dict:
    from conftest import invoke

    (tmp / "text.txt").write_text(TEXT)
    run = tmp / "gpt"
    _ok(invoke("train", tmp / "text.txt", "--out", run, "--max-iters", "6", "--n-layer", "2", "--n-head", "2",
               "--n-embd", "16", "--block-size", "16", "--batch-size", "3", "--dropout", "0.1",
               "--eval-interval", "3", "--eval-iters", "2", "--log-interval", "1", "--threads", "1",
               "--no-progress"))
    sample = _ok(invoke("sample", run, "--prompt", "First", "--max-new-tokens", "30", "--seed", "7",
                        "--threads", "1")).output
    return {"losses": _losses(run), "weights": _weights_hash(run / "latest"), "sample": sample}


def encoder_run(tmp: Path) -> dict:
    from conftest import invoke

    rows = [{"text": f"this film was {WORDS[lab].split()[i % 4]} really {WORDS[lab].split()[(i + 1) % 4]}",
             "label": lab} for i in range(12) for lab in WORDS]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))
    run = tmp / "encoder"
    _ok(invoke("encoder", "train", "--train", tmp / "train.jsonl", "--val", tmp / "val.jsonl", "--out", run,
               "--epochs", "2", "--max-len", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
               "--vocab-size", "300", "--batch-size", "4", "--warmup-iters", "2", "--threads", "1",
               "--no-progress"))
    return {"losses": _losses(run), "weights": _weights_hash(run / "latest")}


def vit_run(tmp: Path) -> dict:
    from conftest import invoke

    run = tmp / "vit"
    _ok(invoke("vit", "train", "--out", run, "--epochs", "1", "--max-iters", "6", "--patch-size", "7",
               "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "16", "--train-limit",
               "96", "--eval-limit", "32", "--warmup-iters", "2", "--threads", "1", "--no-progress"))
    return {"losses": _losses(run), "weights": _weights_hash(run / "latest")}


RUNS = {"gpt": gpt_run, "encoder": encoder_run, "vit": vit_run}


def simd() -> str:
    from mingpt_c._lib import build_info

    return build_info()["simd"]


if __name__ == "__main__":
    import tempfile

    import conftest  # noqa: F401  (paths, offline tokenizer files)

    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for name, fn in RUNS.items():
            d = Path(tmp) / name
            d.mkdir()
            out[name] = fn(d)
    recorded[simd()] = out
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"recorded the golden runs for the {simd()} path in {GOLDEN}")
