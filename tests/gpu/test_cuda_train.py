"""A GPT on the GPU against the same GPT on the CPU: 50 training steps in
fp32 step for step, bf16 following the fp32 curve, checkpoints crossing
devices (train on the GPU, sample and evaluate on the CPU; resume a CPU run
on the GPU and back), and the one-line errors of --device cuda where there
is no GPU (these run everywhere, CI included)."""
import json

import numpy as np
import pytest

from conftest import invoke, one_line_error
from mingpt_c import cuda
from mingpt_c.device import Device
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import GPT
from mingpt_c.nn.optim import AdamW

from .conftest import gpu


TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "10", "--eval-iters", "2", "--no-progress", "--tokenizer", "char"]
TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 40


def _losses(device: Device, steps: int, dropout: float = 0.0, text: bool = False) -> list[float]:
    """Losses of `steps` AdamW steps of a tiny GPT: memorising two fixed
    batches, or (text) on fresh batches of a character text each step."""
    cfg = GPTConfig(vocab_size=67, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout)
    model = GPT(cfg, seed=3, device=device)
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.99, 1e-8, 0.1, 1.0)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 67, (2, 4, 16), dtype=np.int32)   # two batches, seen in turn
    chars = np.frombuffer(TEXT.encode(), np.uint8).astype(np.int32) % 67
    out = []
    for it in range(steps):
        x = data[it % 2]
        if text:
            x = np.stack([chars[o:o + 16] for o in rng.integers(0, len(chars) - 17, 4)])
        y = np.roll(x, -1, axis=1)
        y[0, :3] = -100   # some ignored targets
        model.zero_grad()
        out.append(model.forward(x, y, train=True, seed=it))
        model.backward()
        opt.step(model.grads, 3e-3)
    return out


@gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fp32_training_matches_cpu(dropout):
    cpu = _losses(Device("cpu"), 50, dropout)
    gpu_ = _losses(Device("cuda", "fp32"), 50, dropout)
    np.testing.assert_allclose(gpu_, cpu, rtol=1e-4)
    assert cpu[-1] < cpu[0] - 0.5   # it learned something


@gpu
def test_fp32_training_is_deterministic():
    assert _losses(Device("cuda", "fp32"), 10, 0.1) == _losses(Device("cuda", "fp32"), 10, 0.1)


@gpu
@pytest.mark.parametrize("dtype", ["tf32", "bf16"])
def test_reduced_precision_follows_fp32(dtype):
    # on text the loss falls from 4.2 to about 2.5 and stays a real
    # prediction loss (memorised batches near zero loss would turn rounding
    # noise into large relative gaps)
    ref = np.array(_losses(Device("cuda", "fp32"), 50, text=True))
    low = np.array(_losses(Device("cuda", dtype), 50, text=True))
    assert ref[-5:].mean() < ref[:5].mean() - 0.5
    assert not np.array_equal(low, ref)   # the mode took effect
    assert np.all(np.abs(low - ref) <= 0.02 * ref), np.max(np.abs(low - ref) / ref)


@gpu
def test_train_on_gpu_sample_and_eval_on_cpu(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = tmp_path / "run"
    res = invoke("train", corpus, "--out", run, "--max-iters", "30", "--device", "cuda", "--dtype", "fp32",
                 *TINY)
    assert res.exit_code == 0, res.stderr
    assert "device:" in res.stderr
    greedy = ["--prompt", "It is", "--max-new-tokens", "40", "--temperature", "0"]
    on_cpu = invoke("sample", run, *greedy)
    on_gpu = invoke("sample", run, *greedy, "--device", "cuda", "--dtype", "fp32")
    no_cache = invoke("sample", run, *greedy, "--device", "cuda", "--dtype", "fp32", "--no-cache")
    assert on_cpu.exit_code == 0 and on_gpu.exit_code == 0 and no_cache.exit_code == 0, on_gpu.stderr
    assert on_cpu.output == on_gpu.output == no_cache.output
    assert len(on_cpu.output) > 40
    ev_cpu = invoke("eval", run, corpus)
    ev_gpu = invoke("eval", run, corpus, "--device", "cuda", "--dtype", "fp32")
    assert ev_cpu.exit_code == 0 and ev_gpu.exit_code == 0, ev_gpu.stderr
    loss = lambda r: float(r.output.split()[1])
    assert abs(loss(ev_cpu) - loss(ev_gpu)) <= 1e-4 * loss(ev_cpu)


@gpu
def test_resume_switches_device(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)

    def evals(run):   # by iteration (a resumed run evaluates its first iteration again)
        recs = {r["iter"]: r["val_loss"] for r in map(json.loads, open(run / "log.jsonl"))
                if r["type"] == "eval"}
        return [recs[k] for k in sorted(recs)]

    ref, mixed = tmp_path / "ref", tmp_path / "mixed"
    assert invoke("train", corpus, "--out", ref, "--max-iters", "30", *TINY).exit_code == 0
    assert invoke("train", corpus, "--out", mixed, "--max-iters", "10", *TINY).exit_code == 0
    res = invoke("train", corpus, "--out", mixed, "--max-iters", "20", "--resume", "--device", "cuda",
                 "--dtype", "fp32", "--no-progress")
    assert res.exit_code == 0, res.stderr
    res = invoke("train", corpus, "--out", mixed, "--max-iters", "30", "--resume", "--device", "cpu",
                 "--no-progress")
    assert res.exit_code == 0, res.stderr
    want, got = evals(ref), evals(mixed)
    assert len(got) == len(want) == 4
    np.testing.assert_allclose(got, want, rtol=1e-4)


# ------------------------------------------------------------------ no GPU (CI)


@pytest.mark.skipif(cuda.available(), reason="a GPU is here: the no-GPU message is not shown")
@pytest.mark.parametrize("cmd", [["train", "--max-iters", "1"], ["sample", "--max-new-tokens", "1"],
                                 ["eval"]])
def test_device_cuda_without_gpu_is_one_line(cmd, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run = tmp_path / "run"
    if cmd[0] != "train":
        assert invoke("train", corpus, "--out", run, "--max-iters", "2", *TINY).exit_code == 0
    args = {"train": [corpus, "--out", tmp_path / "new", *TINY], "sample": [run], "eval": [run, corpus]}
    res = invoke(cmd[0], *args[cmd[0]], *cmd[1:], "--device", "cuda")
    assert res.exit_code != 0
    line = one_line_error(res)
    assert "cuda" in line.lower() or "gpu" in line.lower()
    assert not (tmp_path / "new" / "latest").exists()
