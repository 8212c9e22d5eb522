"""Hugging Face interop: GPT2LMHeadModel and ViTForImageClassification
directories in and out; BERT-family directories (model_type "bert") in,
through encoder_checkpoint.import_bert. import_hf/export_hf dispatch on
config.json's model_type.

GPT: our checkpoints already use GPT2LMHeadModel tensor names and layout and a
GPT2Config-compatible config.json, so export writes the same files without
training state, and import reads config.json + model.safetensors (names with
or without the 'transformer.' prefix; buffers such as attn.bias and the tied
lm_head.weight are ignored).
ViT: our checkpoints are a ViTForImageClassification state dict with its
config.json, so import reads them as they are; the pixel mean/std come from
preprocessor_config.json when there is one, and export writes one back.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import checkpoint
from .errors import CheckpointError
from .model.config import GPTConfig
from .model.params import Layout, gpt_slots


def import_gpt2(hf_dir, out, tokenizer: str = "gpt2") -> Path:
    from .tokenizer import build_tokenizer

    d = Path(hf_dir)
    try:
        hf = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}/config.json: cannot read ({e})") from None
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{d}: model_type {hf.get('model_type')!r}; only gpt2 imports as a GPT")
    try:
        cfg = GPTConfig.from_hf(hf)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{d}/config.json: missing field {e}") from None
    if not (d / "model.safetensors").exists():
        raise CheckpointError(f"{d}: no model.safetensors (save the model with safe_serialization=True)")
    tensors, _ = checkpoint._load_safetensors(d / "model.safetensors")
    if "lm_head.weight" in tensors and "transformer.wte.weight" in tensors:
        import numpy as np
        if not np.array_equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"]):
            raise CheckpointError(f"{d}: lm_head.weight differs from wte (untied heads are not supported)")
    params = checkpoint.from_hf_tensors(Layout(gpt_slots(cfg)), tensors, str(d / "model.safetensors"))
    tok = None
    if tokenizer != "none":
        tok = build_tokenizer(tokenizer, lambda: iter(()))
        if tok.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"tokenizer {tokenizer} has {tok.vocab_size} tokens but the model only "
                                  f"{cfg.vocab_size}: pass --tokenizer with a matching one, or none")
        cfg.extra = {"tokenizer": tokenizer, "eot_token": tok.eot_token}
    return checkpoint.save(out, cfg, params, tok)


def export_gpt2(ckpt, out) -> Path:
    loaded = checkpoint.load(ckpt)
    return checkpoint.save(out, loaded["cfg"], loaded["params"], loaded["tokenizer"])


# ------------------------------------------------------------------ ViT


def import_vit(hf_dir, out) -> Path:
    from . import vit_checkpoint

    d = Path(hf_dir)
    if not (d / "model.safetensors").exists():
        raise CheckpointError(f"{d}: no model.safetensors (save the model with safe_serialization=True)")
    loaded = vit_checkpoint.load(d)
    cfg = loaded["cfg"]
    pre = d / "preprocessor_config.json"
    if pre.exists():
        try:
            pp = json.loads(pre.read_text())
            mean, std = pp.get("image_mean"), pp.get("image_std")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{pre}: unreadable ({e})") from None
        if mean and std and len(mean) == len(std) == cfg.num_channels:
            cfg.image_mean, cfg.image_std = [float(v) for v in mean], [float(v) for v in std]
    return vit_checkpoint.save(out, cfg, loaded["params"])


def export_vit(ckpt, out) -> Path:
    from . import vit_checkpoint

    loaded = vit_checkpoint.load(ckpt)
    cfg = loaded["cfg"]
    path = vit_checkpoint.save(out, cfg, loaded["params"])
    pp = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
          "size": {"height": cfg.image_size, "width": cfg.image_size}, "resample": 2,
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
          "image_mean": cfg.image_mean, "image_std": cfg.image_std}
    (path / "preprocessor_config.json").write_text(json.dumps(pp, indent=2) + "\n")
    return path

# ------------------------------------------------------------------ BERT-style encoder


def export_encoder(ckpt, out) -> Path:
    """Our encoder checkpoint is already a BertForMaskedLM /
    BertForSequenceClassification directory: written again without the
    training state. The trunk loads as transformers' BertModel with the same
    hidden states; a classifier head reads the [CLS] or mean-pooled state
    directly, without BERT's pooler, so BertForSequenceClassification would
    put a fresh pooler in front of it. A WordPiece vocabulary goes along as
    vocab.txt; a BPE trained here stays in our tokenizer.json, which
    transformers' tokenizers do not read."""
    from . import encoder_checkpoint as ec

    loaded = ec.load(ckpt)
    cfg = loaded["cfg"]
    if cfg.pre_ln:
        raise CheckpointError(f"{loaded['path']}: pre-layernorm encoder blocks have no Hugging Face BERT "
                              f"equivalent (BERT is post-layernorm)")
    if cfg.bigram_buckets:
        raise CheckpointError(f"{loaded['path']}: hashed bigram embeddings have no Hugging Face BERT "
                              f"equivalent")
    return ec.save(out, cfg, loaded["params"], loaded["tokenizer"])

# ------------------------------------------------------------------ dispatch


def _model_type(d: Path) -> str:
    try:
        hf = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}/config.json: cannot read ({e})") from None
    return hf.get("model_type")


def import_hf(hf_dir, out, tokenizer: str = "gpt2") -> Path:
    """A Hugging Face directory (gpt2, vit or bert) -> our checkpoint."""
    kind = _model_type(Path(hf_dir))
    if kind == "vit":
        return import_vit(hf_dir, out)
    if kind == "bert":
        from .encoder_checkpoint import import_bert
        return import_bert(hf_dir, out)
    if kind == "gpt2":
        return import_gpt2(hf_dir, out, tokenizer)
    raise CheckpointError(f"{hf_dir}: model_type {kind!r} is not supported (gpt2, vit, bert)")


def export_hf(ckpt, out) -> Path:
    """Our checkpoint (GPT, ViT or encoder) -> a Hugging Face directory."""
    kind = _model_type(checkpoint.resolve(ckpt))
    if kind == "vit":
        return export_vit(ckpt, out)
    if kind == "bert":
        return export_encoder(ckpt, out)
    return export_gpt2(ckpt, out)
