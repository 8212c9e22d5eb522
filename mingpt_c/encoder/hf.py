"""BERT interop: export of our encoder checkpoints (import_bert, in
encoder/checkpoint.py, reads BERT-family directories)."""
from __future__ import annotations

from pathlib import Path

from mingpt_c.encoder import checkpoint as ec
from mingpt_c.errors import CheckpointError


def export_encoder(ckpt, out) -> Path:
    """Our encoder checkpoint is already a BertForMaskedLM /
    BertForSequenceClassification directory: written again without the
    training state. The trunk loads as transformers' BertModel with the same
    hidden states; a classifier head reads the [CLS] or mean-pooled state
    directly, without BERT's pooler, so BertForSequenceClassification would
    put a fresh pooler in front of it. A WordPiece vocabulary goes along as
    vocab.txt; a BPE trained here stays in our tokenizer.json, which
    transformers' tokenizers do not read."""
    loaded = ec.load(ckpt)
    cfg = loaded["cfg"]
    if cfg.pre_ln:
        raise CheckpointError(f"{loaded['path']}: pre-layernorm encoder blocks have no Hugging Face BERT "
                              f"equivalent (BERT is post-layernorm)")
    if cfg.bigram_buckets:
        raise CheckpointError(f"{loaded['path']}: hashed bigram embeddings have no Hugging Face BERT "
                              f"equivalent")
    return ec.save(out, cfg, loaded["params"], loaded["tokenizer"])
