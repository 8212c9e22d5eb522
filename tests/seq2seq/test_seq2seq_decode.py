"""Decoding: beam search equals an exhaustive search when its beam holds
every prefix (length penalty included, both normalisations); cached and
uncached decoding give the same outputs; greedy is beam search of width 1
without a length penalty; decoding never drops out; each cache keeps its
own copy of the source mask. An ensemble: its beam search is the exhaustive
best under the renormalised mean of its models' log-probabilities, cached
and uncached agree, an ensemble of one model decodes as that model, and
models of other vocabularies are refused."""
import itertools
from dataclasses import replace

import numpy as np
import pytest

from mingpt_c.seq2seq import decode as decode_mod
from mingpt_c.errors import ShapeError
from mingpt_c.seq2seq.data import pad
from mingpt_c.seq2seq.decode import DecodeConfig, Ensemble, beam_search, decode, greedy, length_norm
from mingpt_c.seq2seq.model import BOS, EOS, PAD, Seq2Seq, Seq2SeqConfig

SYMBOLS = [3, 4, 5, 6]        # what may be generated besides </s> (<unk> included)
MAX_OUT = 4                   # tokens per output, </s> included


@pytest.fixture(scope="module")
def model():
    cfg = Seq2SeqConfig(src_vocab_size=9, tgt_vocab_size=7, max_src_len=8, max_tgt_len=8, enc_layers=2,
                        dec_layers=2, n_head=2, n_embd=16, dropout=0.0)
    m = Seq2Seq(cfg, seed=11)
    m.p["model.decoder.embed_tokens.weight"][...] *= 4.0   # sharper next-token distributions
    return m


SOURCES = [[4, 5, 6], [7, 8, 4, 5, 6, 7], [8]]


@pytest.fixture(scope="module")
def other():
    """Another architecture over the same vocabularies, for ensembles."""
    cfg = Seq2SeqConfig(src_vocab_size=9, tgt_vocab_size=7, max_src_len=8, max_tgt_len=8, enc_layers=1,
                        dec_layers=1, n_head=4, n_embd=16, dropout=0.0)
    m = Seq2Seq(cfg, seed=12)
    m.p["model.decoder.embed_tokens.weight"][...] *= 4.0
    return m


def ensemble_logprobs(models):
    """The log-probabilities an ensemble decodes with: the mean of its
    models', renormalised."""
    def logprobs(s, m, tin):
        mean = np.mean([mod.logprobs(s, m, tin) for mod in models], axis=0)
        top = mean.max(-1, keepdims=True)
        return mean - (top + np.log(np.exp(mean - top).sum(-1, keepdims=True)))
    return logprobs


def exhaustive(model, src, alpha, norm, logprobs=None):
    """(best normalised score, tokens) over every output of at most MAX_OUT
    tokens (</s> closing each; at the last position only </s>), under
    model's log-probabilities or the given ones."""
    best = (-np.inf, None)
    s = np.array([src], np.int32)
    m = np.ones_like(s)
    for L in range(1, MAX_OUT + 1):
        for prefix in itertools.product(SYMBOLS, repeat=L - 1):
            tin = np.array([[BOS, *prefix]], np.int32)
            lp = (logprobs or model.logprobs)(s, m, tin)[0]       # (L, V)
            ys = [*prefix, EOS]
            score = sum(lp[t, y] for t, y in enumerate(ys))
            score /= length_norm(L, alpha, norm)
            if score > best[0]:
                best = (score, list(prefix))
    return best


@pytest.mark.parametrize("alpha,norm", [(0.0, "gnmt"), (1.0, "gnmt"), (0.6, "hf")])
def test_wide_beam_is_the_exhaustive_best(model, alpha, norm):
    dc = DecodeConfig(beam=len(SYMBOLS) ** (MAX_OUT - 1), length_penalty=alpha, norm=norm, len_a=0.0,
                      len_b=MAX_OUT)
    got = beam_search(model, SOURCES, dc)
    for src, hyps in zip(SOURCES, got):
        score, tokens = exhaustive(model, src, alpha, norm)
        assert hyps[0][1] == tokens
        assert hyps[0][0] == pytest.approx(score, abs=1e-5)   # float32 logits, cached vs not


def test_narrow_beam_never_beats_the_exhaustive_best(model):
    dc = DecodeConfig(beam=2, length_penalty=1.0, len_a=0.0, len_b=MAX_OUT)
    for src, hyps in zip(SOURCES, beam_search(model, SOURCES, dc)):
        assert hyps[0][0] <= exhaustive(model, src, 1.0, "gnmt")[0] + 1e-5


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_and_uncached_decoding_agree(model, beam):
    dc = DecodeConfig(beam=beam, len_a=1.0, len_b=2, batch_size=2)   # two batches, several lengths
    assert decode(model, SOURCES, dc, cached=True) == decode(model, SOURCES, dc, cached=False)


def test_greedy_is_the_argmax_chain(model):
    dc = DecodeConfig(len_a=0.0, len_b=MAX_OUT)
    for src, out in zip(SOURCES, greedy(model, SOURCES, dc)):
        s = np.array([src], np.int32)
        tin = [BOS]
        for _ in range(MAX_OUT):
            lp = model.logprobs(s, np.ones_like(s), np.array([tin], np.int32))[0, -1]
            lp[[PAD, BOS]] = -np.inf
            if len(tin) == MAX_OUT:
                break
            tin.append(int(lp.argmax()))
            if tin[-1] == EOS:
                break
        want = tin[1:]
        assert out == (want[:want.index(EOS)] if EOS in want else want)


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_never_drops_out(model, beam):
    """The training dropout rate in the config leaves decoding and the
    uncached log-probabilities alone: the same weights decode the same."""
    dropped = Seq2Seq(replace(model.cfg, dropout=0.5), model.params.copy())
    dc = DecodeConfig(beam=beam, len_a=1.0, len_b=3)
    assert decode(dropped, SOURCES, dc) == decode(model, SOURCES, dc)
    s = np.array([SOURCES[1]], np.int32)
    tin = np.array([[BOS, 3, 4, 5]], np.int32)
    np.testing.assert_array_equal(dropped.logprobs(s, np.ones_like(s), tin), model.logprobs(s, np.ones_like(s), tin))


def test_caches_over_one_mask_decode_as_alone(model):
    """A cache keeps its own copy of the source mask: two caches started
    from the same arrays, stepped in turn and reordered (a finished source
    dropped), each give the logits of a cache of the kept sources alone,
    and the caller's mask is left as it was."""
    src, mask = pad(SOURCES, PAD)
    given = mask.copy()
    caches = [model.start(src, mask, MAX_OUT) for _ in range(2)]
    bos = np.full(len(SOURCES), BOS, np.int32)
    for c in caches:
        model.step(c, bos, 0)
    keep = np.array([1, 2])                   # source 0 finished: rows 0, 1 take sources 1, 2
    for c in caches:
        c.reorder(keep)
    alone = model.start(src[keep], given[keep], MAX_OUT)
    model.step(alone, bos[keep], 0)
    want = model.step(alone, np.array([3, 4], np.int32), 1)
    for c in caches:
        np.testing.assert_array_equal(model.step(c, np.array([3, 4], np.int32), 1), want)
    np.testing.assert_array_equal(mask, given)


def test_batched_decoding_equals_one_by_one(model):
    dc = DecodeConfig(beam=3, len_a=1.0, len_b=3, batch_size=8)
    together = decode(model, SOURCES, dc)
    alone = [decode(model, [s], dc)[0] for s in SOURCES]
    assert together == alone


@pytest.mark.parametrize("V,K", [(3000, 4), (4096, 1), (300, 2)])
def test_best_extensions_are_a_stable_sort_of_all(V, K):
    """_best's n best extensions per source, from the logits' one-pass
    statistics and set maxima (a vocabulary wide enough for the sets, and
    one of singletons), are what a stable sort of every base + log-softmax
    score gives: masked tokens, ties, -inf logits, a closed beam and a row
    forced to </s> included."""
    rng = np.random.default_rng(3)
    N, n, eos, masked = 5, 2 * K, 2, (0, 1)
    R = N * K
    z = (rng.normal(size=(R, V)) * 3).astype(np.float32)
    z[:, 11] = z[:, 10] = z.max(1) + 0.25                  # a tie at the top of every row
    z[0, 50:60] = -np.inf
    base = rng.normal(size=R)
    base[1 % R] = -np.inf
    forced = np.zeros(R, bool)
    forced[R - 1] = True
    forced_lp = np.where(forced, -0.5, -np.inf)
    zc = z.copy()
    m, L, sets = decode_mod._normalise(zc, n, masked)
    assert (sets is None) == (decode_mod._set_count(V, n) == 0)
    flat, cand = decode_mod._best(zc, m, L, sets, base, K, n, forced, forced_lp, eos)
    z64 = z.astype(np.float64)
    lp = z64 - z64.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lp[:, masked] = -np.inf
    lp[forced] = -np.inf
    lp[forced, eos] = forced_lp[forced]
    full = (base[:, None] + lp).reshape(N, K * V)
    want = np.argsort(-full, axis=1, kind="stable")[:, :n]
    assert np.array_equal(flat, want)
    np.testing.assert_allclose(cand, np.take_along_axis(full, want, 1), rtol=1e-9, atol=1e-6)

# ---------------------------------------------------------------- ensembles


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_ensemble_wide_beam_is_the_exhaustive_best(model, other, alpha):
    dc = DecodeConfig(beam=len(SYMBOLS) ** (MAX_OUT - 1), length_penalty=alpha, len_a=0.0, len_b=MAX_OUT)
    ens = Ensemble([model, other])
    for src, hyps in zip(SOURCES, beam_search(ens, SOURCES, dc)):
        score, tokens = exhaustive(model, src, alpha, "gnmt", ensemble_logprobs([model, other]))
        assert hyps[0][1] == tokens
        assert hyps[0][0] == pytest.approx(score, abs=1e-5)
    # the two models alone disagree somewhere, or the test would prove little
    alone = [decode(m, SOURCES, DecodeConfig(len_a=0.0, len_b=MAX_OUT)) for m in (model, other)]
    assert alone[0] != alone[1]


@pytest.mark.parametrize("beam", [1, 3])
def test_ensemble_cached_and_uncached_agree(model, other, beam):
    dc = DecodeConfig(beam=beam, len_a=1.0, len_b=2, batch_size=2)
    ens = Ensemble([model, other])
    assert decode(ens, SOURCES, dc, cached=True) == decode(ens, SOURCES, dc, cached=False)


@pytest.mark.parametrize("beam", [1, 3])
def test_ensemble_of_one_decodes_as_the_model(model, beam):
    dc = DecodeConfig(beam=beam, len_a=1.0, len_b=2)
    assert decode(Ensemble([model]), SOURCES, dc) == decode(model, SOURCES, dc)


def test_ensemble_refuses_another_vocabulary(model):
    cfg = replace(model.cfg, tgt_vocab_size=8)
    with pytest.raises(ShapeError, match="share their vocabularies"):
        Ensemble([model, Seq2Seq(cfg, seed=1)])

# ---------------------------------------------------------------- right to left, re-scoring


def right_to_left(model):
    """The same weights writing right to left."""
    return Seq2Seq(replace(model.cfg, reverse_target=True), model.params.copy())


OUTPUTS = [[3, 4], [], [6, 5, 4]]      # one output per source of SOURCES, reading order


def reference_logprob(model, src, out):
    """float64: the sum of the teacher-forced log-probabilities of out + </s>."""
    s = np.array([src], np.int32)
    lp = model.logprobs(s, np.ones_like(s), np.array([[BOS, *out]], np.int32))[0]
    return sum(lp[t, y] for t, y in enumerate([*out, EOS]))


def test_rescore_is_the_teacher_forced_log_probability(model, other):
    got = decode_mod.rescore(model, SOURCES, OUTPUTS, batch_size=2)
    want = [reference_logprob(model, s, o) for s, o in zip(SOURCES, OUTPUTS)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    ens = decode_mod.rescore(Ensemble([model, other]), SOURCES, OUTPUTS)
    np.testing.assert_allclose(ens, np.mean([want, decode_mod.rescore(other, SOURCES, OUTPUTS)], 0), atol=1e-5)


def test_outputs_of_one_source_share_its_encoding(model):
    """forward_shared: each source encoded once, its rows of the decoder
    reading that one memory, gives forward()'s logits of the sources
    repeated row by row."""
    src, mask = pad(SOURCES, PAD)
    rows = np.array([2, 0, 0, 1, 2, 1, 0])
    tin, _ = pad([[3], [4, 5], [], [6, 6, 3], [5], [3, 4], [4]], PAD, bos=BOS)
    shared = model.forward_shared(src, mask, rows, tin).copy()
    np.testing.assert_array_equal(shared, model.forward(src[rows], mask[rows], tin))
    with pytest.raises(ShapeError, match="rows must index"):
        model.forward_shared(src, mask, [0, 3, 1, 0, 0, 0, 0], tin)
    with pytest.raises(ShapeError, match="one entry per tgt_in row"):
        model.forward_shared(src, mask, rows[:3], tin)


def test_rescore_of_many_outputs_per_source_in_any_order(model):
    """Several outputs of each source, the sources interleaved, batches that
    cut through a source's outputs: each scored as on its own."""
    outs = [[], [3], [4, 5], [6, 6, 3], [5, 3, 4]]
    pairs = [(i, o) for o in outs for i in (1, 0, 2)]
    srcs, hyps = [SOURCES[i] for i, _ in pairs], [o for _, o in pairs]
    got = decode_mod.rescore(model, srcs, hyps, batch_size=4)
    np.testing.assert_allclose(got, [reference_logprob(model, s, o) for s, o in zip(srcs, hyps)], atol=1e-5)


def test_rescore_gives_beam_search_its_own_scores(model):
    dc = DecodeConfig(beam=4, length_penalty=1.0, len_a=1.0, len_b=2)
    for src, hyps in zip(SOURCES, beam_search(model, SOURCES, dc, nbest=4)):
        raw = [score * length_norm(len(h) + 1, 1.0) for score, h in hyps]
        np.testing.assert_allclose(decode_mod.rescore(model, [src] * len(hyps), [h for _, h in hyps]), raw,
                                   atol=1e-5)


def test_right_to_left_model_scores_and_writes_reversed(model):
    r2l = right_to_left(model)
    np.testing.assert_array_equal(decode_mod.rescore(r2l, SOURCES, OUTPUTS),
                                  decode_mod.rescore(model, SOURCES, [o[::-1] for o in OUTPUTS]))
    for beam in (1, 3):
        dc = DecodeConfig(beam=beam, len_a=1.0, len_b=2)
        assert decode(r2l, SOURCES, dc) == [o[::-1] for o in decode(model, SOURCES, dc)]


def test_empty_source_decodes_and_rescores(model):
    """An empty source is one masked column, in decoding and re-scoring
    alike: rescore gives beam search its own score for it."""
    dc = DecodeConfig(beam=3, length_penalty=1.0, len_a=1.0, len_b=2)
    (hyps,) = beam_search(model, [[]], dc, nbest=3)
    raw = [score * length_norm(len(h) + 1, 1.0) for score, h in hyps]
    np.testing.assert_allclose(decode_mod.rescore(model, [[]] * len(hyps), [h for _, h in hyps]), raw, atol=1e-5)
    assert len(decode(model, [[], SOURCES[0]], DecodeConfig())) == 2


def test_rescore_scores_what_a_model_cannot_write_as_impossible(model):
    long = [3] * model.cfg.max_tgt_len                     # no room for </s>
    got = decode_mod.rescore(model, [SOURCES[0]] * 2, [long, [3]])
    assert got[0] == -np.inf and np.isfinite(got[1])


def test_rerank_chooses_among_both_models_proposals(model, other):
    """The candidates are both beams' 4 best (the right-to-left model's
    reversed into reading order); the winner has the best mix of the two
    models' float64 log-probabilities, normalised by length. Weight 0: the
    best by the model alone; more weight to the other model changes the
    choice."""
    r2l = right_to_left(other)
    dc = DecodeConfig(beam=4, length_penalty=3.0, len_a=1.0, len_b=2)   # a strong penalty: outputs of 2-7 tokens
    alone = decode(model, SOURCES, dc)
    proposals = [[h for _, h in a] + [h[::-1] for _, h in b if h[::-1] not in [x for _, x in a]]
                 for a, b in zip(beam_search(model, SOURCES, dc, nbest=4), beam_search(r2l, SOURCES, dc, nbest=4))]
    assert any(len(p) > 4 for p in proposals)                            # the other model adds candidates

    def total(w, src, h):
        return ((1 - w) * reference_logprob(model, src, h) + w * reference_logprob(other, src, h[::-1])) \
            / length_norm(len(h) + 1, 3.0)

    for w in (0.0, 0.3, 1.0):
        want = [max(p, key=lambda h: total(w, src, h)) for src, p in zip(SOURCES, proposals)]
        assert decode(model, SOURCES, replace(dc, rerank_weight=w), rescorers=[r2l]) == want
        assert (want == alone) == (w == 0.0)                             # the other model changes the choice


def test_rerank_rescores_only_what_a_model_did_not_propose(model, other, monkeypatch):
    """A single model keeps its beam's scores for its own proposals (an
    Ensemble's beam scores differently: it rescores them all)."""
    r2l = right_to_left(other)
    dc = DecodeConfig(beam=4, length_penalty=3.0, len_a=1.0, len_b=2)
    ranked = sorted(SOURCES, key=len)                                    # the order decode() takes them in
    mine = [[tuple(h) for _, h in hs] for hs in beam_search(model, ranked, dc, nbest=4)]
    theirs = [[tuple(h[::-1]) for _, h in hs] for hs in beam_search(r2l, ranked, dc, nbest=4)]
    every = [a + [h for h in b if h not in a] for a, b in zip(mine, theirs)]
    calls, real = [], decode_mod.rescore
    monkeypatch.setattr(decode_mod, "rescore", lambda m, s, h, bs: calls.append((m, [tuple(x) for x in h]))
                        or real(m, s, h, bs))
    decode(model, SOURCES, dc, rescorers=[r2l])
    want = {id(model): [h for e, a in zip(every, mine) for h in e if h not in a],
            id(r2l): [h for e, b in zip(every, theirs) for h in e if h not in b]}
    assert {id(m): h for m, h in calls} == {k: v for k, v in want.items() if v}
    assert want[id(model)] and want[id(r2l)]                             # both had something to score
    calls.clear()
    ens = Ensemble([model, other])
    ens_mine = [[tuple(h) for _, h in hs] for hs in beam_search(ens, ranked, dc, nbest=4)]
    decode(ens, SOURCES, dc, rescorers=[r2l])
    assert calls[0][0] is ens
    assert calls[0][1] == [h for a, b in zip(ens_mine, theirs) for h in a + [x for x in b if x not in a]]


def test_rerank_needs_a_beam_and_one_direction_per_ensemble(model):
    with pytest.raises(ShapeError, match="of at least 2"):
        decode(model, SOURCES, DecodeConfig(beam=1), rescorers=[model])
    with pytest.raises(ShapeError, match="one direction"):
        Ensemble([model, right_to_left(model)])
