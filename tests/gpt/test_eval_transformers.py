"""`mingpt eval` of an imported GPT-2 model equals transformers' loss on the
same file, tokenized whole by tiktoken, on texts with blank lines and runs
of spaces (where a file read in pieces could tokenize differently), the
file read in pieces far smaller than the text."""
import numpy as np
import pytest

from conftest import invoke

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mingpt_c import data  # noqa: E402
from mingpt_c.gpt import checkpoint  # noqa: E402
from mingpt_c.gpt.evaluate import evaluate_text  # noqa: E402
from mingpt_c.gpt.hf import import_gpt2  # noqa: E402
from mingpt_c.tokenizers.tokenizer import build_tokenizer  # noqa: E402

TEXT = ("First Citizen:\n\nBefore we proceed any further,   hear me speak.\n\n\n"
        "All:\n  Speak, speak.\n \n\t\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 12


def test_eval_equals_transformers_on_blank_lines(tmp_path, monkeypatch):
    try:
        tok = build_tokenizer("gpt2", None)
    except Exception as e:   # no cache, no GPT-2 files, no network
        pytest.skip(f"GPT-2's tokenizer files are not at hand ({e})")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = import_gpt2(tmp_path / "hf", tmp_path / "ours", tokenizer="gpt2")
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    monkeypatch.setattr(data, "CHUNK_BYTES", 7)   # many cuts, around blank lines too

    res = invoke("eval", ours, f, "--batch-size", "3")
    assert res.exit_code == 0, res.stderr
    got = evaluate_text(checkpoint.load(ours), f, batch_size=3)["loss"]   # what eval printed, unrounded
    assert f"loss {got:.4f}" in res.output

    ids = np.array(tok.encode(TEXT, disallowed_special=()), np.int64)   # the whole text at once
    T = 64
    n = (len(ids) - 1) // T
    x = torch.tensor(np.stack([ids[i * T:(i + 1) * T] for i in range(n)]))
    y = torch.tensor(np.stack([ids[i * T + 1:(i + 1) * T + 1] for i in range(n)]))
    with torch.no_grad():
        logits = model(x).logits
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    assert abs(got - want) <= 1e-5 * abs(want)
