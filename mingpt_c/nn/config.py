"""What every model family's config shares (ConfigBase): the dict round
trip and the size checks. Each family's config is a dataclass on it, with a
commented default per field (gpt/config.py, encoder/model.py, vit/model.py)."""
from __future__ import annotations

import dataclasses

from mingpt_c.errors import ShapeError


class ConfigBase:
    """What every model config shares: dict round trip and the size checks."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check_sizes(self, names) -> None:
        """Each named field a positive integer; the heads divide the width;
        dropout (when the config has one) in [0, 1)."""
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ShapeError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ShapeError(f"n-embd={self.n_embd} is not divisible by n-head={self.n_head}: "
                             f"choose a width that is a multiple of the head count")
        if not 0.0 <= getattr(self, "dropout", 0.0) < 1.0:
            raise ShapeError(f"dropout={self.dropout} must be in [0, 1)")
