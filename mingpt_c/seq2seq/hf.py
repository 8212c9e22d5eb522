"""Hugging Face MarianMT interop: `mingpt import` of a MarianMTModel
directory (the opus-mt translation models) and `mingpt export` back.

A MarianMT model is this family's architecture with Marian's choices:
post-layernorm layers, SiLU ("swish") in the feed-forward, embeddings
scaled by sqrt(d_model), static sinusoids laid out in halves (sin over the
first d_model/2 channels, cos over the rest), a final logits bias, the
decoder started from the pad id, sources ending with </s>, and one
embedding shared by the encoder, the decoder and the output (or separate
encoder and decoder vocabularies, share_encoder_decoder_embeddings false).
Its tensor names are our checkpoint's (seq2seq/checkpoint.py splits the
packed q/k/v again); its tokenizer, sentencepiece models with a vocab.json
mapping, is seq2seq/marian_vocab.py.

    MarianConfig                         Seq2SeqConfig
    d_model, encoder/decoder_layers      n_embd, enc_layers, dec_layers
    encoder_attention_heads              n_head (the decoder's must match)
    encoder/decoder_ffn_dim              4 * n_embd (the only width here)
    activation_function swish|gelu|relu  act silu|gelu|relu
    max_position_embeddings              max_src_len (max_tgt_len one less:
                                         the decoder's start token takes one)
    pad/eos/decoder_start_token_id       pad_id, eos_id, bos_id
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mingpt_c import checkpoint as base
from mingpt_c import ops
from mingpt_c.errors import CheckpointError
from mingpt_c.nn.params import Layout
from mingpt_c.seq2seq import checkpoint as ckpt
from mingpt_c.seq2seq.model import Seq2SeqConfig, seq2seq_slots

ACTS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}


def config_from_hf(hf: dict, where: str) -> Seq2SeqConfig:
    def need(key):
        if key not in hf:
            raise CheckpointError(f"{where}: config.json has no {key}")
        return hf[key]

    C = need("d_model")
    act = ACTS.get(hf.get("activation_function", "swish"))
    if act is None:
        raise CheckpointError(f"{where}: activation_function {hf['activation_function']!r} is not supported "
                              f"(swish, gelu, relu)")
    for key in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if hf.get(key, 4 * C) != 4 * C:
            raise CheckpointError(f"{where}: {key} {hf[key]} is not supported (only 4 x d_model = {4 * C})")
    NH = need("encoder_attention_heads")
    if hf.get("decoder_attention_heads", NH) != NH:
        raise CheckpointError(f"{where}: different head counts in the encoder and decoder are not supported")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm") or hf.get("normalize_embedding"):
        raise CheckpointError(f"{where}: pre-layernorm or embedding-layernorm Marian variants are not supported")
    V = need("vocab_size")
    shared = hf.get("share_encoder_decoder_embeddings", True)
    Vt = V if shared else (hf.get("decoder_vocab_size") or V)
    P = hf.get("max_position_embeddings", 512)
    pad = need("pad_token_id")
    return Seq2SeqConfig(src_vocab_size=V, tgt_vocab_size=Vt, shared_vocab=shared, max_src_len=P,
                         max_tgt_len=P - 1, enc_layers=need("encoder_layers"), dec_layers=need("decoder_layers"),
                         n_head=NH, n_embd=C, dropout=float(hf.get("dropout", 0.1)), act=act, pre_ln=False,
                         positions="sinusoidal_half", scale_embeddings=bool(hf.get("scale_embedding", True)),
                         logits_bias=True, pad_id=pad, bos_id=hf.get("decoder_start_token_id", pad),
                         eos_id=need("eos_token_id"), src_eos=True, layer_norm_eps=1e-5)


def config_to_hf(cfg: Seq2SeqConfig) -> dict:
    act = {v: k for k, v in ACTS.items() if k != "silu"}[cfg.act]
    hf = {"architectures": ["MarianMTModel"], "model_type": "marian", "vocab_size": cfg.src_vocab_size,
          "d_model": cfg.n_embd, "encoder_layers": cfg.enc_layers, "decoder_layers": cfg.dec_layers,
          "encoder_attention_heads": cfg.n_head, "decoder_attention_heads": cfg.n_head,
          "encoder_ffn_dim": 4 * cfg.n_embd, "decoder_ffn_dim": 4 * cfg.n_embd, "activation_function": act,
          "max_position_embeddings": cfg.max_src_len, "scale_embedding": cfg.scale_embeddings,
          "dropout": cfg.dropout, "attention_dropout": 0.0, "activation_dropout": 0.0,
          "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id, "decoder_start_token_id": cfg.bos_id,
          "forced_eos_token_id": cfg.eos_id, "bad_words_ids": [[cfg.pad_id]],
          "share_encoder_decoder_embeddings": cfg.shared_vocab, "tie_word_embeddings": True,
          "is_encoder_decoder": True}
    if not cfg.shared_vocab:
        hf["decoder_vocab_size"] = cfg.tgt_vocab_size
    return hf


def _read_tensors(d: Path) -> dict:
    if (d / "model.safetensors").exists():
        return base.load_safetensors(d / "model.safetensors")[0]
    if (d / "pytorch_model.bin").exists():
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{d}: reading pytorch_model.bin needs PyTorch (pip install torch), or save the "
                                  f"model with safe_serialization=True") from None
        try:
            state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{d}/pytorch_model.bin: unreadable ({e})") from None
        return {k: v.float().numpy() for k, v in state.items()}
    raise CheckpointError(f"{d}: no model.safetensors or pytorch_model.bin")


def _hf_tensors(tensors: dict, cfg: Seq2SeqConfig, where: str) -> dict:
    """Our checkpoint's names from a MarianMTModel state dict: the "model."
    prefix where a bare MarianModel left it out, the shared embedding where
    only the tied copies were saved, the logits bias as a vector."""
    t = dict(tensors)
    for k in list(t):
        if k.startswith(("encoder.", "decoder.", "shared.")):
            t["model." + k] = t.pop(k)
    if cfg.shared_vocab and "model.shared.weight" not in t:
        for alt in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
            if alt in t:
                t["model.shared.weight"] = t[alt]
                break
    if not cfg.shared_vocab and "model.decoder.embed_tokens.weight" not in t and "lm_head.weight" in t:
        t["model.decoder.embed_tokens.weight"] = t["lm_head.weight"]
    bias = t.get("final_logits_bias")
    t["final_logits_bias"] = (np.zeros(cfg.tgt_vocab_size, np.float32) if bias is None
                              else np.asarray(bias, np.float32).reshape(-1))
    return t


def import_marian(hf_dir, out) -> Path:
    """A MarianMTModel directory -> our seq2seq checkpoint (weights and the
    two sides' sentencepiece vocabularies)."""
    from mingpt_c.seq2seq.marian_vocab import MarianVocab

    d = Path(hf_dir)
    hf = base.read_hf_config(d)
    cfg = config_from_hf(hf, str(d))
    layout = Layout(seq2seq_slots(cfg))
    tensors = _read_tensors(d)
    pe = ops.sinusoid_table(cfg.max_src_len, cfg.n_embd, interleaved=False)
    for side in ("encoder", "decoder"):   # static: computed here, but they must be what the file holds
        saved = tensors.get(f"model.{side}.embed_positions.weight")
        if saved is not None and (saved.shape != pe.shape or not np.allclose(saved, pe, atol=1e-4)):
            raise CheckpointError(f"{d}: model.{side}.embed_positions.weight is not Marian's sinusoid table "
                                  f"(learned positions are not supported)")
    params = ckpt.from_tensors(layout, _hf_tensors(tensors, cfg, str(d)), str(d))
    try:
        vocabs = {"src": MarianVocab.from_dir(d, "source"), "tgt": MarianVocab.from_dir(d, "target")}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{d}: cannot read the Marian tokenizer files ({e})") from None
    for side, n in (("src", cfg.src_vocab_size), ("tgt", cfg.tgt_vocab_size)):
        if vocabs[side].size != n:
            raise CheckpointError(f"{d}: the {side} vocabulary has {vocabs[side].size} entries, the model {n}")
    cfg.extra = {"data": f"imported from {d.name} (MarianMTModel)"}
    return ckpt.save(out, cfg, params, vocabs)


def export_marian(path, out) -> Path:
    """Our seq2seq checkpoint of a Marian-shaped model -> a MarianMTModel
    directory that transformers' MarianMTModel and MarianTokenizer load."""
    from safetensors.numpy import save_file

    loaded = ckpt.load(path)
    cfg, where = loaded["cfg"], loaded["path"]
    why = ("pre-layernorm layers" if cfg.pre_ln else
           f"{cfg.positions} positions (Marian's are sinusoidal_half)" if cfg.positions != "sinusoidal_half" else
           "no final logits bias" if not cfg.logits_bias else
           "sources without </s>" if not cfg.src_eos else None)
    if why is None and any(v.kind != "marian" for v in loaded["vocabs"].values()):
        why = "vocabularies of our own (Marian's are sentencepiece models)"
    if why:
        raise CheckpointError(f"{where}: has {why}, which MarianMTModel does not: only an imported (or "
                              f"fine-tuned imported) Marian model exports")
    tensors = ckpt.to_tensors(Layout(seq2seq_slots(cfg)), loaded["params"])
    tensors["final_logits_bias"] = tensors["final_logits_bias"].reshape(1, -1)
    pe = ops.sinusoid_table(cfg.max_src_len, cfg.n_embd, interleaved=False)
    tensors["model.encoder.embed_positions.weight"] = pe
    tensors["model.decoder.embed_positions.weight"] = pe.copy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"decoder_start_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id,
         "forced_eos_token_id": cfg.eos_id, "bad_words_ids": [[cfg.pad_id]], "max_length": cfg.max_src_len},
        indent=2) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    loaded["vocabs"]["src"].write_dir(out)   # each side holds the whole tokenizer
    return out
