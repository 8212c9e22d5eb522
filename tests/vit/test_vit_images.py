"""Image files as a user has them: 16-bit samples rescaled (not clipped at
255), and an image the model cannot take named by what it is."""
import numpy as np
from PIL import Image

from conftest import ROOT, invoke, one_line_error
from mingpt_c.vit import images as imgs

FIXTURE = ROOT / "tests" / "fixtures" / "vit_mnist"


def test_sixteen_bit_images_are_rescaled(tmp_path):
    a = (np.arange(28 * 28).reshape(28, 28) * 83).astype(np.uint16)   # up to 65,053
    Image.fromarray(a).save(tmp_path / "g16.png")
    im = Image.open(tmp_path / "g16.png")
    assert im.mode.startswith("I")
    got = imgs.image_array(im, 1)[0]
    want = np.round(a.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(got, want) and got.max() > 250   # clipping would give 255 almost everywhere
    assert (got < 255).mean() > 0.9


def test_rgba_is_called_rgba(tmp_path):
    Image.new("RGBA", (28, 28)).save(tmp_path / "rgba.png")
    line = one_line_error(invoke("vit", "predict", FIXTURE, tmp_path / "rgba.png"))
    assert "RGBA" in line and "4 channels" in line and "--convert" in line


def test_mnist_starts_from_its_recipe(tmp_path):
    import json

    from conftest import DATA
    if not (DATA / "mnist").is_dir():
        import pytest
        pytest.skip("MNIST is not in ../shared/data")
    out = tmp_path / "run"
    res = invoke("vit", "train", "--dataset", f"mnist:{DATA / 'mnist'}", "--out", out, "--max-iters", "1",
                 "--train-limit", "64", "--eval-limit", "16", "--epochs", "3", "--n-layer", "1", "--n-embd", "16",
                 "--batch-size", "16",
                 "--n-head", "2", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert "recipe: mnist (--patch-size 7 --lr 0.001" in res.stderr and "--epochs" not in res.stderr.split(
        "recipe:")[1].splitlines()[0]   # the given --epochs wins
    cfg = json.loads((out / "run_config.json").read_text())
    assert (cfg["patch_size"], cfg["crop_pad"], cfg["label_smoothing"], cfg["epochs"]) == (7, 2, 0.1, 3)
