"""device.Arena: a set of buffers rebuilt at other shapes reuses the memory
of the previous builds, grows only when a shape needs more, and a model
using it computes what fresh buffers compute."""
import numpy as np

from mingpt_c.device import CPU, Arena
from mingpt_c.seq2seq.model import Seq2Seq, Seq2SeqConfig


def test_a_rebuild_reuses_the_buffers_in_request_order():
    arena = Arena(CPU)
    a = arena.rewind().empty((4, 6))
    m = arena.empty((4, 6), np.uint8)
    z = arena.zeros((3,))
    assert a.shape == (4, 6) and m.dtype == np.uint8 and not z.any()
    z[:] = 7
    b = arena.rewind().empty((2, 5))             # smaller: a view of the same memory
    assert np.shares_memory(a, b)
    m2 = arena.empty((2, 5), np.uint8)
    assert np.shares_memory(m, m2)
    z2 = arena.zeros((3,))                       # cleared again
    assert np.shares_memory(z, z2) and not z2.any()
    big = arena.rewind().empty((5, 6))           # larger: slot 0 grows, the others are kept
    assert not np.shares_memory(big, a)
    f = arena.empty((2, 2), np.float32)          # another dtype in slot 1: a new buffer
    assert f.dtype == np.float32 and not np.shares_memory(f, m)


def _losses_and_grads(reuse: bool):
    cfg = Seq2SeqConfig(src_vocab_size=17, tgt_vocab_size=19, max_src_len=9, max_tgt_len=8, enc_layers=2,
                        dec_layers=2, n_head=2, n_embd=16, dropout=0.1)
    model = Seq2Seq(cfg, seed=2)
    rng = np.random.default_rng(0)
    out = []
    for it, (B, S, T) in enumerate([(3, 9, 8), (2, 4, 3), (4, 7, 5), (3, 9, 8)]):
        if not reuse:
            model._arena = Arena(CPU)                # fresh memory for every shape
        src = rng.integers(3, 17, (B, S)).astype(np.int32)
        tgt = rng.integers(3, 19, (B, T)).astype(np.int32)
        model.zero_grad()
        loss = model.loss(src, np.ones((B, S), np.int32), tgt, tgt, train=True, seed=it, label_smoothing=0.1)
        model.backward()
        out.append((loss, model.grads.copy()))
    return out


def test_a_model_on_an_arena_computes_what_fresh_buffers_do():
    for (l1, g1), (l2, g2) in zip(_losses_and_grads(True), _losses_and_grads(False)):
        assert l1 == l2
        assert np.array_equal(g1, g2)
