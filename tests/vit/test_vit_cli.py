"""`mingpt vit` end to end on the generated data set (no download): train,
resume, eval; and bad input answered by one clear line, exit code 1, no
traceback."""
import gzip
import json

import numpy as np

from conftest import invoke, one_line_error

TINY = ["--patch-size", "7", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "32",
        "--train-limit", "640", "--eval-limit", "200", "--warmup-iters", "5", "--no-progress"]


def run(*args):
    return invoke(*args, catch_exceptions=True)


def test_train_resume_eval_on_generated_shapes(tmp_path):
    out = tmp_path / "run"
    r = run("vit", "train", "--out", out, "--epochs", 2, "--max-iters", 30, "--crop-pad", 2,
            "--label-smoothing", 0.1, "--lr", 3e-3, *TINY)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    evals = [x for x in recs if x["type"] == "eval"]
    assert evals and evals[-1]["test_accuracy"] > 0.2   # 8 classes: chance is 0.125
    assert (out / "curves.png").exists() and (out / "latest" / "model.safetensors").exists()
    cfg = json.loads((out / "latest" / "config.json").read_text())
    assert cfg["model_type"] == "vit" and cfg["id2label"]["0"] == "disc"
    r = run("vit", "train", "--out", out, *TINY)
    one_line_error(r, "already holds a run")
    r = run("vit", "train", "--out", out, "--resume", "--max-iters", 40, "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "latest" / "train_state.json").read_text())["iter"] == 40
    r = run("vit", "eval", out)
    assert r.exit_code == 0, r.output
    assert "generated shapes" in r.output and "disc" in r.output


def test_resume_matches_uninterrupted(tmp_path):
    a = tmp_path / "a"
    # stopped mid-epoch (as Ctrl-C does), then resumed: the same weights as one run
    assert run("vit", "train", "--out", a, "--max-iters", 13, "--epochs", 2, *TINY).exit_code == 0
    r = run("vit", "train", "--out", a, "--resume", "--max-iters", 30, "--no-progress")
    assert r.exit_code == 0, r.output
    from mingpt_c.vit import checkpoint as vit_checkpoint
    c = tmp_path / "c"
    assert run("vit", "train", "--out", c, "--max-iters", 30, "--epochs", 2, *TINY).exit_code == 0
    pa = vit_checkpoint.load(a / "latest")["params"]
    pc = vit_checkpoint.load(c / "latest")["params"]
    assert np.array_equal(pa, pc)


def test_image_size_not_divisible_by_patch(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((30, 30), 40 * i, np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    r = run("vit", "train", "--dataset", f"folder:{tmp_path / 'f'}", "--out", tmp_path / "o",
            "--patch-size", "4", "--batch-size", "2", "--no-progress")
    one_line_error(r, "image size 30 is not divisible by the patch size 4")


def test_empty_folder_and_empty_class(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run("vit", "train", "--dataset", f"folder:{tmp_path / 'empty'}", "--out", tmp_path / "o"),
                   "no class sub-folders")
    (tmp_path / "f" / "cat").mkdir(parents=True)
    one_line_error(run("vit", "train", "--dataset", f"folder:{tmp_path / 'f'}", "--out", tmp_path / "o"),
                   "class folder has no images")


def test_wrong_idx_magic(tmp_path):
    for split in ("train", "t10k"):
        raw = (2049).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(1)
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))
    one_line_error(run("vit", "train", "--dataset", f"mnist:{tmp_path}", "--out", tmp_path / "o"),
                   "magic number 2049, expected 2051")


def test_bad_spec_and_wrong_channels(tmp_path):
    one_line_error(run("vit", "train", "--dataset", "mnist", "--out", tmp_path / "o"), "KIND:PATH")
    out = tmp_path / "run"
    assert run("vit", "train", "--out", out, "--max-iters", 3, *TINY).exit_code == 0
    from PIL import Image
    for c in ("x", "y"):
        (tmp_path / "rgb" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "rgb" / c / "0.png")
    one_line_error(run("vit", "eval", out, "--dataset", f"folder:{tmp_path / 'rgb'}"),
                   "3 channel(s), the model takes 1")
    one_line_error(run("vit", "eval", tmp_path / "nope"), "no such checkpoint")
