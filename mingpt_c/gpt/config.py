"""The GPT's configuration: one dataclass, a few presets.

The field names follow nanoGPT; to_hf()/from_hf() translate to the Hugging
Face GPT2Config names used in checkpoints' config.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mingpt_c.errors import ShapeError
from mingpt_c.nn.config import ConfigBase


@dataclass
class GPTConfig(ConfigBase):
    vocab_size: int = 65          # tokens in the vocabulary (set by the tokenizer)
    block_size: int = 64          # longest context, in tokens (position embeddings)
    n_layer: int = 4              # transformer blocks
    n_head: int = 4               # attention heads; n_embd % n_head == 0
    n_embd: int = 128             # model width C
    dropout: float = 0.0          # on embeddings and on each block's two residual branches
    layer_norm_eps: float = 1e-5  # GPT-2's epsilon
    tie_embeddings: bool = True   # lm_head shares the token embedding (GPT-2)
    extra: dict = field(default_factory=dict)  # tokenizer and run facts, kept verbatim

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        self.check_sizes(("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        if not self.tie_embeddings:
            raise ShapeError("untied embeddings are not supported yet (GPT-2 ties them)")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    # Hugging Face GPT2Config <-> ours
    def to_hf(self) -> dict:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.block_size,
            "n_ctx": self.block_size,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_eps,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            "bos_token_id": self.extra.get("eot_token", self.vocab_size - 1),
            "eos_token_id": self.extra.get("eot_token", self.vocab_size - 1),
        }

    @classmethod
    def from_hf(cls, hf: dict) -> "GPTConfig":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ShapeError(f"activation {act!r} is not supported (only GPT-2's tanh GELU)")
        n_embd = hf.get("n_embd", hf.get("hidden_size"))
        if hf.get("n_inner") not in (None, 4 * n_embd):
            raise ShapeError(f"n_inner={hf['n_inner']} is not supported (only 4 * n_embd)")
        return cls(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx")),
                   n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd,
                   dropout=0.0, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                   tie_embeddings=True)


# Named sizes: `mingpt train --preset NAME`. The vocabulary comes from the tokenizer.
PRESETS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),      # nanoGPT's CPU recipe
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),    # nanoGPT shakespeare-char
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # GPT-2 124M
}
