"""Training: the loss falls, seeds repeat, resume is bit-exact, Ctrl-C saves
a resumable checkpoint, SIGKILL during a save never corrupts one, NaN steps
are skipped and then stop the run."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from mingpt_c.gpt import checkpoint
from mingpt_c.errors import MinGPTError
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import GPT
from mingpt_c.nn.optim import AdamW
from mingpt_c.gpt.train import TrainConfig, train

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40 +
        "Pack my box with five dozen liquor jugs!\n" * 30)
TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4, eval_iters=2,
            warmup_iters=2, log_interval=1, progress=False, threads=2)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return p


def losses_of(run):
    recs = [json.loads(line) for line in open(run / "log.jsonl")]
    return {r["iter"]: r["loss"] for r in recs if r["type"] == "train"}


def weights(path):
    from safetensors.numpy import load_file
    return load_file(str(path / "model.safetensors"))


def test_loss_falls_on_one_batch(rng):
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, seed=0)
    opt = AdamW(model.params, model.layout.decay_mask(), weight_decay=0.0)
    x = rng.integers(0, 20, size=(4, 8)).astype(np.int32)
    y = rng.integers(0, 20, size=(4, 8)).astype(np.int32)
    losses = []
    for _ in range(30):
        model.zero_grad()
        losses.append(model.forward(x, y, train=True))
        model.backward()
        opt.step(model.grads, 1e-2)
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.5 * losses[0]


def test_initialisation_spreads():
    """GPT-2's N(0, 0.02) for matrices, 0.02/sqrt(2 n_layer) for residual
    projections; the embeddings' spread is its own setting."""
    cfg = GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64)
    p = GPT(cfg, seed=0, embd_std=0.05).p
    assert abs(p["transformer.wte.weight"].std() - 0.05) < 0.002
    assert abs(p["transformer.wpe.weight"].std() - 0.05) < 0.003
    assert abs(p["transformer.h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    assert abs(p["transformer.h.1.attn.c_proj.weight"].std() - 0.01) < 0.001
    assert np.all(p["transformer.h.0.ln_1.weight"] == 1) and np.all(p["transformer.h.0.attn.c_attn.bias"] == 0)
    assert abs(GPT(cfg, seed=0).p["transformer.wte.weight"].std() - 0.02) < 0.001


def test_embd_init_std_reaches_the_model(tmp_path, corpus):
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), files=(str(corpus),), max_iters=1, embd_init_std=0.5, **TINY),
          log=lambda *a: None)
    wte = weights(out / "latest")["transformer.wte.weight"]
    assert 0.4 < wte.std() < 0.6


def test_same_seed_same_losses(tmp_path, corpus):
    runs = []
    for name in ("a", "b"):
        tc = TrainConfig(out=str(tmp_path / name), files=(str(corpus),), max_iters=6, eval_interval=3,
                         dropout=0.1, **TINY)
        train(tc, log=lambda m: None)
        runs.append(losses_of(tmp_path / name))
    assert runs[0] == runs[1] and len(runs[0]) == 6
    tc = TrainConfig(out=str(tmp_path / "c"), files=(str(corpus),), max_iters=6, eval_interval=3,
                     dropout=0.1, seed=99, **TINY)
    train(tc, log=lambda m: None)
    assert losses_of(tmp_path / "c") != runs[0]


def test_resume_is_bit_identical(tmp_path, corpus):
    common = dict(files=(str(corpus),), eval_interval=4, lr_decay_iters=12, dropout=0.1, **TINY)
    full = tmp_path / "full"
    train(TrainConfig(out=str(full), max_iters=12, **common), log=lambda m: None)
    part = tmp_path / "part"
    first = train(TrainConfig(out=str(part), max_iters=6, **common), log=lambda m: None)
    assert first["iter"] == 6
    train(TrainConfig(out=str(part), max_iters=12, **common), resume=True, log=lambda m: None)
    assert losses_of(part) == losses_of(full)  # exact float equality, every iteration
    wf, wp = weights(full / "latest"), weights(part / "latest")
    assert wf.keys() == wp.keys()
    for k in wf:
        assert np.array_equal(wf[k], wp[k]), k
    st = json.loads((part / "latest" / "train_state.json").read_text())
    assert st["iter"] == 12


def test_nan_steps_skipped_then_stop(tmp_path, corpus, monkeypatch):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), files=(str(corpus),), max_iters=4, eval_interval=2, **TINY),
          log=lambda m: None)
    before = weights(run / "latest")
    real = GPT.forward

    def nan_forward(self, tokens, targets=None, train=False, seed=0):
        out = real(self, tokens, targets, train, seed)
        return float("nan") if train else out

    monkeypatch.setattr(GPT, "forward", nan_forward)
    with pytest.raises(MinGPTError, match="training diverged: 3 non-finite steps"):
        train(TrainConfig(out=str(run), files=(str(corpus),), max_iters=10, eval_interval=2,
                          max_nan_steps=3, **TINY), resume=True, log=lambda m: None)
    after = weights(run / "latest")
    for k in before:  # no step was applied, the last good checkpoint is intact
        assert np.array_equal(before[k], after[k])


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=kw.get("cwd"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_saves_and_resumes(tmp_path, corpus):
    run = tmp_path / "run"
    p = _cli("train", str(corpus), "--out", str(run), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
             "--block-size", "16", "--batch-size", "2", "--max-iters", "100000", "--eval-interval", "100000",
             "--eval-iters", "1", "--threads", "1")
    log = run / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until some steps have been taken
        if log.exists() and log.read_text().count('"train"') >= 2:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err   # 128 + SIGINT, after the checkpoint was saved
    assert "--resume" in err and "Traceback" not in err
    st = json.loads((run / "latest" / "train_state.json").read_text())
    assert st["iter"] >= 20
    resumed = _cli("train", "--out", str(run), "--resume", "--max-iters", str(st["iter"] + 3),
                   "--no-progress")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert json.loads((run / "latest" / "train_state.json").read_text())["iter"] == st["iter"] + 3


SAVER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from mingpt_c.gpt import checkpoint
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import gpt_slots
from mingpt_c.nn.params import Layout
cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=64)
n = Layout(gpt_slots(cfg)).size
print("ready", flush=True)
i = 0
while True:
    i += 1
    checkpoint.save(sys.argv[1], cfg, np.full(n, float(i % 2 + 1), np.float32))
"""


def test_sigkill_while_saving_never_corrupts(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER.format(root=str(ROOT)))
    ck = tmp_path / "ck"
    rng = np.random.default_rng(0)
    for trial in range(6):
        p = subprocess.Popen([sys.executable, str(script), str(ck)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        while not ck.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        loaded = checkpoint.load(ck)
        vals = np.unique(loaded["params"])
        assert len(vals) == 1 and vals[0] in (1.0, 2.0)


def test_gradients_bitwise_repeatable(rng):
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    model = GPT(cfg, seed=1)
    x = rng.integers(0, 50, size=(3, 16)).astype(np.int32)
    y = rng.integers(0, 50, size=(3, 16)).astype(np.int32)
    runs = []
    for _ in range(3):
        model.zero_grad()
        loss = model.forward(x, y, train=True)
        model.backward()
        runs.append((loss, model.grads.copy()))
    for loss, g in runs[1:]:
        assert loss == runs[0][0] and np.array_equal(g, runs[0][1])


def test_non_finite_gradient_skips_the_update():
    cfg = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=8)
    model = GPT(cfg, seed=0)
    opt = AdamW(model.params, model.layout.decay_mask())
    before = model.params.copy()
    model.grads[:] = 0.1
    model.grads[5] = np.inf
    assert not np.isfinite(opt.step(model.grads, 1e-3))
    assert np.array_equal(model.params, before) and opt.t == 0
