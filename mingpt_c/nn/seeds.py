"""Random streams: --seed reaches every random draw of a run through a
named stream, and every draw has its own key, so the same seed repeats a
run on any device, thread count and number of MPI ranks, and a resumed run
draws what the uninterrupted one would have.

Numpy generators are keyed [seed, *coordinates, stream] (stream_rng):

    stream                 family    coordinates     draws
    STREAM_BATCHES         GPT       it, micro       the rows of a global batch
                           encoder,  epoch           an epoch's order
                           ViT
    STREAM_EVAL (+ split)  GPT       it, batch       evaluation batches (1 train, 2 val)
    STREAM_MASKING         encoder   batch number    masked-LM choices
    STREAM_TOKEN_DROPOUT   encoder   batch number    tokens hidden from a classifier
    STREAM_AUGMENT         ViT       batch number    crops and flips

The numbers repeat across families (a GPT run never masks tokens), never
within one: they are the keys earlier versions drew from, so runs recorded
before the streams had names repeat bit for bit. (The epoch order was keyed
[seed, epoch]; numpy's SeedSequence pads a key shorter than four 32-bit
words with zero words, so [seed, epoch, 0] draws the same for seeds below
2**32.) The batch number of an epoch-based loop counts micro-batches from
the start of the run; with one micro-batch a step it is the iteration.

The dropout stream feeds the C kernels a 63-bit seed per (step, micro-step,
rank): dropout_seed; mix_seed then gives each dropout site of the model its
own seed. The initial weights come from numpy's default_rng(seed) (the
models draw them), the ViT's held-out split of a folder from [seed, 77].
"""
from __future__ import annotations

import numpy as np

STREAM_BATCHES = 0
STREAM_EVAL = 1
STREAM_MASKING = 1
STREAM_TOKEN_DROPOUT = 2
STREAM_AUGMENT = 1

_MASK63 = 0x7FFFFFFFFFFFFFFF


def stream_rng(seed: int, stream: int, *coords: int) -> np.random.Generator:
    """The generator of one named stream at one point of a run."""
    return np.random.default_rng([seed, *coords, stream])


def dropout_seed(seed: int, it: int, micro: int = 0, rank: int = 0) -> int:
    """The dropout stream: the seed of one micro-step on one rank (the
    kernels' masks of every site of the model follow from it by mix_seed)."""
    return (((seed * 1_000_003 + it) * 1_009 + micro) * 10_007 + rank) & _MASK63


def mix_seed(seed: int, k: int) -> int:
    """A distinct 63-bit dropout seed per (step seed, site k)."""
    return (seed * 0x9E3779B97F4A7C15 + k * 0xBF58476D1CE4E5B9 + 1) & _MASK63
