"""GPT-2 interop: our GPT checkpoints already use GPT2LMHeadModel tensor
names and layout and a GPT2Config-compatible config.json, so export writes
the same files without training state, and import reads config.json +
model.safetensors (names with or without the 'transformer.' prefix; buffers
such as attn.bias and the tied lm_head.weight are ignored).

Import's tokenizer: with the default spec "gpt2", the directory's own
tokenizer.json when it is ours (a directory that export wrote), else GPT-2
built from the directory's GPT-2 files (vocab.json + merges.txt, as a
Hugging Face GPT-2 directory holds them) when they are GPT-2's, else GPT-2
found as usual (tiktoken's cache, MINGPT_GPT2_DIR, a download). So export ->
import round-trips offline. Any other spec is used as given."""
from __future__ import annotations

import json
from pathlib import Path

from mingpt_c import checkpoint as ckpt_io
from mingpt_c.errors import CheckpointError
from mingpt_c.gpt import checkpoint
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import gpt_slots
from mingpt_c.nn.params import Layout


def import_gpt2(hf_dir, out, tokenizer: str = "gpt2") -> Path:
    from mingpt_c.tokenizers.tokenizer import build_tokenizer

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
    tensors, _ = ckpt_io.load_safetensors(d / "model.safetensors")
    if "lm_head.weight" in tensors and "transformer.wte.weight" in tensors:
        import numpy as np
        if not np.array_equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"]):
            raise CheckpointError(f"{d}: lm_head.weight differs from wte (untied heads are not supported)")
    params = checkpoint.from_hf_tensors(Layout(gpt_slots(cfg)), tensors, str(d / "model.safetensors"))
    tok = None
    if tokenizer != "none":
        tok = _own_tokenizer(d) if tokenizer == "gpt2" else None
        if tok is None:
            tok = build_tokenizer(tokenizer, lambda: iter(()))
            spec = "gpt2" if tokenizer.startswith("gpt2:") else tokenizer  # not a machine's path
        else:
            spec = tok.kind
        if tok.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"tokenizer {spec} has {tok.vocab_size} tokens but the model only "
                                  f"{cfg.vocab_size}: pass --tokenizer with a matching one, or none")
        cfg.extra = {"tokenizer": spec, "eot_token": tok.eot_token}
    return checkpoint.save(out, cfg, params, tok)


def _own_tokenizer(d: Path):
    """The tokenizer a directory brings: its tokenizer.json if ours (mingpt-*
    format; Hugging Face's own tokenizer.json is not), else GPT-2 from its
    GPT-2 files if they are GPT-2's; None otherwise. A mingpt-gpt2 file
    (GPT-2 by reference) prefers the directory's GPT-2 files too."""
    from mingpt_c.tokenizers.tokenizer import GPT2Tokenizer, Tokenizer, gpt2_files_in

    f = d / "tokenizer.json"
    fmt = None
    if f.is_file():
        try:
            fmt = json.loads(f.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if isinstance(fmt, str) and fmt.startswith("mingpt-") and fmt != "mingpt-gpt2":
            return Tokenizer.load(f)
    if gpt2_files_in(d) is not None:
        try:
            return GPT2Tokenizer(gpt2_dir=d)
        except CheckpointError:  # another vocabulary in GPT-2's format: not ours to guess
            pass
    return Tokenizer.load(f) if fmt == "mingpt-gpt2" else None


def export_gpt2(ckpt, out) -> Path:
    loaded = checkpoint.load(ckpt)
    return checkpoint.save(out, loaded["cfg"], loaded["params"], loaded["tokenizer"])
