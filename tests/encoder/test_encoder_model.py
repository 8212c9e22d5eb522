"""The encoder on the C core against a PyTorch autograd twin: MLM and
classification losses and every parameter gradient, for post-LN (BERT) and
pre-LN blocks, [CLS] and mean pooling, with padding; the loss falls on one
batch; the same seed gives the same losses."""
import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")

from mingpt_c.encoder.data import IGNORE  # noqa: E402
from mingpt_c.encoder.model import BIGRAMS, Encoder, EncoderConfig, PREFIX, bigram_ids  # noqa: E402
from mingpt_c.nn.optim import AdamW  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)


def twin_hidden(P, cfg, x, mask):
    """BERT's trunk in torch from our named parameters (float64)."""
    F = torch.nn.functional
    C, NH = cfg.n_embd, cfg.n_head
    act = (lambda z: F.gelu(z)) if cfg.act == "gelu" else (lambda z: F.gelu(z, approximate="tanh"))
    ln = lambda z, n: F.layer_norm(z, (C,), P[n + ".weight"], P[n + ".bias"], cfg.layer_norm_eps)
    e = PREFIX + "embeddings."
    B, T = x.shape
    h = P[e + "word_embeddings.weight"][x] + P[e + "position_embeddings.weight"][:T] + \
        P[e + "token_type_embeddings.weight"][0]
    if cfg.bigram_buckets:
        h = h + P[BIGRAMS][torch.tensor(bigram_ids(x.numpy(), cfg.bigram_buckets), dtype=torch.long)]
    h = ln(h, e + "LayerNorm")
    bias = torch.zeros(B, 1, 1, T, dtype=h.dtype).masked_fill(mask[:, None, None, :] == 0, float("-inf"))

    def attn(z, p):
        """Self-attention of the layer whose parameter names start with p."""
        qkv = z @ P[p + "attention.self.qkv.weight"].T + P[p + "attention.self.qkv.bias"]
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in qkv.split(C, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / (C // NH) ** 0.5 + bias, -1)
        y = (a @ v).transpose(1, 2).reshape(B, T, C)
        return y @ P[p + "attention.output.dense.weight"].T + P[p + "attention.output.dense.bias"]

    def mlp(z, p):
        """Feed-forward of the layer whose parameter names start with p."""
        f = act(z @ P[p + "intermediate.dense.weight"].T + P[p + "intermediate.dense.bias"])
        return f @ P[p + "output.dense.weight"].T + P[p + "output.dense.bias"]

    for i in range(cfg.n_layer):
        p = f"{PREFIX}encoder.layer.{i}."
        if cfg.pre_ln:
            h = h + attn(ln(h, p + "attention.output.LayerNorm"), p)
            h = h + mlp(ln(h, p + "output.LayerNorm"), p)
        else:
            h = ln(h + attn(h, p), p + "attention.output.LayerNorm")
            h = ln(h + mlp(h, p), p + "output.LayerNorm")
    if cfg.pre_ln:
        h = ln(h, PREFIX + "encoder.ln_f")
    return h, act, ln


def twin_params(model):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.p.items()}


def batch(rng, cfg, B=3, T=10):
    x = rng.integers(5, cfg.vocab_size, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    x[mask == 0] = 0
    return x, mask


@pytest.mark.parametrize("pre_ln,act", [(False, "gelu"), (True, "gelu_tanh")])
def test_mlm_matches_torch(rng, pre_ln, act):
    cfg = EncoderConfig(vocab_size=41, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                        pre_ln=pre_ln, act=act)
    model = Encoder(cfg, seed=3)
    model.params += rng.normal(0, 0.05, model.params.size).astype(np.float32)
    x, mask = batch(rng, cfg)
    y = np.full_like(x, IGNORE)
    y[0, [1, 4]] = [7, 9]
    y[1, 2] = 30
    y[2, 0] = 11
    loss = model.mlm(x, mask, y, train=True)
    model.zero_grad()
    model.backward()
    P = twin_params(model)
    h, gelu, ln = twin_hidden(P, cfg, torch.tensor(x, dtype=torch.long), torch.tensor(mask))
    t = "cls.predictions."
    z = ln(gelu(h @ P[t + "transform.dense.weight"].T + P[t + "transform.dense.bias"]), t + "transform.LayerNorm")
    logits = z @ P[PREFIX + "embeddings.word_embeddings.weight"].T + P[t + "bias"]
    tl = torch.nn.functional.cross_entropy(logits.view(-1, cfg.vocab_size), torch.tensor(y, dtype=torch.long).view(-1),
                                           ignore_index=IGNORE)
    tl.backward()
    assert abs(loss - tl.item()) < 1e-5
    for k, v in P.items():
        assert_close(model.g[k], v.grad.numpy(), rtol=1e-3, atol=2e-5, what=k)


@pytest.mark.parametrize("pooling,buckets", [("cls", 0), ("mean", 0), ("max", 0), ("mean", 7)])
def test_classifier_matches_torch(rng, pooling, buckets):
    cfg = EncoderConfig(vocab_size=30, block_size=12, n_layer=1, n_head=4, n_embd=16, dropout=0.0,
                        pooling=pooling, mlm_head=False, num_labels=3, bigram_buckets=buckets)
    model = Encoder(cfg, seed=5)
    model.params += rng.normal(0, 0.05, model.params.size).astype(np.float32)
    x, mask = batch(rng, cfg, T=11)
    labels = np.array([2, 0, 1], np.int32)
    logits, loss = model.classify(x, mask, labels, train=True)
    model.zero_grad()
    model.backward()
    P = twin_params(model)
    m = torch.tensor(mask, dtype=torch.float64)
    h, _, _ = twin_hidden(P, cfg, torch.tensor(x, dtype=torch.long), torch.tensor(mask))
    if pooling == "cls":
        pooled = h[:, 0]
    elif pooling == "mean":
        pooled = (h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
    else:
        pooled = h.masked_fill(m[:, :, None] == 0, -torch.inf).amax(1)
    tlogits = pooled @ P["classifier.weight"].T + P["classifier.bias"]
    tl = torch.nn.functional.cross_entropy(tlogits, torch.tensor(labels, dtype=torch.long))
    tl.backward()
    assert_close(logits, tlogits.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert abs(loss - tl.item()) < 1e-5
    for k, v in P.items():
        assert_close(model.g[k], v.grad.numpy(), rtol=1e-3, atol=2e-5, what=k)


def test_bigram_ids_hash_pairs_into_the_table():
    x = np.array([[5, 6, 5, 6, 5], [6, 5, 6, 5, 6]], np.int32)
    ids = bigram_ids(x, 1 << 20)
    assert ids.dtype == np.int32 and ids.shape == x.shape
    assert ids[0, 1] == ids[0, 3] == ids[1, 2] == ids[1, 4]          # (5, 6) wherever it stands
    assert ids[0, 2] == ids[0, 4] == ids[1, 1] == ids[1, 3]          # (6, 5)
    assert ids[0, 1] != ids[0, 2] and ids[0, 0] != ids[1, 0]          # order and the start matter
    many = bigram_ids(np.random.default_rng(0).integers(0, 30000, (64, 256)).astype(np.int32), 1000)
    assert many.min() >= 0 and many.max() < 1000
    counts = np.bincount(many.ravel(), minlength=1000)
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()     # spread evenly: about 999
    assert chi2 < 999 + 6 * np.sqrt(2 * 999)


def test_bigram_table_starts_at_zero_and_learns():
    """A fresh table adds nothing (the same logits as the model without it,
    same seed); a step moves only the rows of the pairs the batch holds."""
    base = dict(vocab_size=30, block_size=12, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                pooling="mean", mlm_head=False, num_labels=2)
    x, mask = batch(np.random.default_rng(0), EncoderConfig(**base))
    plain = Encoder(EncoderConfig(**base), seed=4)
    model = Encoder(EncoderConfig(**base, bigram_buckets=64), seed=4)
    assert not model.p[BIGRAMS].any()
    assert np.array_equal(plain.classify(x, mask)[0], model.classify(x, mask)[0])
    opt = AdamW(model.params, model.layout.decay_mask(), weight_decay=0.0)
    model.zero_grad()
    model.classify(x, mask, np.array([0, 1, 1], np.int32), train=True)
    model.backward()
    opt.step(model.grads, 1e-2)
    moved = np.flatnonzero(np.abs(model.p[BIGRAMS]).sum(1))
    assert set(moved) == set(bigram_ids(x, 64)[mask == 1])


def run_steps(seed, n=15):
    cfg = EncoderConfig(vocab_size=30, block_size=12, n_layer=1, n_head=2, n_embd=16, dropout=0.1,
                        pooling="mean", num_labels=2)
    model = Encoder(cfg, seed=seed)
    opt = AdamW(model.params, model.layout.decay_mask(), weight_decay=0.01)
    x, mask = batch(np.random.default_rng(0), cfg)
    labels = np.array([0, 1, 1], np.int32)
    losses = []
    for i in range(n):
        model.zero_grad()
        losses.append(model.classify(x, mask, labels, train=True, seed=i)[1])
        model.backward()
        opt.step(model.grads, 3e-3)
    return losses


def test_loss_falls_and_is_deterministic():
    a, b = run_steps(1), run_steps(1)
    assert a == b
    assert a[-1] < 0.5 * a[0]


@pytest.mark.parametrize("pre_ln", [False, True])
def test_shared_gelu_buffer_gives_the_same_gradients(monkeypatch, pre_ln):
    """Large stacks share one GELU buffer and recompute it in the backward;
    small ones keep one per layer: the gradients are the same bits."""
    from mingpt_c.nn import block
    grads = []
    for keep_bytes in (block.GELU_KEEP_BYTES, 0):
        monkeypatch.setattr(block, "GELU_KEEP_BYTES", keep_bytes)
        model, g = _stack_grads(pre_ln)
        assert model._acts.blocks[0].gelu_shared == (keep_bytes == 0)
        grads.append(g)
    assert np.array_equal(grads[0], grads[1])


def _stack_grads(pre_ln):
    """A 3-layer encoder with dropout after one masked-LM step: (model, grads)."""
    cfg = EncoderConfig(vocab_size=41, block_size=16, n_layer=3, n_head=2, n_embd=16, dropout=0.1,
                        pre_ln=pre_ln)
    x, mask = batch(np.random.default_rng(11), cfg)
    y = np.full_like(x, IGNORE)
    y[:, 1] = 7
    model = Encoder(cfg, seed=3)
    model.mlm(x, mask, y, train=True, seed=5)
    model.zero_grad()
    model.backward()
    return model, model.grads.copy()


@pytest.mark.parametrize("pre_ln", [False, True])
def test_stack_shares_the_projection_outputs(monkeypatch, pre_ln):
    """The projections' outputs (and their dropped-out copies) are read only in
    the forward, so a stack keeps one pair for all its layers: the gradients
    are the bits of a pair per layer."""
    from mingpt_c.device import CPU
    from mingpt_c.nn import block, stack

    def separate(n_layer, B, T, C, NH, dropout, pre_ln=True, dev=CPU):
        return [block.BlockActs(B, T, C, NH, dropout, pre_ln, dev=dev) for _ in range(n_layer)]

    grads = []
    for builder in (block.block_acts, separate):
        monkeypatch.setattr(stack, "block_acts", builder)   # the stack's buffers are made with it
        model, g = _stack_grads(pre_ln)
        first, last = model._acts.blocks[0], model._acts.blocks[-1]
        shared = builder is block.block_acts
        for name in ("attproj", "fcproj", "attproj_d", "fcproj_d"):
            assert (getattr(last, name) is getattr(first, name)) == shared
        assert last.atty is not first.atty
        grads.append(g)
    assert np.array_equal(grads[0], grads[1])
