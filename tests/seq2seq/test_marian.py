"""MarianMT interop: a random-weight MarianMTModel built by transformers
(2+2 layers, width 64, SiLU, shared vocabulary, a final logits bias) with a
sentencepiece model trained here: imported, its logits equal
transformers' on a padded batch; exported, transformers loads it and gives
the same logits; greedy and beam search give generate()'s tokens;
fine-tuning on a TSV lowers the loss and the result exports back."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from conftest import invoke  # noqa: E402

LINES = ["the cat sat on the mat", "le chat est sur le tapis", "a quick brown fox jumps over the lazy dog",
         "un renard brun rapide saute par-dessus le chien paresseux", "how are you today?",
         "comment allez-vous aujourd'hui ?", "numbers 12 345 and 6789", "café, crème brûlée, naïve façade",
         "the weather is nice in spring", "il fait beau au printemps", "I would like a cup of tea, please.",
         "je voudrais une tasse de thé, s'il vous plaît."] * 4
SOURCES = ["the cat sat on the mat", "how are you?", "a quick brown fox", "café crème 12"]


def make_marian(d, seed=0):
    """A MarianMTModel directory: sentencepiece vocabulary trained on LINES,
    random weights (a non-zero final logits bias)."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    d.mkdir(parents=True, exist_ok=True)
    (d / "corpus.txt").write_text("\n".join(LINES) + "\n")
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=100,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   unk_id=0, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) != "<unk>"]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    hf = d / "hf"
    hf.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab))
    tok = MarianTokenizer(vocab=str(d / "vocab.json"), source_spm=str(d / "sp.model"),
                          target_spm=str(d / "sp.model"))
    tok.save_pretrained(hf)
    V = len(vocab)
    cfg = MarianConfig(vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                       activation_function="swish", max_position_embeddings=64, pad_token_id=V - 1,
                       eos_token_id=0, decoder_start_token_id=V - 1, forced_eos_token_id=0, scale_embedding=True,
                       share_encoder_decoder_embeddings=True, dropout=0.0)
    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():   # weights large enough that outputs differ by input
            if p.dim() == 2 and "embed_positions" not in name:
                p.normal_(0.0, 0.15)
        model.final_logits_bias.normal_(0.0, 0.5)
    model.save_pretrained(hf)
    return hf, tok, model


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    d = tmp_path_factory.mktemp("marian")
    hf, tok, model = make_marian(d)
    res = invoke("import", hf, "--out", d / "ours")
    assert res.exit_code == 0, res.stderr
    return {"dir": d, "hf": hf, "tok": tok, "model": model, "ours": d / "ours"}


def hf_batch(tok, texts, targets):
    enc = tok(texts, text_target=targets, padding=True, return_tensors="pt")
    return enc


def our_logits(path, enc, model_cfg_pad):
    from mingpt_c.seq2seq.train import load_model

    model, _ = load_model(path)
    src = enc["input_ids"].numpy().astype(np.int32)
    mask = enc["attention_mask"].numpy().astype(np.int32)
    labels = enc["labels"].numpy()
    tin = np.concatenate([np.full((len(labels), 1), model.cfg.bos_id), labels[:, :-1]], 1)
    tin = np.where(tin == -100, model.cfg.pad_id, tin).astype(np.int32)
    B, T = tin.shape
    return model.forward(src, mask, tin).reshape(B, T, -1).copy(), torch.tensor(tin, dtype=torch.long)


def test_imported_logits_equal_transformers(marian):
    tok, model = marian["tok"], marian["model"]
    enc = hf_batch(tok, SOURCES, ["le chat", "comment allez-vous aujourd'hui", "un renard", "thé"])
    ours, tin = our_logits(marian["ours"], enc, None)
    with torch.no_grad():
        want = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     decoder_input_ids=tin).logits.numpy()
    real = (enc["labels"].numpy() != -100) | (np.arange(tin.shape[1]) == 0)   # padded target rows aside
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)


def test_export_loads_in_transformers_with_the_same_logits(marian, tmp_path):
    from transformers import MarianMTModel, MarianTokenizer

    res = invoke("export", marian["ours"], "--out", tmp_path / "hf")
    assert res.exit_code == 0, res.stderr
    back = MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    tok = MarianTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(SOURCES, text_target=["le chat"] * 4, padding=True, return_tensors="pt")
    assert enc["input_ids"].tolist() == marian["tok"](SOURCES, padding=True, return_tensors="pt")["input_ids"].tolist()
    dec = torch.full((4, 3), marian["model"].config.decoder_start_token_id)
    with torch.no_grad():
        a = back(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=dec).logits
        b = marian["model"](input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                            decoder_input_ids=dec).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.parametrize("beams", [1, 4])
def test_decoding_equals_generate(marian, beams):
    from mingpt_c.seq2seq.decode import DecodeConfig, decode
    from mingpt_c.seq2seq.train import encode_sources, load_model

    tok, model = marian["tok"], marian["model"]
    enc = tok(SOURCES, padding=True, return_tensors="pt")
    n = 12
    with torch.no_grad():
        out = model.generate(**enc, num_beams=beams, length_penalty=1.0, max_new_tokens=n, do_sample=False,
                             early_stopping=False)
    want = []
    for row in out.tolist():
        row = row[1:]                                    # the decoder start
        want.append(row[:row.index(0)] if 0 in row else row)
    ours, vocabs = load_model(marian["ours"])
    src = encode_sources(ours, vocabs, SOURCES)
    got = decode(ours, src, DecodeConfig(beam=beams, length_penalty=1.0, norm="hf", len_a=0.0, len_b=n,
                                         search="hf"))
    assert got == want


def test_fine_tune_lowers_the_loss_and_exports(marian, tmp_path):
    from transformers import MarianMTModel

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\n" for a, b in zip(LINES[0::2], LINES[1::2])))
    res = invoke("seq2seq", "train", "--train", pairs, "--val", pairs, "--init-from", marian["ours"],
                 "--out", tmp_path / "ft", "--max-iters", "30", "--batch-size", "6", "--lr", "1e-3",
                 "--warmup-iters", "1", "--eval-limit", "2", "--log-interval", "1", "--no-progress",
                 "--threads", "1")
    assert res.exit_code == 0, res.stderr
    trains = [json.loads(line)["loss"] for line in open(tmp_path / "ft" / "log.jsonl") if '"train"' in line]
    assert len(trains) == 30 and np.mean(trains[-3:]) < 0.85 * np.mean(trains[:3]), trains
    res = invoke("export", tmp_path / "ft", "--out", tmp_path / "ft-hf")
    assert res.exit_code == 0, res.stderr
    MarianMTModel.from_pretrained(tmp_path / "ft-hf")
