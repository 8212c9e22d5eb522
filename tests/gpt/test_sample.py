"""Sampling: reproducible with a seed, KV-cache tokens equal full-recompute
tokens (also past the block size, where the window slides), end-of-text
stops generation, top-k 1 is greedy."""
import numpy as np
import pytest

from mingpt_c.errors import DataError
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import GPT
from mingpt_c.gpt.sample import KVCache, forward_cached, forward_full, generate, pick, stream_text


@pytest.fixture(scope="module")
def model():
    cfg = GPTConfig(vocab_size=31, block_size=12, n_layer=2, n_head=2, n_embd=16)
    m = GPT(cfg, seed=11)
    m.params *= 8.0  # sharper, more varied distributions than the 0.02 init
    return m


def run(model, seed, **kw):
    return list(generate(model, [1, 2, 3], 30, np.random.default_rng(seed), **kw))


def test_cached_logits_match_full_forward(model):
    toks = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int32)
    cache = KVCache(model)
    forward_cached(model, cache, toks[:, :5])
    for t in range(5, 8):
        got = forward_cached(model, cache, toks[:, t:t + 1])
        want = forward_full(model, toks[:, :t + 1])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_call_step_equals_separate_kernels(model, threads):
    """mg_gpt_decode_step gives the bits of the separate kernel calls, on any
    thread count, and fills the caches the same way."""
    from mingpt_c import _lib
    n = _lib.get_num_threads()
    toks = [3, 1, 4, 1, 5, 9, 2]
    try:
        _lib.set_num_threads(threads)
        one, sep = KVCache(model), KVCache(model)
        for pos, tok in enumerate(toks):
            got = forward_cached(model, one, np.array([[tok]], np.int32)).copy()
            want = forward_cached(model, sep, np.array([[tok]], np.int32), one_call=False)
            assert np.array_equal(got, want)
        for a, b in zip(one.k + one.v, sep.k + sep.v):
            assert np.array_equal(a, b)
    finally:
        _lib.set_num_threads(n)


def test_one_call_step_rejects_bad_arguments(model):
    from mingpt_c._lib import lib
    from mingpt_c.errors import MinGPTError
    step = KVCache(model).step
    with pytest.raises(MinGPTError, match="token id 31 outside"):
        step(31, 0)
    with pytest.raises(MinGPTError, match="position 12 does not fit"):
        step(1, 12)
    args = list(step.args)
    args[2] = step.work.size - 1
    assert lib.mg_gpt_decode_step(*args, 1, 0, *step.sizes) != 0


def test_seed_reproducible(model):
    a, b, c = run(model, 5), run(model, 5), run(model, 6)
    assert a == b and a != c and len(a) == 30


def test_cache_equals_full_recompute_past_block_size(model):
    for seed in range(3):
        cached = run(model, seed, use_cache=True)
        full = run(model, seed, use_cache=False)
        assert cached == full  # 30 new tokens with a block of 12: the window slides


def test_stops_at_end_of_text(model):
    toks = run(model, 0)
    eot = toks[4]
    stopped = list(generate(model, [1, 2, 3], 30, np.random.default_rng(0), eot_token=eot))
    assert stopped[-1] == eot and len(stopped) == toks.index(eot) + 1


def test_top_k_one_is_greedy(model):
    assert run(model, 1, top_k=1) == run(model, 2, temperature=0)


def test_pick_respects_top_k_and_top_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    seen_k = {int(pick(logits, rng, top_k=2)[0]) for _ in range(300)}
    seen_p = {int(pick(logits, rng, top_p=0.7)[0]) for _ in range(300)}
    assert seen_k == {0, 1} and seen_p == {0, 1}


def test_bad_prompt(model):
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        list(generate(model, [99], 3, np.random.default_rng(0)))


def test_stream_text_holds_partial_utf8():
    data = "héllo ✓".encode()
    dec = lambda ids: bytes(ids).decode("utf-8", errors="replace")
    pieces = list(stream_text(dec, iter(data)))
    assert "".join(pieces) == "héllo ✓"
    assert all("\ufffd" not in p for p in pieces)
