"""The encoder-decoder on the GPU against the same model on the CPU: the
loss and every gradient of one step, 30 AdamW steps in fp32 step for step
(batches of three shapes with padding; dropout, label smoothing, pre-LN,
learned positions, a shared vocabulary), the same dropout masks, tf32 and
bf16 following the fp32 curve; through the CLI, a G2P-like run trained on
the GPU and decoded on the CPU, a run with --ema following the CPU's; and
the one-line error of --device cuda
where there is no GPU (that one runs everywhere, CI included)."""
import json

import numpy as np
import pytest

from conftest import invoke, one_line_error
from mingpt_c import cuda
from mingpt_c.device import Device, to_host
from mingpt_c.nn.optim import AdamW
from mingpt_c.seq2seq.model import Seq2Seq, Seq2SeqConfig

from .conftest import gpu, same_bits

V = 23   # ids 0, 1, 2: pad, <s>, </s>


def _batch(rng, B: int, S: int, T: int):
    """B sources of up to S tokens (the last rows padded) and targets of up
    to T: (src, src_mask, tgt_in, tgt_out)."""
    src = rng.integers(3, V, (B, S)).astype(np.int32)
    mask = np.ones((B, S), np.int32)
    mask[-1, S // 2:] = 0
    src[mask == 0] = 0
    body = rng.integers(3, V, (B, T - 1)).astype(np.int32)
    tgt_in = np.concatenate([np.ones((B, 1), np.int32), body], 1)
    tgt_out = np.concatenate([body, np.full((B, 1), 2, np.int32)], 1)
    tgt_out[-1, T // 2:] = 0          # a shorter target: padding the loss ignores
    tgt_in[-1, T // 2 + 1:] = 0
    return src, mask, tgt_in, tgt_out


def _cfg(**kw) -> Seq2SeqConfig:
    base = dict(src_vocab_size=V, tgt_vocab_size=V, max_src_len=12, max_tgt_len=10, enc_layers=2, dec_layers=2,
                n_head=2, n_embd=32, dropout=0.0)
    return Seq2SeqConfig(**{**base, **kw})


def _run(device: Device, steps: int, smoothing: float = 0.1, **kw):
    """(losses, model) of `steps` AdamW steps on batches of three shapes."""
    model = Seq2Seq(_cfg(**kw), seed=5, device=device)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.98, 1e-9, 0.01, 1.0)
    rng = np.random.default_rng(0)
    data = [_batch(rng, 4, 12, 10), _batch(rng, 3, 7, 5), _batch(rng, 5, 9, 8)]
    out = []
    for it in range(steps):
        model.zero_grad()
        out.append(model.loss(*data[it % 3], train=True, seed=it, label_smoothing=smoothing))
        model.backward()
        opt.step(model.grads, 3e-3)
    return out, model


VARIANTS = {
    "paper": {},
    "dropout": {"dropout": 0.1},
    "pre-ln-learned-gelu": {"pre_ln": True, "positions": "learned", "act": "gelu", "dropout": 0.1},
    "shared-vocab": {"shared_vocab": True},
}


@gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_step_gradients_match_cpu(variant):
    kw = VARIANTS[variant]
    data = _batch(np.random.default_rng(1), 4, 12, 10)
    models = [Seq2Seq(_cfg(**kw), seed=5, device=Device(d, "fp32" if d == "cuda" else None))
              for d in ("cpu", "cuda")]
    losses = []
    for m in models:
        m.zero_grad()
        losses.append(m.loss(*data, train=True, seed=7, label_smoothing=0.1))
        m.backward()
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    g_cpu, g_gpu = models[0].grads, to_host(models[1].grads)
    scale = np.abs(g_cpu).max()
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-3, atol=1e-5 * scale)


@gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fp32_training_matches_cpu(variant):
    kw = VARIANTS[variant]
    cpu, cpu_model = _run(Device("cpu"), 30, **kw)
    gpu_, gpu_model = _run(Device("cuda", "fp32"), 30, **kw)
    np.testing.assert_allclose(gpu_, cpu, rtol=1e-4)
    assert cpu[-1] < cpu[0] - 0.5   # it learned something
    np.testing.assert_allclose(to_host(gpu_model.params), cpu_model.params, rtol=1e-3, atol=1e-5)
    if kw.get("dropout"):   # the masks of the last step: the same bits on both devices
        a, b = cpu_model._acts, gpu_model._acts
        assert same_bits(a.src_emb.mask, b.src_emb.mask)
        assert same_bits(a.dec.layers[-1].subs["cross"].mask, b.dec.layers[-1].subs["cross"].mask)
    got, want = gpu_model.cross_attention(), cpu_model.cross_attention()
    assert all(isinstance(m, np.ndarray) for m in got)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-3, atol=1e-5)


@gpu
def test_gpu_model_decodes_through_a_cpu_copy():
    _, model = _run(Device("cuda", "fp32"), 10)
    src, mask, _, _ = _batch(np.random.default_rng(2), 3, 8, 6)
    from mingpt_c.seq2seq.decode import DecodeConfig, decode

    srcs = [list(s[m == 1]) for s, m in zip(src, mask)]
    dc = DecodeConfig(beam=2)
    assert decode(model, srcs, dc) == decode(model.on_cpu(), srcs, dc)
    with pytest.raises(ValueError, match="runs on the CPU"):
        model.start(src, mask, 6)


@gpu
def test_fp32_training_is_deterministic():
    run = lambda: _run(Device("cuda", "fp32"), 10, dropout=0.1)[0]
    assert run() == run()


@gpu
@pytest.mark.parametrize("dtype", ["tf32", "bf16"])
def test_reduced_precision_follows_fp32(dtype):
    ref = np.array(_run(Device("cuda", "fp32"), 30)[0])
    low = np.array(_run(Device("cuda", dtype), 30)[0])
    assert not np.array_equal(low, ref)   # the mode took effect
    assert np.all(np.abs(low - ref) <= 0.03 * ref), np.max(np.abs(low - ref) / ref)

# ------------------------------------------------------------------ CLI

WORDS = ["cat", "dog", "bird", "fish", "horse", "mouse", "sheep", "goat", "hen", "cow", "duck", "frog"]
TINY = ["--enc-layers", "1", "--dec-layers", "1", "--n-head", "2", "--n-embd", "32", "--batch-size", "8",
        "--warmup-iters", "5", "--lr", "3e-3", "--no-progress", "--log-interval", "5"]
GPU_FP32 = ["--device", "cuda", "--dtype", "fp32"]


def _reverse_data(d):
    """Words -> their letters reversed, space-separated (a symbols target)."""
    rows = [f"{w}\t{' '.join(reversed(w))}\n" for w in WORDS * 4]
    (d / "train.tsv").write_text("".join(rows))
    (d / "val.tsv").write_text("".join(rows[:len(WORDS)]))
    return d / "train.tsv", d / "val.tsv"


@gpu
def test_train_on_gpu_eval_on_cpu(tmp_path):
    train, val = _reverse_data(tmp_path)
    run = tmp_path / "run"
    res = invoke("seq2seq", "train", "--train", train, "--val", val, "--tgt-vocab", "symbols", "--out", run,
                 "--epochs", "4", *TINY, *GPU_FP32)
    assert res.exit_code == 0, res.stderr
    assert "device:" in res.stderr
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = [e for e in evals if e["type"] == "eval"][-1]
    on_cpu = invoke("seq2seq", "eval", run / "latest", val, "--json")
    assert on_cpu.exit_code == 0, on_cpu.stderr
    got = json.loads(on_cpu.output)
    assert got["wer"] == pytest.approx(last["val_wer"])   # what the GPU run saw, decoded on the CPU


@gpu
def test_resume_switches_device(tmp_path):
    train, val = _reverse_data(tmp_path)
    common = ["--train", train, "--val", val, "--tgt-vocab", "symbols", *TINY]
    ref, mixed = tmp_path / "ref", tmp_path / "mixed"
    assert invoke("seq2seq", "train", "--out", ref, "--max-iters", "24", *common).exit_code == 0
    assert invoke("seq2seq", "train", "--out", mixed, "--max-iters", "8", *common).exit_code == 0
    res = invoke("seq2seq", "train", "--out", mixed, "--resume", "--max-iters", "16", *GPU_FP32, "--no-progress")
    assert res.exit_code == 0, res.stderr
    res = invoke("seq2seq", "train", "--out", mixed, "--resume", "--max-iters", "24", "--device", "cpu",
                 "--no-progress")
    assert res.exit_code == 0, res.stderr
    train_loss = lambda d: {r["iter"]: r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())
                            if r["type"] == "train"}
    want, got = train_loss(ref), train_loss(mixed)
    assert set(want) == set(got)
    for it in want:
        assert got[it] == pytest.approx(want[it], rel=1e-4)


@gpu
def test_weight_average_on_gpu_follows_the_cpu(tmp_path):
    """--ema on the GPU (the average in device memory, swapped in for
    validation): the saved average and training weights follow the CPU
    run's in fp32, and they differ from each other."""
    from mingpt_c.seq2seq import checkpoint as ckpt

    train, val = _reverse_data(tmp_path)
    common = ["--train", train, "--val", val, "--tgt-vocab", "symbols", "--max-iters", "24", "--ema", "0.9",
              *TINY]
    assert invoke("seq2seq", "train", "--out", tmp_path / "cpu", *common).exit_code == 0
    res = invoke("seq2seq", "train", "--out", tmp_path / "gpu", *common, *GPU_FP32)
    assert res.exit_code == 0, res.stderr
    a = ckpt.load(tmp_path / "cpu" / "latest", with_optimizer=True)
    b = ckpt.load(tmp_path / "gpu" / "latest", with_optimizer=True)
    for got, want in ((b["params"], a["params"]), (b["optimizer"][3], a["optimizer"][3])):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert np.abs(b["params"] - b["optimizer"][3]).max() > 1e-4


# ------------------------------------------------------------------ no GPU (CI)


@pytest.mark.skipif(cuda.available(), reason="a GPU is here: the no-GPU message is not shown")
def test_device_cuda_without_gpu_is_one_line(tmp_path):
    train, val = _reverse_data(tmp_path)
    new = tmp_path / "new"
    res = invoke("seq2seq", "train", "--train", train, "--val", val, "--out", new, "--max-iters", "1", *TINY,
                 "--device", "cuda")
    line = one_line_error(res)
    assert "cuda" in line.lower() or "gpu" in line.lower()
    assert not (new / "latest").exists()
