"""The encoder and the ViT on the GPU against the same models on the CPU:
50 training steps in fp32 step for step (every pooling, the masked-LM head,
dropout), bf16 following the fp32 curve, checkpoints crossing devices
(train on the GPU through the CLI, evaluate on the CPU; a ViT run resumed on
the GPU and back), and the one-line errors of --device cuda where there is
no GPU (these run everywhere, CI included)."""
import json

import numpy as np
import pytest

from conftest import invoke, one_line_error
from mingpt_c import cuda
from mingpt_c.device import Device, to_host
from mingpt_c.errors import IndexRangeError
from mingpt_c.encoder.model import Encoder, EncoderConfig
from mingpt_c.vit.model import ViT, ViTConfig
from mingpt_c.nn.optim import AdamW

from .conftest import gpu, same_bits

IGNORE = -100
TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 40

# ------------------------------------------------------------------ encoder


def _encoder_batch(rng, T: int):
    """4 rows of T tokens in [5, 41), two of them padded (token 0)."""
    x = rng.integers(5, 41, (4, T)).astype(np.int32)
    mask = np.ones((4, T), np.int32)
    mask[1, T - 5:] = 0
    mask[3, 4:] = 0
    x[mask == 0] = 0
    return x, mask


def _encoder_run(device: Device, steps: int, task: str, dropout: float = 0.0, pooling: str = "mean"):
    """(losses, model) of `steps` AdamW steps of a tiny encoder memorising two
    batches of different lengths: classification (task "cls", with pooling)
    or masked LM ("mlm", fresh masks each step; token types and bigram
    embeddings too)."""
    cfg = EncoderConfig(vocab_size=41, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout,
                        pooling=pooling, mlm_head=task == "mlm", num_labels=3 if task == "cls" else 0,
                        bigram_buckets=16 if task == "mlm" else 0)
    model = Encoder(cfg, seed=3, device=device)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.98, 1e-8, 0.01, 1.0)
    rng = np.random.default_rng(0)
    data = [_encoder_batch(rng, 16), _encoder_batch(rng, 11)]   # two shapes: buffers are remade
    labels = [np.array([0, 1, 2, 1], np.int32), np.array([2, 2, 0, 1], np.int32)]
    out = []
    for it in range(steps):
        x, mask = data[it % 2]
        model.zero_grad()
        if task == "cls":
            out.append(model.classify(x, mask, labels[it % 2], train=True, seed=it)[1])
        else:
            y = np.full_like(x, IGNORE)
            pick = (rng.random(x.shape) < 0.3) & (mask == 1)
            y[pick] = x[pick]
            inp = np.where(pick, 4, x).astype(np.int32)   # 4: the mask token
            types = (np.arange(x.shape[1]) >= 6).astype(np.int32)[None].repeat(4, 0)   # two segments
            out.append(model.mlm(inp, mask, y, train=True, seed=it, types=types))
        model.backward()
        opt.step(model.grads, 3e-3)
    return out, model


@gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("task,pooling", [("cls", "mean"), ("cls", "cls"), ("cls", "max"), ("mlm", "cls")])
def test_encoder_fp32_training_matches_cpu(task, pooling, dropout):
    cpu, cpu_model = _encoder_run(Device("cpu"), 50, task, dropout, pooling)
    gpu_, gpu_model = _encoder_run(Device("cuda", "fp32"), 50, task, dropout, pooling)
    np.testing.assert_allclose(gpu_, cpu, rtol=1e-4)
    assert cpu[-1] < cpu[0] - 0.5   # it learned something
    if dropout:   # the masks of the last step: the same bits on both devices
        a, b = cpu_model._acts, gpu_model._acts
        assert same_bits(a.x0_mask, b.x0_mask)
        assert same_bits(a.blocks[-1].drop2, b.blocks[-1].drop2)


@gpu
def test_encoder_ids_are_checked_before_the_upload():
    cfg = EncoderConfig(vocab_size=41, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                        num_labels=3)
    model = Encoder(cfg, device=Device("cuda", "fp32"))
    x, mask = _encoder_batch(np.random.default_rng(0), 8)
    bad = x.copy()
    bad[0, 2] = 41
    with pytest.raises(IndexRangeError, match="tokens contains 41"):
        model.classify(bad, mask)
    with pytest.raises(IndexRangeError, match="targets contains 3"):
        model.classify(x, mask, np.array([0, 1, 3, 2], np.int32))
    logits, loss = model.classify(x, mask, np.array([0, 1, 2, 2], np.int32))   # still usable
    assert isinstance(logits, np.ndarray) and logits.shape == (4, 3) and np.isfinite(loss)


@gpu
def test_encoder_fp32_training_is_deterministic():
    run = lambda: _encoder_run(Device("cuda", "fp32"), 10, "cls", 0.1)[0]
    assert run() == run()


def _encoder_text_losses(device: Device, steps: int) -> np.ndarray:
    """Masked-LM losses on fresh windows of a character text: the loss falls
    from 4.2 to about 3 and stays a real prediction loss."""
    cfg = EncoderConfig(vocab_size=67, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = Encoder(cfg, seed=3, device=device)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.98, 1e-8, 0.01, 1.0)
    rng = np.random.default_rng(0)
    chars = np.frombuffer(TEXT.encode(), np.uint8).astype(np.int32) % 62 + 5
    out = []
    for it in range(steps):
        x = np.stack([chars[o:o + 16] for o in rng.integers(0, len(chars) - 17, 8)])
        pick = rng.random(x.shape) < 0.25
        y = np.where(pick, x, IGNORE).astype(np.int32)
        model.zero_grad()
        out.append(model.mlm(np.where(pick, 4, x).astype(np.int32), np.ones_like(x), y, train=True, seed=it))
        model.backward()
        opt.step(model.grads, 3e-3)
    return np.array(out)

# ------------------------------------------------------------------ ViT


def _vit_run(device: Device, steps: int, dropout: float = 0.0, smoothing: float = 0.0):
    """(losses, model) of `steps` AdamW steps of a tiny RGB ViT memorising
    two batches of different sizes."""
    cfg = ViTConfig(image_size=12, patch_size=4, num_channels=3, num_classes=5, n_layer=2, n_head=4,
                    n_embd=32, dropout=dropout)
    model = ViT(cfg, seed=3, device=device)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.99, 1e-8, 0.05, 1.0)
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(B, 3, 12, 12)).astype(np.float32), rng.integers(0, 5, B).astype(np.int32))
            for B in (6, 4)]
    out = []
    for it in range(steps):
        x, y = data[it % 2]
        model.zero_grad()
        out.append(model.forward(x, y, train=True, seed=it, label_smoothing=smoothing))
        model.backward()
        opt.step(model.grads, 3e-3)
    return out, model


@gpu
@pytest.mark.parametrize("dropout,smoothing", [(0.0, 0.0), (0.1, 0.1)])
def test_vit_fp32_training_matches_cpu(dropout, smoothing):
    cpu, cpu_model = _vit_run(Device("cpu"), 50, dropout, smoothing)
    gpu_, gpu_model = _vit_run(Device("cuda", "fp32"), 50, dropout, smoothing)
    np.testing.assert_allclose(gpu_, cpu, rtol=1e-4)
    assert cpu[-1] < cpu[0] - 0.5
    if dropout:
        a, b = cpu_model._acts, gpu_model._acts
        assert same_bits(a.emb_mask, b.emb_mask)
        assert same_bits(a.last.rest.drop1, b.last.rest.drop1)
    x = np.random.default_rng(1).normal(size=(3, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(to_host(gpu_model.forward(x)), cpu_model.forward(x), rtol=1e-3, atol=1e-4)
    got, want = gpu_model.attentions(), cpu_model.attentions()
    assert all(isinstance(a, np.ndarray) for a in got) and len(got) == len(want) == 2
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-3, atol=1e-5)


def _vit_quadrant_losses(device: Device, steps: int) -> np.ndarray:
    """Losses on fresh batches of noise images whose class is the brighter
    quadrant, a fifth of the labels redrawn at random: from 1.39 to about
    1.1, a real prediction loss (its floor is about 0.6). The learning rate
    is low enough that the curve is smooth: at 1e-3 the moment the model
    finds the signal moves with the rounding, and bf16 strays 5% from fp32."""
    cfg = ViTConfig(image_size=12, patch_size=4, num_channels=1, num_classes=4, n_layer=2, n_head=2,
                    n_embd=32)
    model = ViT(cfg, seed=3, device=device)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.99, 1e-8, 0.05, 1.0)
    rng = np.random.default_rng(3)
    out = []
    for it in range(steps):
        x = rng.normal(size=(64, 1, 12, 12)).astype(np.float32)
        y = rng.integers(0, 4, 64)
        for q in range(4):
            r, c = divmod(q, 2)
            x[y == q, :, 6 * r:6 * r + 6, 6 * c:6 * c + 6] += 1.0
        y = np.where(rng.random(64) < 0.2, rng.integers(0, 4, 64), y).astype(np.int32)
        model.zero_grad()
        out.append(model.forward(x, y, train=True, seed=it))
        model.backward()
        opt.step(model.grads, 3e-4)
    return np.array(out)


@gpu
def test_vit_fp32_training_is_deterministic():
    run = lambda: _vit_run(Device("cuda", "fp32"), 10, 0.1)[0]
    assert run() == run()


@gpu
@pytest.mark.parametrize("dtype", ["tf32", "bf16"])
@pytest.mark.parametrize("family", ["encoder", "vit"])
def test_reduced_precision_follows_fp32(family, dtype):
    losses, fall = {"encoder": (_encoder_text_losses, 0.5), "vit": (_vit_quadrant_losses, 0.1)}[family]
    ref = losses(Device("cuda", "fp32"), 50)
    low = losses(Device("cuda", dtype), 50)
    assert ref[-5:].mean() < ref[:5].mean() - fall   # it learns, and the loss stays well above 0
    assert not np.array_equal(low, ref)   # the mode took effect
    assert np.all(np.abs(low - ref) <= 0.02 * ref), np.max(np.abs(low - ref) / ref)

# ------------------------------------------------------------------ CLI

ENC_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "300", "--batch-size", "4",
            "--warmup-iters", "2", "--no-progress", "--max-len", "16"]
WORDS = {"pos": "good great fine lovely", "neg": "bad awful poor dull", "mid": "plain average so so"}
VIT_TINY = ["--patch-size", "7", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "32",
            "--train-limit", "640", "--eval-limit", "200", "--warmup-iters", "5", "--no-progress"]
GPU_FP32 = ["--device", "cuda", "--dtype", "fp32"]


def _encoder_data(d):
    rows = [{"text": f"this film was {WORDS[lab].split()[i % 4]} really {WORDS[lab].split()[(i + 1) % 4]}",
             "label": lab} for i in range(12) for lab in WORDS]
    for name, part in (("train.jsonl", rows), ("test.jsonl", rows[:9])):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    return d / "train.jsonl", d / "test.jsonl"


@gpu
def test_encoder_train_on_gpu_eval_on_cpu(tmp_path):
    train, test = _encoder_data(tmp_path)
    run = tmp_path / "run"
    res = invoke("encoder", "train", "--train", train, "--val", test, "--out", run, "--epochs", "3",
                 *ENC_TINY, *GPU_FP32)
    assert res.exit_code == 0, res.stderr
    assert "device:" in res.stderr
    best = json.loads((run / "best" / "train_state.json").read_text())["best_val_accuracy"]
    on_cpu = invoke("encoder", "eval", run, test, "--json")
    on_gpu = invoke("encoder", "eval", run, test, "--json", *GPU_FP32)
    assert on_cpu.exit_code == 0 and on_gpu.exit_code == 0, on_gpu.stderr
    r_cpu, r_gpu = json.loads(on_cpu.output), json.loads(on_gpu.output)
    assert r_cpu["accuracy"] == r_gpu["accuracy"] == best   # the metric the GPU run saw
    assert r_cpu["confusion"] == r_gpu["confusion"]
    texts = ["this film was great really good", "so so"]
    p_cpu = invoke("encoder", "predict", run, *texts)
    p_gpu = invoke("encoder", "predict", run, *texts, *GPU_FP32)
    assert p_cpu.exit_code == 0 and p_gpu.exit_code == 0, p_gpu.stderr

    def probs(res):
        return [[float(p.split("=")[1]) for p in line.split("\t")[1].split()]
                for line in res.output.strip().splitlines()]
    assert [ln.split("\t")[0] for ln in p_cpu.output.splitlines()] == \
        [ln.split("\t")[0] for ln in p_gpu.output.splitlines()]
    np.testing.assert_allclose(probs(p_gpu), probs(p_cpu), atol=2e-4)


@gpu
def test_encoder_pretrain_on_gpu_fine_tune_on_cpu(tmp_path):
    train, test = _encoder_data(tmp_path)
    pre = tmp_path / "pre"
    res = invoke("encoder", "pretrain", train, "--out", pre, "--max-iters", "8", *ENC_TINY, *GPU_FP32)
    assert res.exit_code == 0, res.stderr
    res = invoke("encoder", "train", "--train", train, "--init-from", pre, "--out", tmp_path / "ft",
                 "--max-iters", "6", *ENC_TINY)
    assert res.exit_code == 0, res.stderr
    assert "init:" in res.stderr


@gpu
def test_vit_train_on_gpu_eval_on_cpu(tmp_path):
    run = tmp_path / "run"
    res = invoke("vit", "train", "--out", run, "--epochs", "2", "--max-iters", "30", "--lr", "3e-3",
                 "--label-smoothing", "0.1", *VIT_TINY, *GPU_FP32)
    assert res.exit_code == 0, res.stderr
    assert "device:" in res.stderr
    acc = json.loads((run / "latest" / "train_state.json").read_text())["test_accuracy"]
    on_cpu = invoke("vit", "eval", run, "--limit", "200")
    on_gpu = invoke("vit", "eval", run, "--limit", "200", *GPU_FP32)
    assert on_cpu.exit_code == 0 and on_gpu.exit_code == 0, on_gpu.stderr
    metric = lambda r: r.output.split("accuracy ")[1].split("%")[0]
    loss = lambda r: float(r.output.split("loss ")[1].split()[0])
    assert metric(on_cpu) == metric(on_gpu) == f"{100 * acc:.2f}"   # the GPU run's test accuracy
    assert abs(loss(on_cpu) - loss(on_gpu)) <= 1e-4 * loss(on_cpu) + 1e-4


@gpu
def test_vit_resume_switches_device(tmp_path):
    def evals(run):   # iteration -> (test loss, test accuracy)
        return {r["iter"]: (r["test_loss"], r["test_accuracy"]) for r in map(json.loads, open(run / "log.jsonl"))
                if r["type"] == "eval"}

    ref, mixed = tmp_path / "ref", tmp_path / "mixed"
    common = ["--epochs", "2", *VIT_TINY]
    assert invoke("vit", "train", "--out", ref, "--max-iters", "30", *common).exit_code == 0
    assert invoke("vit", "train", "--out", mixed, "--max-iters", "10", *common).exit_code == 0
    res = invoke("vit", "train", "--out", mixed, "--resume", "--max-iters", "20", *GPU_FP32, "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert "device:" in res.stderr
    res = invoke("vit", "train", "--out", mixed, "--resume", "--max-iters", "30", "--device", "cpu",
                 "--no-progress")
    assert res.exit_code == 0, res.stderr
    want, got = evals(ref), evals(mixed)
    for it in (20, 30):   # an epoch's end (on the GPU) and the end
        np.testing.assert_allclose(got[it][0], want[it][0], rtol=1e-4)
        assert got[it][1] == want[it][1]


# ------------------------------------------------------------------ no GPU (CI)


@pytest.mark.skipif(cuda.available(), reason="a GPU is here: the no-GPU message is not shown")
@pytest.mark.parametrize("cmd", ["encoder train", "encoder pretrain", "encoder eval", "encoder predict",
                                 "vit train", "vit eval", "vit predict"])
def test_device_cuda_without_gpu_is_one_line(cmd, tmp_path):
    train, test = _encoder_data(tmp_path)
    new = tmp_path / "new"
    args = {"encoder train": ["--train", train, "--out", new, *ENC_TINY],
            "encoder pretrain": [train, "--out", new, *ENC_TINY],
            "encoder eval": [tmp_path / "ckpt", test],
            "encoder predict": [tmp_path / "ckpt", "a text"],
            "vit train": ["--out", new, "--max-iters", "1", *VIT_TINY],
            "vit eval": [tmp_path / "ckpt"],
            "vit predict": [tmp_path / "ckpt", tmp_path / "image.png"]}[cmd]
    res = invoke(*cmd.split(), *args, "--device", "cuda")
    line = one_line_error(res)
    assert "cuda" in line.lower() or "gpu" in line.lower()
    assert not (new / "latest").exists()
