"""Loss and perplexity of a model on a text: every full block, no overlap."""
from __future__ import annotations

import math

import numpy as np

from mingpt_c import data
from mingpt_c.device import CPU
from mingpt_c.errors import DataError
from mingpt_c.gpt.model import GPT, memory_bytes


def evaluate_tokens(model: GPT, tokens: np.ndarray, batch_size: int = 8,
                    max_batches: int | None = None) -> dict:
    T = model.cfg.block_size
    if len(tokens) < 2:
        raise DataError(f"the text has {len(tokens)} token(s): at least 2 are needed to measure a loss")
    T = min(T, len(tokens) - 1)
    n_blocks = (len(tokens) - 1) // T
    starts = np.arange(n_blocks) * T
    total, count, batches = 0.0, 0, 0
    for b0 in range(0, n_blocks, batch_size):
        if max_batches is not None and batches >= max_batches:
            break
        ix = starts[b0:b0 + batch_size]
        x = np.stack([tokens[i:i + T] for i in ix]).astype(np.int32)
        y = np.stack([tokens[i + 1:i + 1 + T] for i in ix]).astype(np.int32)
        total += model.forward(x, y) * y.size
        count += y.size
        batches += 1
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count,
            "blocks": min(n_blocks, batches * batch_size), "block_size": T}


def evaluate_text(loaded: dict, path, batch_size: int = 8, max_batches: int | None = None,
                  device=None) -> dict:
    """loaded: a checkpoint.load() result; device: a mingpt_c.device.Device."""
    tok = loaded["tokenizer"]
    if tok is None:
        raise DataError(f"{loaded['path']} has no tokenizer: cannot read text")
    device = device or CPU
    cfg = loaded["cfg"]
    ids = text_tokens(tok, path)
    rows = min(batch_size, max(1, (len(ids) - 1) // max(1, min(cfg.block_size, len(ids) - 1))))
    device.check_fits(memory_bytes(cfg, rows, cfg.block_size, train=False),
                      f"evaluating this model (block {cfg.block_size}, vocabulary {cfg.vocab_size}) "
                      f"{rows} blocks at a time (--batch-size {batch_size})")
    model = GPT(cfg, loaded["params"], device=device)
    return evaluate_tokens(model, ids, batch_size, max_batches)


def text_tokens(tok, path) -> np.ndarray:
    """The ids of a text file (read in pieces), exactly those of its whole
    text: what transformers sees when given the same file and tokenizer."""
    p = data.check_text_file(path)
    parts = list(data.encode_text_pieces(data.iter_text([p]), tok))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)
