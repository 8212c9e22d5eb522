"""The encoder-decoder against its PyTorch twin (nn.Transformer, float64):
loss, every gradient, and ten AdamW steps, post-LN and pre-LN, shared and
separate vocabularies, on a padded batch; the loss against a teacher's
distribution mixed into the smoothed target (token-level distillation)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mingpt_c.nn.optim import AdamW  # noqa: E402
from mingpt_c.seq2seq.model import BOS, EOS, PAD, Seq2Seq, Seq2SeqConfig  # noqa: E402

ts = pytest.importorskip("mingpt_c.benchmarks.torch_seq2seq")


def batch(rng, Vs, Vt, B=3, S=7, T=5):
    """A padded batch: rows of different lengths, ids above the specials."""
    src = np.zeros((B, S), np.int32)
    mask = np.zeros((B, S), np.int32)
    tin = np.zeros((B, T + 1), np.int32)
    tout = np.zeros((B, T + 1), np.int32)
    for b in range(B):
        n, m = S - 2 * b, T - b
        src[b, :n], mask[b, :n] = rng.integers(4, Vs, n), 1
        y = rng.integers(4, Vt, m)
        tin[b, :m + 1] = [BOS, *y]
        tout[b, :m + 1] = [*y, EOS]
    return src, mask, tin, tout


def torch_batch(*arrays):
    return [torch.tensor(a, dtype=torch.long) for a in arrays]


CONFIGS = {
    "post-ln": dict(),
    "pre-ln-gelu": dict(pre_ln=True, act="gelu"),
    "shared-learned": dict(shared_vocab=True, src_vocab_size=23, tgt_vocab_size=23, positions="learned"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_every_gradient_match_torch(name):
    kw = dict(src_vocab_size=19, tgt_vocab_size=23, max_src_len=9, max_tgt_len=8, enc_layers=2, dec_layers=2,
              n_head=2, n_embd=16, dropout=0.0)
    kw.update(CONFIGS[name])
    cfg = Seq2SeqConfig(**kw)
    model = Seq2Seq(cfg, seed=3)
    if cfg.positions == "learned":   # a fresh learned table: draw it apart from zero
        for side in ("encoder", "decoder"):
            model.p[f"model.{side}.embed_positions.weight"][...] = np.random.default_rng(1).normal(
                0, 0.3, model.p[f"model.{side}.embed_positions.weight"].shape)
    rng = np.random.default_rng(0)
    src, mask, tin, tout = batch(rng, cfg.src_vocab_size, cfg.tgt_vocab_size)
    tm = ts.from_ours(model)
    model.zero_grad()
    loss = model.loss(src, mask, tin, tout, train=True, label_smoothing=0.1)
    model.backward()
    tl = tm.loss(*torch_batch(src, mask, tin, tout), label_smoothing=0.1)
    tl.backward()
    assert abs(loss - tl.item()) < 1e-4
    want = ts.as_ours(model, tm)
    assert set(want) == set(model.g)
    for n, g in want.items():
        np.testing.assert_allclose(model.g[n], g, atol=1e-4, rtol=1e-3, err_msg=n)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_teacher_mixed_target_matches_torch(w):
    """The target (1 - w) smoothed one-hot + w teacher, written by torch
    as one probability target (its soft-label cross-entropy): the loss and
    every gradient; padding rows count for nothing."""
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=23, max_src_len=9, max_tgt_len=8, enc_layers=1,
                        dec_layers=2, n_head=2, n_embd=16, dropout=0.0)
    model = Seq2Seq(cfg, seed=4)
    rng = np.random.default_rng(2)
    src, mask, tin, tout = batch(rng, cfg.src_vocab_size, cfg.tgt_vocab_size)
    V, eps = cfg.tgt_vocab_size, 0.1
    teacher = rng.dirichlet(np.full(V, 0.3), size=tout.size).astype(np.float32)
    tm = ts.from_ours(model)
    model.zero_grad()
    loss = model.loss(src, mask, tin, tout, train=True, label_smoothing=eps, teacher=teacher, teacher_weight=w)
    model.backward(2.0)
    logits = tm.forward(*torch_batch(src, mask, tin)).reshape(-1, V)
    y = torch.tensor(tout.reshape(-1), dtype=torch.long)
    keep = y != PAD
    q = (1 - w) * ((1 - eps) * torch.nn.functional.one_hot(y, V).double() + eps / V) + w * torch.tensor(
        teacher, dtype=torch.float64)
    tl = -(q[keep] * torch.log_softmax(logits[keep], -1)).sum(-1).mean()
    (2.0 * tl).backward()
    assert abs(loss - tl.item()) < 1e-4
    for n, g in ts.as_ours(model, tm).items():
        np.testing.assert_allclose(model.g[n], g, atol=1e-4, rtol=1e-3, err_msg=n)


def test_ten_adamw_steps_match_torch():
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=23, max_src_len=9, max_tgt_len=8, enc_layers=2,
                        dec_layers=2, n_head=2, n_embd=16, dropout=0.0)
    model = Seq2Seq(cfg, seed=5)
    tm = ts.from_ours(model)
    lr, wd = 3e-3, 0.01
    opt = AdamW(model.params, model.layout.decay_mask(), 0.9, 0.98, 1e-9, wd, grad_clip=1.0)
    topt = torch.optim.AdamW(ts.decay_groups(model, tm, wd), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    rng = np.random.default_rng(1)
    for _ in range(10):
        src, mask, tin, tout = batch(rng, cfg.src_vocab_size, cfg.tgt_vocab_size)
        model.zero_grad()
        model.loss(src, mask, tin, tout, train=True, label_smoothing=0.1)
        model.backward()
        opt.step(model.grads, lr)
        topt.zero_grad()
        tm.loss(*torch_batch(src, mask, tin, tout), label_smoothing=0.1).backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        topt.step()
    C = cfg.n_embd
    for n, w in ts.as_ours(model, tm, "data").items():
        got, w = model.p[n].copy(), w.copy()
        # A key's bias shifts every score of a query alike, which the softmax
        # cancels: its true gradient is 0, and Adam turns the float32 rounding
        # left in it (about 1e-9) into lr-sized steps. Only there are the two
        # sides free to differ.
        key = slice(C, 2 * C) if n.endswith("qkv_proj.bias") else slice(0, C) if n.endswith("kv_proj.bias") else None
        if key is not None:
            got[key] = w[key] = 0
        np.testing.assert_allclose(got, w, atol=1e-4, err_msg=n)


def test_pad_rows_do_not_change_the_real_rows():
    """A batch's padding never reaches its real tokens: row 0 alone and row 0
    beside a shorter row give the same loss."""
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=23, max_src_len=9, max_tgt_len=8, enc_layers=1,
                        dec_layers=1, n_head=2, n_embd=16, dropout=0.0)
    model = Seq2Seq(cfg, seed=2)
    src, mask, tin, tout = batch(np.random.default_rng(4), 19, 23, B=2)
    alone = model.loss(src[:1], mask[:1], tin[:1], tout[:1])
    lp = model.logprobs(src, mask, tin)
    lp0 = model.logprobs(src[:1], mask[:1], tin[:1])
    np.testing.assert_allclose(lp[0], lp0[0], atol=1e-5)
    assert np.isfinite(alone)
    assert (tout == PAD).any()


def test_twin_drops_out_only_where_ours_does():
    """With the embeddings' and sublayers' dropout off, the twin in training
    mode computes what it computes in eval mode: no other site drops (PyTorch's
    layers would drop attention probabilities and FFN hidden units too)."""
    from dataclasses import replace
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=23, max_src_len=9, max_tgt_len=8, enc_layers=2,
                        dec_layers=2, n_head=2, n_embd=16, dropout=0.5)
    tm = ts.from_ours(Seq2Seq(cfg, seed=3))
    sublayer = [m for n, m in tm.named_modules() if n.rsplit(".", 1)[-1] in ("dropout1", "dropout2", "dropout3")]
    assert len(sublayer) == 2 * 2 + 2 * 3 and all(m.p == 0.5 for m in sublayer)   # where ours drops
    for m in sublayer:
        m.p = 0.0
    tm.cfg = replace(cfg, dropout=0.0)       # the embeddings'
    src, mask, tin, _ = torch_batch(*batch(np.random.default_rng(0), 19, 23))
    torch.manual_seed(0)
    tm.train()
    with torch.no_grad():
        trained = tm(src, mask, tin)
    tm.eval()
    with torch.no_grad():
        evaluated = tm(src, mask, tin)
    assert torch.allclose(trained, evaluated, atol=1e-9)
