"""Hugging Face ViT interop: a ViTForImageClassification with random weights
saved by transformers imports with the same logits, and our checkpoint
exports and loads back in transformers with the same logits."""
import json

import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mingpt_c.vit import checkpoint as vit_checkpoint  # noqa: E402
from mingpt_c.errors import CheckpointError  # noqa: E402
from mingpt_c.hub import export_hf, import_hf  # noqa: E402
from mingpt_c.vit.model import ViT  # noqa: E402


def make_hf(d, channels, act="gelu", image_size=16):
    torch.manual_seed(channels)
    cfg = transformers.ViTConfig(image_size=image_size, patch_size=4, num_channels=channels, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 num_labels=5, hidden_act=act)
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # non-trivial norms, biases, embeddings: every tensor matters
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.2)
            elif "classifier" in name or "embeddings" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(d, safe_serialization=True)
    return model


def hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=torch.tensor(x)).logits.numpy()


@pytest.mark.parametrize("channels,act", [(1, "gelu"), (3, "gelu"), (3, "gelu_pytorch_tanh")])
def test_import_matches_transformers(tmp_path, channels, act):
    model = make_hf(tmp_path / "hf", channels, act)
    out = import_hf(tmp_path / "hf", tmp_path / "ours")
    loaded = vit_checkpoint.load(out)
    x = np.random.default_rng(0).normal(size=(3, channels, 16, 16)).astype(np.float32)
    ours = ViT(loaded["cfg"], loaded["params"]).forward(x)
    want = hf_logits(model, x)
    assert np.abs(want).max() > 0.1  # a real signal, not a zero head
    assert_close(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert loaded["cfg"].labels == [f"LABEL_{i}" for i in range(5)]


def test_export_loads_in_transformers(tmp_path):
    make_hf(tmp_path / "hf", 3)
    ck = import_hf(tmp_path / "hf", tmp_path / "ours")
    loaded = vit_checkpoint.load(ck)
    cfg = loaded["cfg"]
    cfg.labels = ["cat", "dog", "bird", "fish", "frog"]
    params = loaded["params"] + np.float32(0.01)  # our own weights now, not the imported ones
    vit_checkpoint.save(ck, cfg, params)
    exported = export_hf(ck, tmp_path / "hf_out")
    back = transformers.ViTForImageClassification.from_pretrained(exported).eval()
    assert back.config.id2label[1] == "dog"
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    ours = ViT(cfg, params).forward(x)
    want = hf_logits(back, x)
    assert_close(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    pp = json.loads((exported / "preprocessor_config.json").read_text())
    assert pp["image_mean"] == cfg.image_mean
    processor = transformers.ViTImageProcessor.from_pretrained(exported)
    assert processor.size["height"] == 16


def test_cli_import_export(tmp_path):
    from click.testing import CliRunner

    from cli import main

    make_hf(tmp_path / "hf", 1)
    r = CliRunner().invoke(main, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "ours"), "--out", str(tmp_path / "back")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "back" / "model.safetensors").exists()


def test_mismatched_tensor_is_a_clear_error(tmp_path):
    make_hf(tmp_path / "hf", 1)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["num_channels"] = 3  # the saved patch projection has 1
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        import_hf(tmp_path / "hf", tmp_path / "ours")


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "swin"}')
    with pytest.raises(CheckpointError, match="not supported"):
        import_hf(tmp_path, tmp_path / "o")
