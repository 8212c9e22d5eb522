"""Random streams: every random draw of a step (a dropout mask at one site)
has its own 64-bit seed, derived from the step's seed and the site, so the
same seed repeats every mask on any device and thread count."""
from __future__ import annotations


def mix_seed(seed: int, k: int) -> int:
    """A distinct 63-bit dropout seed per (step seed, site k)."""
    return (seed * 0x9E3779B97F4A7C15 + k * 0xBF58476D1CE4E5B9 + 1) & 0x7FFFFFFFFFFFFFFF
