"""The ViT assembled from the C kernels: patch extraction against a Conv2d,
label-smoothed cross-entropy against a float64 reference and PyTorch, one
training step (loss and every gradient) against a PyTorch autograd twin,
a loss that falls on one batch, identical losses for one seed."""
import numpy as np
import pytest

from conftest import assert_close, f32
from mingpt_c.errors import ShapeError
from mingpt_c.nn.loss import smoothed_crossentropy_backward, smoothed_crossentropy_forward
from mingpt_c.vit.model import ViT, ViTConfig, patchify
from mingpt_c.nn.optim import AdamW

CFG = dict(image_size=12, patch_size=4, num_channels=3, num_classes=5, n_layer=2, n_head=4, n_embd=32)


def randomised(cfg, seed=0):
    """A model whose every tensor is non-trivial (the default init zeroes
    biases and the classifier)."""
    m = ViT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, v in m.p.items():
        if name.endswith("bias") or "layernorm" in name or name.startswith("classifier"):
            v[...] = (1.0 if name.endswith(("layernorm_before.weight", "layernorm_after.weight",
                                            "vit.layernorm.weight")) else 0.0) + rng.normal(0, 0.2, v.shape)
    return m


def ref_smoothed_ce(z, y, eps):
    """float64: mean over rows of -sum_k q_k log softmax(z)_k, and d/dz."""
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    K = z.shape[1]
    q = np.full_like(z, eps / K)
    q[np.arange(len(y)), y] += 1 - eps
    return float(-(q * logp).sum(1).mean()), (np.exp(logp) - q) / len(y)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_crossentropy(rng, eps):
    z = rng.normal(size=(7, 5)) * 3
    z[0, 1] = 60.0   # a probability that underflows: no log(0)
    y = np.array([1, 0, 4, 2, 2, 3, 1], np.int32)
    B, K = z.shape
    losses, probs = np.empty(B, np.float32), np.empty((B, K), np.float32)
    got = smoothed_crossentropy_forward(f32(z), y, eps, losses, probs, len(y))
    want, dwant = ref_smoothed_ce(z, y, eps)
    assert got == pytest.approx(want, rel=1e-5)
    dlosses = np.empty(B, np.float32)
    assert_close(smoothed_crossentropy_backward(probs, y, eps, len(y), dlosses), dwant, rtol=1e-4, atol=1e-6)
    torch = pytest.importorskip("torch")
    t = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y, dtype=torch.long),
                                          label_smoothing=eps)
    assert got == pytest.approx(t.item(), rel=1e-5)


def test_patchify_matches_conv2d(rng):
    torch = pytest.importorskip("torch")
    x = f32(rng.normal(size=(2, 3, 12, 8)))
    w = f32(rng.normal(size=(6, 3, 4, 4)))
    conv = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), stride=4)
    want = conv.flatten(2).transpose(1, 2).numpy()                   # (B, Np, C) as HF
    got = patchify(x, 4) @ w.reshape(6, -1).T
    assert_close(got, want, rtol=1e-5, atol=1e-5)


def torch_twin(model, x, y, eps):
    """The same ViT in PyTorch autograd, on the same (HF-named) parameters."""
    import torch
    F = torch.nn.functional
    cfg = model.cfg
    tp = {n: torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True) for n, v in model.p.items()}
    C, NH = cfg.n_embd, cfg.n_head
    h = F.conv2d(torch.tensor(x, dtype=torch.float64), tp["vit.embeddings.patch_embeddings.projection.weight"],
                 tp["vit.embeddings.patch_embeddings.projection.bias"], stride=cfg.patch_size)
    h = h.flatten(2).transpose(1, 2)
    B = h.shape[0]
    h = torch.cat([tp["vit.embeddings.cls_token"].expand(B, -1, -1), h], 1)
    h = h + tp["vit.embeddings.position_embeddings"]
    T = h.shape[1]
    lin = lambda t, p: F.linear(t, tp[p + ".weight"], tp[p + ".bias"])
    for i in range(cfg.n_layer):
        p = f"vit.encoder.layer.{i}."
        a = F.layer_norm(h, (C,), tp[p + "layernorm_before.weight"], tp[p + "layernorm_before.bias"],
                         cfg.layer_norm_eps)
        split = lambda t: t.view(B, T, NH, C // NH).transpose(1, 2)
        q, k, v = (split(lin(a, p + "attention.attention." + n)) for n in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(C // NH), -1)
        o = (att @ v).transpose(1, 2).reshape(B, T, C)
        h = h + lin(o, p + "attention.output.dense")
        a = F.layer_norm(h, (C,), tp[p + "layernorm_after.weight"], tp[p + "layernorm_after.bias"],
                         cfg.layer_norm_eps)
        h = h + lin(F.gelu(lin(a, p + "intermediate.dense")), p + "output.dense")
    h = F.layer_norm(h, (C,), tp["vit.layernorm.weight"], tp["vit.layernorm.bias"], cfg.layer_norm_eps)
    logits = lin(h[:, 0], "classifier")
    loss = F.cross_entropy(logits, torch.tensor(y, dtype=torch.long), label_smoothing=eps)
    loss.backward()
    return loss.item(), {n: t.grad.numpy() for n, t in tp.items()}


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_training_step_matches_torch(rng, eps):
    pytest.importorskip("torch")
    model = randomised(ViTConfig(**CFG), seed=3)
    x = f32(rng.normal(size=(3, 3, 12, 12)))
    y = np.array([4, 0, 2], np.int32)
    loss = model.forward(x, y, train=True, label_smoothing=eps)
    model.zero_grad()
    model.backward()
    tloss, tgrads = torch_twin(model, x, y, eps)
    assert loss == pytest.approx(tloss, rel=1e-5)
    for name, want in tgrads.items():
        # key biases have an exactly zero gradient (softmax ignores a shift), hence the floor
        atol = max(1e-4 * np.abs(want).max(), 1e-7)
        assert_close(model.g[name], want, rtol=1e-4, atol=atol, what=name)


def test_loss_falls_on_one_batch_and_is_deterministic(rng):
    cfg = ViTConfig(**{**CFG, "num_channels": 1})
    x = f32(rng.normal(size=(8, 1, 12, 12)))
    y = (np.arange(8) % 5).astype(np.int32)
    runs = []
    for _ in range(2):
        model = ViT(cfg, seed=7)
        opt = AdamW(model.params, model.layout.decay_mask(), weight_decay=0.01)
        losses = []
        for _ in range(25):
            model.zero_grad()
            losses.append(model.forward(x, y, train=True, label_smoothing=0.1))
            model.backward()
            opt.step(model.grads, 3e-3)
        runs.append(losses)
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.5 * runs[0][0]


def test_dropout_trains_and_eval_is_deterministic(rng):
    cfg = ViTConfig(**{**CFG, "dropout": 0.1})
    model = ViT(cfg, seed=1)
    x = f32(rng.normal(size=(2, 3, 12, 12)))
    model.forward(x, np.array([0, 1], np.int32), train=True, seed=5)
    model.backward()
    assert np.abs(model.grads).sum() > 0
    a = model.forward(x).copy()
    assert np.array_equal(a, model.forward(x))


def test_bad_shapes():
    with pytest.raises(ShapeError, match="not divisible by the patch size"):
        ViTConfig(image_size=30, patch_size=4)
    model = ViT(ViTConfig(**CFG))
    with pytest.raises(ShapeError, match="channel"):
        model.forward(np.zeros((1, 1, 12, 12), np.float32))
    with pytest.raises(ShapeError, match="12x12"):
        model.forward(np.zeros((1, 3, 16, 16), np.float32))


def test_last_block_runs_the_class_row_only(rng):
    """The last block's projection and MLP run on the class token alone: its
    output equals the class row of a full T-row block on the same input."""
    from mingpt_c.nn.block import block_acts, block_forward
    model = randomised(ViTConfig(**CFG), seed=2)
    x = f32(rng.normal(size=(3, 3, 12, 12)))
    model.forward(x)
    a = model._acts
    assert a.last.rest.out.shape == (3, 1, 32)
    T, L = model.cfg.seq_len, model.cfg.n_layer
    full = block_acts(1, 3, T, 32, 4, 0.0)[0]
    h = block_forward(full, a.blocks[-1].out, model.stack.layer_p[L - 1], 4, model.cfg.layer_norm_eps, False,
                      None, 0.0, 0, model.cfg.act)
    assert_close(a.last.rest.out[:, 0], h[:, 0], rtol=1e-5, atol=1e-6)
    assert [att.shape for att in model.attentions()] == [(3, 4, T, T)] * L
