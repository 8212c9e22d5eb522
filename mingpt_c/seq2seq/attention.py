"""Alignment maps: where the decoder looks in the source while it writes
each output token (the cross-attention probabilities), as the Transformer
paper's and Bahdanau et al.'s figures draw them.

The output is decoded first; the decoder is then run teacher-forced on
<s> + output, and the query at position t (the one that wrote output token
t, and at the end </s>) gives row t of the map over the source tokens:
    A = mean over heads of att_layer[0, :, t, :]     (T_out + 1, S)
for the chosen layer (default the last), or one head's probabilities.
"""
from __future__ import annotations

import numpy as np

from mingpt_c.errors import ShapeError
from mingpt_c.run.plot import heatmap
from mingpt_c.seq2seq.decode import DecodeConfig, decode
from mingpt_c.seq2seq.model import Seq2Seq


def alignment(model: Seq2Seq, src_ids: list[int], out_ids: list[int], layer: int | None = None,
              head: int | None = None) -> np.ndarray:
    """(len(out_ids) + 1, len(src_ids)) cross-attention of the output (the
    last row: </s>). layer, head: 0-based; None: the last layer, the mean
    over heads."""
    cfg = model.cfg
    L = cfg.dec_layers if layer is None else layer
    if layer is not None and not 0 <= layer < cfg.dec_layers:
        raise ShapeError(f"layer {layer + 1} does not exist: the decoder has {cfg.dec_layers} layers")
    if head is not None and not 0 <= head < cfg.n_head:
        raise ShapeError(f"head {head + 1} does not exist: each layer has {cfg.n_head} heads")
    src = np.array([src_ids], np.int32)
    tin = np.array([[cfg.bos_id] + list(out_ids)], np.int32)
    model.forward(src, np.ones_like(src), tin)
    att = model.cross_attention()[L - 1 if layer is None else layer][0]          # (NH, T, S)
    return (att.mean(0) if head is None else att[head]).astype(np.float64)


def translate_with_alignment(model: Seq2Seq, vocabs: dict, src_ids: list[int], dc: DecodeConfig,
                             layer: int | None = None, head: int | None = None):
    """(output text, alignment (T_out + 1, S), source labels, output labels):
    the output in reading order, </s> last (a right-to-left model wrote it
    the other way: its rows are put in reading order)."""
    out = decode(model, [src_ids], dc)[0]
    if model.cfg.reverse_target:
        A = alignment(model, src_ids, out[::-1], layer, head)
        A = np.concatenate([A[-2::-1], A[-1:]])
    else:
        A = alignment(model, src_ids, out, layer, head)
    out_labels = vocabs["tgt"].symbols(out) + ["</s>"]
    return vocabs["tgt"].decode(out), A, vocabs["src"].symbols(src_ids), out_labels


def draw(A: np.ndarray, src_labels: list[str], out_labels: list[str], path, title: str = "") -> None:
    """The alignment map: output tokens down, source tokens across."""
    heatmap(A, src_labels, out_labels, path, title, xlabel="source", ylabel="output")
