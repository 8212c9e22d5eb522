"""Attention rollout: the algebra on hand-made attentions, and on a small
ViT trained here on MNIST for a few hundred steps, the class token's map
puts more of its mass on the digit's strokes than their share of the image
(an untrained model does not). Then the CLI's eval, predict and attention
commands on that model."""
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import data_file
from mingpt_c import images as imgs
from mingpt_c import vit_checkpoint
from mingpt_c.model.vit import ViT
from mingpt_c.vit_attention import cls_maps, rollout
from mingpt_c.vit_train import ViTTrainConfig, train


def test_rollout_algebra(rng):
    T = 5
    eye = np.broadcast_to(np.eye(T), (2, 3, T, T)).astype(np.float32)
    assert np.allclose(rollout([eye, eye]), np.eye(T))
    a = rng.random((1, 2, T, T))
    a /= a.sum(-1, keepdims=True)
    b = rng.random((1, 2, T, T))
    b /= b.sum(-1, keepdims=True)
    A = (a.mean(1)[0] + np.eye(T)) / 2
    Bm = (b.mean(1)[0] + np.eye(T)) / 2
    R = rollout([a, b])[0]
    assert np.allclose(R, Bm @ A)
    assert np.allclose(R.sum(-1), 1.0)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    d = data_file("mnist")
    out = tmp_path_factory.mktemp("vit") / "run"
    tc = ViTTrainConfig(out=str(out), dataset=f"mnist:{d}", patch_size=4, n_layer=2, n_head=4, n_embd=32,
                        batch_size=64, train_limit=16000, max_iters=300, warmup_iters=30, lr=2e-3,
                        eval_limit=1000, progress=False)
    res = train(tc, log=lambda m: None)
    return d, out, res


def stroke_mass(model, data):
    """Per image: the rollout mass on stroke patches and their share of patches."""
    cfg = model.cfg
    x = imgs.Normalizer(cfg.image_mean, cfg.image_std)(data.images)
    maps, _ = cls_maps(model, x)                                         # (B, g, g), sums to 1
    P, g = cfg.patch_size, cfg.grid
    ink = data.images[:, 0].reshape(-1, g, P, g, P).mean((2, 4))          # (B, g, g) mean pixel
    stroke = ink > 40
    return (maps * stroke).sum((1, 2)), stroke.mean((1, 2))


def test_attention_on_strokes(mnist_run):
    d, out, res = mnist_run
    assert res["test_accuracy"] > 0.85
    loaded = vit_checkpoint.load(out / "latest")
    test = imgs.read_idx_split(d, "t10k", [str(i) for i in range(10)], "mnist").subset(slice(1000, 1200))
    mass, share = stroke_mass(ViT(loaded["cfg"], loaded["params"]), test)
    assert mass.mean() > share.mean() + 0.1, (mass.mean(), share.mean())
    assert (mass > share).mean() > 0.9
    # an untrained model spreads its attention evenly: no such effect
    mass0, share0 = stroke_mass(ViT(loaded["cfg"], seed=0), test)
    assert abs(mass0.mean() - share0.mean()) < 0.05


def one_line_error(res, *needles):
    assert res.exit_code != 0
    err = res.stderr.strip()
    assert "Traceback" not in res.output + res.stderr
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_cli_eval_predict_attention(mnist_run, tmp_path):
    from PIL import Image

    from cli import main

    d, out, _ = mnist_run
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a])
    r = run("vit", "eval", out, "--dataset", f"mnist:{d}", "--limit", 500)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "confusion matrix" in r.output
    test = imgs.read_idx_split(d, "t10k", [str(i) for i in range(10)], "mnist")
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(test.images[i, 0]).save(p)
        paths.append(p)
    r = run("vit", "predict", out, *paths, "--top-k", 2)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 and all("%" in line for line in lines)
    assert lines[0].split(": ")[1].startswith("7 ")   # the first test digit is a 7
    r = run("vit", "attention", out, paths[0], "--out", tmp_path / "map.png")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "map.png").size[0] > 100
    # bad inputs: one line each
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(rgb)
    one_line_error(run("vit", "predict", out, rgb), "RGB", "--convert")
    assert run("vit", "predict", out, rgb, "--convert").exit_code == 0
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(odd)
    one_line_error(run("vit", "predict", out, odd), "30x30", "not divisible by the patch size 4")
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    one_line_error(run("vit", "attention", out, txt, "--out", tmp_path / "x.png"), "not an image")
    one_line_error(run("vit", "predict", out, tmp_path / "missing.png"), "no such file")
