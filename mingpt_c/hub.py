"""Hugging Face interop for `mingpt import` and `mingpt export`: dispatch
on config.json's model_type to the family that reads or writes it
(gpt/hf.py: GPT2LMHeadModel; vit/hf.py: ViTForImageClassification;
encoder/checkpoint.py and encoder/hf.py: BERT family; seq2seq/hf.py:
MarianMTModel)."""
from __future__ import annotations

import json
from pathlib import Path

from mingpt_c import checkpoint
from mingpt_c.errors import CheckpointError


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
        from mingpt_c.vit.hf import import_vit
        return import_vit(hf_dir, out)
    if kind == "bert":
        from mingpt_c.encoder.checkpoint import import_bert
        return import_bert(hf_dir, out)
    if kind == "gpt2":
        from mingpt_c.gpt.hf import import_gpt2
        return import_gpt2(hf_dir, out, tokenizer)
    if kind == "marian":
        from mingpt_c.seq2seq.hf import import_marian
        return import_marian(hf_dir, out)
    raise CheckpointError(f"{hf_dir}: model_type {kind!r} is not supported (gpt2, vit, bert, marian)")


def export_hf(ckpt, out) -> Path:
    """Our checkpoint (GPT, ViT, encoder or a Marian-shaped seq2seq) -> a Hugging Face directory."""
    kind = _model_type(checkpoint.resolve(ckpt))
    if kind == "vit":
        from mingpt_c.vit.hf import export_vit
        return export_vit(ckpt, out)
    if kind == "bert":
        from mingpt_c.encoder.hf import export_encoder
        return export_encoder(ckpt, out)
    if kind == "seq2seq":
        from mingpt_c.seq2seq.hf import export_marian
        return export_marian(ckpt, out)
    from mingpt_c.gpt.hf import export_gpt2
    return export_gpt2(ckpt, out)
