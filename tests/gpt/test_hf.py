"""Hugging Face GPT-2 interop: a randomly initialised GPT2LMHeadModel saved
by transformers imports with the same logits, and our checkpoint exports
and loads back in transformers with the same logits."""
import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mingpt_c.gpt import checkpoint  # noqa: E402
from mingpt_c.gpt.hf import export_gpt2, import_gpt2  # noqa: E402
from mingpt_c.gpt.model import GPT  # noqa: E402


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make biases and norms non-trivial so every tensor matters
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    d = tmp_path_factory.mktemp("hf")
    model.save_pretrained(d, safe_serialization=True)
    return model, d


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_import_matches_transformers(hf_model, tmp_path):
    model, d = hf_model
    ids = np.random.default_rng(0).integers(0, 300, size=(2, 32)).astype(np.int32)
    out = import_gpt2(d, tmp_path / "ours", tokenizer="byte")
    loaded = checkpoint.load(out)
    ours = GPT(loaded["cfg"], loaded["params"]).forward(ids)
    want = hf_logits(model, ids)
    assert_close(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_export_loads_in_transformers(hf_model, tmp_path):
    model, d = hf_model
    ck = import_gpt2(d, tmp_path / "ours", tokenizer="none")
    loaded = checkpoint.load(ck)
    loaded["params"] += np.float32(0.01)  # our own weights now, not the imported ones
    checkpoint.save(ck, loaded["cfg"], loaded["params"])
    exported = export_gpt2(ck, tmp_path / "hf_out")
    back = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    ids = np.random.default_rng(1).integers(0, 300, size=(2, 17)).astype(np.int32)
    ours = GPT(loaded["cfg"], loaded["params"]).forward(ids)
    want = hf_logits(back, ids)
    assert_close(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_import_rejects_other_models(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    from mingpt_c.errors import CheckpointError
    with pytest.raises(CheckpointError, match="only gpt2"):
        import_gpt2(tmp_path, tmp_path / "o")
