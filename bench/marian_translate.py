"""MarianMT translation speed on the CPU: our decoding (what `mingpt seq2seq
translate` runs) against transformers' generate(), on one random model of
the opus-mt size, in the same sitting.

The model: a MarianMTModel built by transformers with the shape of the
Helsinki-NLP opus-mt models (6+6 post-LN layers, d_model 512, 8 heads, FFN
2048, SiLU, one embedding shared by encoder, decoder and output, a final
logits bias: 74M parameters) and random weights (N(0, --init-std) matrices,
a N(0, 0.5) logits bias, so outputs differ by input). Its tokenizer is a
sentencepiece unigram model trained on data/examples/shakespeare.txt, whose
vocab.json is padded with dummy pieces up to opus-mt's 58,101 entries, so
the output projection and the softmax have the real width. `mingpt import`
turns the directory into our checkpoint.

The work: --sentences lines of the same text, tokenized once per side
outside the timing and sorted by length (decode() batches sources of like
lengths; transformers gets the same batches); each side turns ids into ids
in batches of --batch-size, with the same beams, the same length rule (at
most --max-new-tokens tokens, </s> forced at the last) and the same banned
pad id:
  ours          seq2seq.decode.decode on train.encode_sources' ids, beam
                search with search="hf" (transformers' rules), length
                penalty 1.0
  transformers  model.generate(num_beams, max_new_tokens, length_penalty
                1.0, early_stopping False, bad_words_ids [[pad]]) under
                torch.inference_mode()
Both run on --threads threads (the core's set_num_threads and
torch.set_num_threads). The sides alternate, the first side swapping every
round, so a busy moment of the machine falls on both; the table shows each
side's median over --rounds rounds. Outputs are compared token for token.

    python bench/marian_translate.py [--sentences 200] [--beams 1 4] [--max-new-tokens 64]
                                     [--rounds 3] [--threads 2] [--quick]

--quick: 16 sentences, 16 tokens, one round: checks the script works.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mingpt_c.benchmarks import cpu_model  # after the path insert: the checkout, not an install

TEXT = ROOT / "data" / "examples" / "shakespeare.txt"
OPUS = dict(vocab=58101, d_model=512, layers=6, heads=8, ffn=2048, positions=512)

# ------------------------------------------------------------------ setup


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--max-new-tokens", type=int, default=64, help="output tokens at most, </s> included")
    ap.add_argument("--batch-size", type=int, default=64, help="sources per batch, both sides")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.05, help="std of the random weight matrices")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="build the model here and keep it [default: a temp dir]")
    ap.add_argument("--quick", action="store_true", help="16 sentences, 16 tokens, one round")
    a = ap.parse_args()
    if a.quick:
        a.sentences, a.max_new_tokens, a.rounds = 16, 16, 1
    return a


def sentences(n: int) -> list[str]:
    """The first n lines of speech (speaker labels and blank lines skipped)."""
    lines = [s.strip() for s in TEXT.read_text().splitlines()]
    out = [s for s in lines if s and not s.endswith(":")][:n]
    if len(out) < n:
        sys.exit(f"{TEXT} has only {len(out)} lines of speech")
    return out


def build_marian(d: Path, init_std: float, seed: int):
    """A MarianMTModel directory of the opus-mt size with random weights;
    returns (directory, tokenizer, model)."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    d.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(input=str(TEXT), model_prefix=str(d / "sp"), vocab_size=8000,
                                   hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
                                   bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) != "<unk>"]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    n_real = len(vocab)
    for i in range(OPUS["vocab"] - 1 - n_real):              # dummy pieces: the real width of the output
        vocab[f"\u2581dummy{i}"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    V = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    hf = d / "hf"
    hf.mkdir(exist_ok=True)
    tok = MarianTokenizer(vocab=str(d / "vocab.json"), source_spm=str(d / "sp.model"),
                          target_spm=str(d / "sp.model"))
    tok.save_pretrained(hf)
    cfg = MarianConfig(vocab_size=V, d_model=OPUS["d_model"], encoder_layers=OPUS["layers"],
                       decoder_layers=OPUS["layers"], encoder_attention_heads=OPUS["heads"],
                       decoder_attention_heads=OPUS["heads"], encoder_ffn_dim=OPUS["ffn"],
                       decoder_ffn_dim=OPUS["ffn"], activation_function="swish",
                       max_position_embeddings=OPUS["positions"], pad_token_id=V - 1, eos_token_id=0,
                       decoder_start_token_id=V - 1, forced_eos_token_id=0, scale_embedding=True,
                       share_encoder_decoder_embeddings=True, dropout=0.0)
    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed_positions" not in name:
                p.normal_(0.0, init_std)
        model.final_logits_bias.normal_(0.0, 0.5)
    model.save_pretrained(hf)
    return hf, tok, model, n_real

# ------------------------------------------------------------------ the two sides


def strip_generate(rows: list[list[int]], eos: int) -> list[list[int]]:
    """generate()'s rows -> tokens after the decoder start, up to </s>."""
    out = []
    for row in rows:
        row = row[1:]
        out.append(row[:row.index(eos)] if eos in row else row)
    return out


def main() -> None:
    for mod in ("torch", "transformers", "sentencepiece"):
        if importlib.util.find_spec(mod) is None:
            sys.exit(f"bench/marian_translate.py needs {mod}: pip install torch transformers sentencepiece")
    a = parse_args()
    # mingpt_c first: it picks OpenMP's wait policy before the runtime (which torch shares) loads
    from mingpt_c._lib import WAIT_POLICY, set_num_threads
    from mingpt_c.seq2seq.decode import DecodeConfig, decode
    from mingpt_c.seq2seq.hf import import_marian
    from mingpt_c.seq2seq.train import encode_sources, load_model

    import torch
    import transformers

    set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir) if a.workdir else Path(tmp)
        t0 = time.perf_counter()
        hf_dir, tok, hf_model, n_real = build_marian(work, a.init_std, a.seed)
        import_marian(hf_dir, work / "ours")
        ours, vocabs = load_model(work / "ours")
        build_s = time.perf_counter() - t0

        texts = sentences(a.sentences)
        src = encode_sources(ours, vocabs, texts)
        order = sorted(range(len(texts)), key=lambda i: len(src[i]))   # decode()'s batches, for both sides
        texts, src = [texts[i] for i in order], [src[i] for i in order]
        batches = [texts[i:i + a.batch_size] for i in range(0, len(texts), a.batch_size)]
        encs = [tok(b, padding=True, return_tensors="pt") for b in batches]
        theirs = [ids[:int(m.sum())] for e in encs for ids, m in zip(e["input_ids"].tolist(), e["attention_mask"])]
        if theirs != src:
            sys.exit("the two sides tokenize the sentences differently")
        cfg = ours.cfg
        n = a.max_new_tokens

        def run_ours(beam: int) -> list[list[int]]:
            dc = DecodeConfig(beam=beam, length_penalty=1.0, norm="hf", len_a=0.0, len_b=n,
                              batch_size=a.batch_size, search="hf")
            return decode(ours, src, dc)

        def run_hf(beam: int) -> list[list[int]]:
            out = []
            with torch.inference_mode():
                for enc in encs:
                    rows = hf_model.generate(**enc, num_beams=beam, max_new_tokens=n, do_sample=False,
                                             length_penalty=1.0, early_stopping=False,
                                             bad_words_ids=[[cfg.pad_id]])
                    out += strip_generate(rows.tolist(), cfg.eos_id)
            return out

        lens = [len(s) for s in src]
        print(f"model: MarianMTModel, random weights (std {a.init_std:g}, seed {a.seed}): {cfg.enc_layers}+"
              f"{cfg.dec_layers} layers, d_model {cfg.n_embd}, {cfg.n_head} heads, FFN {4 * cfg.n_embd}, "
              f"{cfg.act}, shared embeddings, logits bias, vocabulary {cfg.tgt_vocab_size:,} ({n_real:,} "
              f"sentencepiece pieces and specials, the rest dummies): {ours.num_params() / 1e6:.1f}M parameters "
              f"(built and imported in {build_s:.0f} s)")
        print(f"data: {len(texts)} lines of {TEXT.name}, {min(lens)}-{max(lens)} source tokens "
              f"(mean {statistics.mean(lens):.1f}, </s> included); batches of {a.batch_size}; at most {n} "
              f"output tokens; beams {', '.join(map(str, a.beams))}; {a.rounds} round(s)")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"cpu: {cpu_model()}, {a.threads} threads a side ({os.cpu_count()} logical CPUs, load average "
              f"{load:.1f} at start); torch {torch.__version__}, transformers {transformers.__version__}; "
              f"OpenMP wait policy: {WAIT_POLICY}", flush=True)

        # warm-up, untimed: first calls (allocations, lazy initialisation) on both sides
        decode(ours, src[:8], DecodeConfig(beam=max(a.beams), norm="hf", len_a=0.0, len_b=4, search="hf"))
        with torch.inference_mode():
            hf_model.generate(**tok(texts[:8], padding=True, return_tensors="pt"), num_beams=max(a.beams),
                              max_new_tokens=4, do_sample=False, bad_words_ids=[[cfg.pad_id]])
        # ------------------------------------------------------ alternating rounds
        times = {(side, b): [] for side in ("ours", "hf") for b in a.beams}
        outputs: dict = {}
        sides = {"ours": run_ours, "hf": run_hf}
        for r in range(a.rounds):
            for b in a.beams:
                order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
                for side in order:
                    t0 = time.perf_counter()
                    outputs[side, b] = sides[side](b)
                    times[side, b].append(time.perf_counter() - t0)
                print(f"round {r + 1}/{a.rounds} beam {b}: ours {times['ours', b][-1]:.1f} s, transformers "
                      f"{times['hf', b][-1]:.1f} s", flush=True)

        # ------------------------------------------------------ table
        print(f"\n{len(texts)} sentences, at most {n} tokens, {a.threads} threads, {cpu_model()}; "
              f"sentences/s: the median of {a.rounds} round(s)")
        print(f"{'beams':>5} {'ours sent/s':>12} {'transformers':>13} {'ours/hf':>8} {'out tokens':>11} "
              f"{'equal outputs':>14}")
        for b in a.beams:
            ours_sps = len(texts) / statistics.median(times["ours", b])
            hf_sps = len(texts) / statistics.median(times["hf", b])
            got, want = outputs["ours", b], outputs["hf", b]
            same = sum(x == y for x, y in zip(got, want))
            toks = statistics.mean(len(x) + 1 for x in want)
            print(f"{b:>5} {ours_sps:>12.2f} {hf_sps:>13.2f} {ours_sps / hf_sps:>7.2f}x {toks:>11.1f} "
                  f"{same:>8}/{len(want)}")
        print("out tokens: transformers' mean output length, </s> included; equal outputs: sentences whose "
              "tokens are the same on both sides")


if __name__ == "__main__":
    main()
