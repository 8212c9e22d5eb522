"""A tiny GPT (2 layers, width 32, 4 heads) assembled from the C kernels
against a PyTorch autograd twin: loss, every parameter gradient, and 10
AdamW steps with weight decay on matrices only and gradient clipping."""
import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
import torch_twin  # noqa: E402

from mingpt_c.gpt.config import GPTConfig  # noqa: E402
from mingpt_c.gpt.model import GPT  # noqa: E402
from mingpt_c.nn.optim import AdamW  # noqa: E402

CFG = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)


def batch(rng, cfg, B=3, T=11):
    idx = rng.integers(0, cfg.vocab_size, size=(B, T + 1)).astype(np.int32)
    x, y = idx[:, :-1].copy(), idx[:, 1:].copy()
    y[0, 3] = -100  # an ignored target
    return x, y


def test_loss_and_gradients_match_torch(rng):
    cfg = GPTConfig(**CFG)
    model = GPT(cfg, seed=3)
    x, y = batch(rng, cfg)
    loss = model.forward(x, y, train=True)
    model.zero_grad()
    model.backward()
    tp = torch_twin.torch_params(model)
    tloss = torch_twin.forward(tp, cfg, torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    for name, t in tp.items():
        got, want = model.g[name], t.grad.numpy()
        # relative to the gradient's own scale: entries near zero carry no
        # information about correctness at float32 precision
        assert_close(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), what=name)


def test_adamw_steps_match_torch(rng):
    cfg = GPTConfig(**CFG)
    model = GPT(cfg, seed=5)
    tp = torch_twin.torch_params(model)
    decay = [t for n, t in tp.items() if model.layout.slots[n].decay]
    no_decay = [t for n, t in tp.items() if not model.layout.slots[n].decay]
    hp = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8)
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}], foreach=False, **hp)
    opt = AdamW(model.params, model.layout.decay_mask(), beta1=0.9, beta2=0.99, eps=1e-8,
                weight_decay=0.1, grad_clip=1.0)
    ours, theirs = [], []
    for step in range(10):
        x, y = batch(rng, cfg)
        model.zero_grad()
        ours.append(model.forward(x, y, train=True))
        model.backward()
        opt.step(model.grads, hp["lr"])
        topt.zero_grad()
        tl = torch_twin.forward(tp, cfg, torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long))
        tl.backward()
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
        topt.step()
        theirs.append(tl.item())
    assert_close(ours, theirs, rtol=1e-4, atol=0)
    assert ours[-1] < ours[0]
    for name, t in tp.items():
        assert_close(model.p[name], t.detach().numpy(), rtol=1e-3, atol=1e-4, what=name)
