"""Encoder data: BERT's masking measured on a large sample (acceptance 4),
JSON Lines reading with line-numbered errors, labels, framing, batching."""
import json
import lzma

import numpy as np
import pytest

from mingpt_c.encoder.data import (IGNORE, drop_tokens, frame, label_ids, label_names, length_batches, mask_tokens, pad_batch, read_jsonl)
from mingpt_c.errors import DataError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
V = 1000


def sample_batch(rng, B=400, T=128):
    lengths = rng.integers(5, T + 1, size=B)
    tokens = np.full((B, T), PAD, np.int32)
    mask = np.zeros((B, T), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(5, V, size=n)
        tokens[i, 0], tokens[i, n - 1] = CLS, SEP
        mask[i, :n] = 1
    tokens[:, 10][mask[:, 10] == 1] = UNK  # an [UNK] here and there: special, never chosen
    return tokens, mask


def test_masking_proportions():
    rng = np.random.default_rng(0)
    tokens, mask = sample_batch(rng)
    specials = [PAD, UNK, CLS, SEP, MASK]
    inputs, targets = mask_tokens(tokens, mask, specials, MASK, V, np.random.default_rng(1))
    eligible = (mask == 1) & ~np.isin(tokens, specials)
    chosen = targets != IGNORE
    n_el, n_ch = eligible.sum(), chosen.sum()
    assert n_el > 20000
    # never a special or a pad; targets are the original tokens
    assert not (chosen & ~eligible).any()
    assert np.array_equal(targets[chosen], tokens[chosen])
    # unchosen positions are untouched
    assert np.array_equal(inputs[~chosen], tokens[~chosen])
    # 15% chosen; of those 80% [MASK], 10% random, 10% unchanged (5-sigma bounds)
    def within(k, n, p):
        return abs(k / n - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert within(n_ch, n_el, 0.15)
    is_mask = inputs[chosen] == MASK
    same = inputs[chosen] == tokens[chosen]
    rand = ~is_mask & ~same
    assert within(is_mask.sum(), n_ch, 0.8)
    # a random draw can hit the original token (1 in 995): "unchanged" slightly over 10%
    assert within(same.sum(), n_ch, 0.1 + 0.1 / (V - 5))
    assert within(rand.sum(), n_ch, 0.1 - 0.1 / (V - 5))
    assert not np.isin(inputs[chosen][rand], specials).any()
    # random replacements are uniform over the ordinary vocabulary: as many
    # distinct ids as k uniform draws from V - 5 give
    k, n = rand.sum(), V - 5
    assert abs(len(np.unique(inputs[chosen][rand])) / (n * (1 - (1 - 1 / n) ** k)) - 1) < 0.1


def test_token_dropout_hides_ordinary_tokens_only():
    tokens, mask = sample_batch(np.random.default_rng(0))
    specials = [PAD, UNK, CLS, SEP, MASK]
    kept = drop_tokens(tokens, mask, specials, np.random.default_rng(1), 0.2)
    eligible = (mask == 1) & ~np.isin(tokens, specials)
    hidden = (mask == 1) & (kept == 0)
    assert kept.dtype == mask.dtype and not (kept > mask).any()      # padding stays padding
    assert not (hidden & ~eligible).any()                            # [CLS], [SEP], [UNK] always stay
    n = eligible.sum()
    assert abs(hidden.sum() / n - 0.2) < 5 * np.sqrt(0.2 * 0.8 / n)
    assert np.array_equal(drop_tokens(tokens, mask, specials, np.random.default_rng(1), 0.0), mask)


@pytest.mark.parametrize("pattern", ["gpt2", "none", "phrases"])
def test_trained_bpe_pattern(pattern):
    """GPT-2's pre-split keeps every token within a word; "none" lets
    frequent phrases become one token; "phrases" builds them from whole
    words, after the word tokens. Either way a text round-trips."""
    from mingpt_c.encoder.data import BPEWithSpecials

    texts = [f"A waste of time, {w} and a waste of money." for w in ("truly", "sadly", "really", "again")] * 20
    tok = BPEWithSpecials.train(texts, 400, lower=True, pattern=pattern, phrase_share=0.5)
    pieces = [tok.decode([i]) for i in range(256, tok.vocab_size - 5)]
    crosses = [p for p in pieces if " " in p.strip()]
    assert bool(crosses) == (pattern != "gpt2"), crosses[:5]
    ids = tok.encode(texts[1])
    assert tok.decode(ids) == texts[1].lower()
    if pattern != "gpt2":
        assert len(ids) < len(BPEWithSpecials.train(texts, 400, lower=True).encode(texts[1]))
    if pattern == "phrases":   # phrases of whole words: every word a token first
        first = min(pieces.index(p) for p in crosses)
        assert {" waste", " money", " truly", " again"} <= set(pieces[:first])
        assert " waste of" in crosses
        with pytest.raises(DataError, match="phrase share"):
            BPEWithSpecials.train(texts, 400, pattern=pattern, phrase_share=1.5)


def test_masked_positions_alone_enter_the_loss():
    """Unmasked positions carry -100, and the loss ignores them: changing an
    unmasked token's target cannot change the loss."""
    from mingpt_c.encoder.model import Encoder, EncoderConfig

    cfg = EncoderConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    model = Encoder(cfg, seed=0)
    rng = np.random.default_rng(3)
    tokens, mask = sample_batch(rng, B=4, T=16)
    tokens = np.where(tokens >= 50, tokens % 45 + 5, tokens).astype(np.int32)
    inputs, targets = mask_tokens(tokens, mask, [PAD, UNK, CLS, SEP, MASK], MASK, 50, np.random.default_rng(0))
    assert (targets != IGNORE).sum() > 0
    loss = model.mlm(inputs, mask, targets)
    h = model.hidden(inputs, mask).copy()
    sel = targets != IGNORE
    # the loss equals the mean cross-entropy recomputed over the chosen positions only
    p = model.p
    t = "cls.predictions."
    from mingpt_c import ops
    z = ops.matmul_forward(np.ascontiguousarray(h[sel]), p[t + "transform.dense.weight"], p[t + "transform.dense.bias"])
    z = ops.gelu_erf_forward(z)
    z, _, _ = ops.layernorm_forward(z, p[t + "transform.LayerNorm.weight"], p[t + "transform.LayerNorm.bias"], 1e-12)
    logits = z.astype(np.float64) @ p["bert.embeddings.word_embeddings.weight"].T + p[t + "bias"]
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want = np.mean(lse - logits[np.arange(sel.sum()), targets[sel]])
    assert abs(loss - want) < 1e-4
    assert model.mlm(inputs, mask, np.full_like(targets, IGNORE)) == 0.0


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_jsonl_and_labels(tmp_path):
    p = write(tmp_path / "d.jsonl", ['{"text": "good", "label": "pos"}', "",
                                     '{"text": "bad", "label": "neg"}', '{"text": "meh", "label": "mid"}'])
    texts, labels = read_jsonl(p)
    assert texts == ["good", "bad", "meh"] and labels == ["pos", "neg", "mid"]
    names = label_names(labels)
    assert names == ["mid", "neg", "pos"]
    assert label_ids(labels, names, p).tolist() == [2, 1, 0]
    assert label_names([10, 2, 1]) == [1, 2, 10]
    with pytest.raises(DataError, match="label \"other\" .* not seen in training"):
        label_ids(["pos", "other"], names, p)
    xz = tmp_path / "d.jsonl.xz"
    xz.write_bytes(lzma.compress(p.read_bytes()))
    assert read_jsonl(xz) == (texts, labels)


@pytest.mark.parametrize("line,msg", [
    ("{not json", "line 2: not valid JSON"),
    ('{"label": 1}', 'line 2: no "text"'),
    ('{"text": "x"}', 'line 2: no "label"'),
    ('{"text": "   ", "label": 1}', "line 2: the text is empty"),
    ('["text", 1]', "line 2: expected a JSON object"),
    ('{"text": "x", "label": [1]}', "line 2: the label must be a string or an integer"),
])
def test_read_jsonl_errors(tmp_path, line, msg):
    p = write(tmp_path / "bad.jsonl", [json.dumps({"text": "fine", "label": 0}), line])
    with pytest.raises(DataError, match=msg):
        read_jsonl(p)


def test_frame_truncates_and_pads():
    class Tok:
        special = {"[CLS]": CLS, "[SEP]": SEP, "[PAD]": PAD}
    seqs, cut = frame([[7] * 3, [8] * 20], Tok, max_len=10)
    assert cut == 1 and seqs[0].tolist() == [CLS, 7, 7, 7, SEP] and len(seqs[1]) == 10
    assert seqs[1][-1] == SEP
    x, m = pad_batch(seqs, PAD, multiple=16, max_len=10)
    assert x.shape == (2, 10) and m.sum(1).tolist() == [5, 10] and x[0, 5:].tolist() == [PAD] * 5


def test_length_batches_cover_everything():
    lengths = np.random.default_rng(0).integers(1, 500, size=1003)
    batches = length_batches(lengths, 32, np.random.default_rng(1))
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(1003))
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) == 32])
    assert spread < 50  # batches group similar lengths
