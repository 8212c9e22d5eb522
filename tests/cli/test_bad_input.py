"""Bad option values, every command: refused while click parses (or, for a
rule between two options, first thing in the command), as one line on
stderr naming the option(s) and the allowed range, a non-zero exit, no
traceback, and every existing file left byte-identical.

One module fixture builds a tiny world once: a trained GPT, encoder, ViT and
encoder-decoder run, their inputs, and an image; each case hashes all of it before and after.
"""
import hashlib
import json

import numpy as np
import pytest

from conftest import invoke, one_line_error

TEXT = "To be, or not to be, that is the question.\n" * 20
GPT_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
            "--eval-interval", "5", "--eval-iters", "1", "--no-progress"]
ENC_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "300", "--batch-size", "4",
            "--warmup-iters", "2", "--max-len", "16", "--no-progress"]
S2S_TINY = ["--enc-layers", "1", "--dec-layers", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
            "--warmup-iters", "1", "--eval-limit", "2", "--no-progress"]
VIT_TINY = ["--patch-size", "7", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "32",
            "--train-limit", "64", "--eval-limit", "32", "--warmup-iters", "1", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """{name: path} of the tiny runs and inputs every case points at."""
    from PIL import Image

    d = tmp_path_factory.mktemp("world")
    w = {"root": d, "new": d / "new-run", "corpus": d / "corpus.txt", "jsonl": d / "train.jsonl",
         "gpt": d / "gpt", "enc": d / "enc", "vit": d / "vit", "image": d / "digit.png",
         "pairs": d / "pairs.tsv", "s2s": d / "s2s"}
    w["pairs"].write_text("".join(f"{a}\t{a[::-1]}\n" for a in TEXT.split()[:10]))
    w["corpus"].write_text(TEXT)
    words = {"pos": "good great fine lovely", "neg": "bad awful poor dull"}
    w["jsonl"].write_text("".join(json.dumps({"text": f"this was {words[lab].split()[i % 4]}", "label": lab}) + "\n"
                                  for i in range(8) for lab in words))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(w["image"])
    for args in (["train", w["corpus"], "--out", w["gpt"], "--max-iters", "5", *GPT_TINY],
                 ["encoder", "train", "--train", w["jsonl"], "--out", w["enc"], "--max-iters", "2", *ENC_TINY],
                 ["vit", "train", "--out", w["vit"], "--max-iters", "2", "--epochs", "1", *VIT_TINY],
                 ["seq2seq", "train", "--train", w["pairs"], "--val", w["pairs"], "--out", w["s2s"], "--max-iters", "2",
                  *S2S_TINY]):
        res = invoke(*args)
        assert res.exit_code == 0, res.stderr
    return w


def hashes(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# (arguments with {placeholders} from the world, needles the one line must hold)
GPT_TRAIN = ["train", "{corpus}", "--out", "{new}"]
SAMPLE = ["sample", "{gpt}"]
EVAL = ["eval", "{gpt}", "{corpus}"]
PRETRAIN = ["encoder", "pretrain", "{corpus}", "--out", "{new}"]
ENC_TRAIN = ["encoder", "train", "--train", "{jsonl}", "--out", "{new}"]
ENC_EVAL = ["encoder", "eval", "{enc}", "{jsonl}"]
ENC_PREDICT = ["encoder", "predict", "{enc}", "great film"]
VIT_TRAIN = ["vit", "train", "--out", "{new}"]
VIT_EVAL = ["vit", "eval", "{vit}"]
VIT_PREDICT = ["vit", "predict", "{vit}", "{image}"]
VIT_ATTENTION = ["vit", "attention", "{vit}", "{image}"]
TOK_TRAIN = ["tokenize", "train", "{corpus}", "--out", "{root}/tok.json"]
GPT_ATTENTION = ["attention", "{gpt}", "--prompt", "To be", "--out", "{root}/map.png"]
S2S_TRAIN = ["seq2seq", "train", "--train", "{pairs}", "--out", "{new}"]
S2S_TRANSLATE = ["seq2seq", "translate", "{s2s}", "ot"]
S2S_EVAL = ["seq2seq", "eval", "{s2s}", "{pairs}"]
S2S_ATTENTION = ["seq2seq", "attention", "{s2s}", "ot", "--out", "{root}/align.png"]

POS_INT, NONNEG_INT = "[1, inf)", "[0, inf)"


def bad(head, opt, value, interval, *more):
    """A case: `head ... opt value` refused, naming opt and interval."""
    return pytest.param([*head, *more, opt, value], [f"'{opt}'", interval],
                        id=f"{' '.join(h for h in head if '{' not in h)} {opt} {value}")


CASES = [
    # ---- gpt train
    bad(GPT_TRAIN, "--lr", "-1", "(0, inf)"),
    bad(GPT_TRAIN, "--lr", "0", "(0, inf)"),
    bad(GPT_TRAIN, "--lr", "nan", "(0, inf)"),
    bad(GPT_TRAIN, "--lr", "inf", "(0, inf)"),
    bad(GPT_TRAIN, "--min-lr", "-1e-4", "[0, inf)"),
    bad(GPT_TRAIN, "--embd-init-std", "-1", "(0, inf)"),
    bad(GPT_TRAIN, "--grad-clip", "nan", "[0, inf)"),
    bad(GPT_TRAIN, "--weight-decay", "nan", "[0, inf)"),
    bad(GPT_TRAIN, "--weight-decay", "-0.1", "[0, inf)"),
    bad(GPT_TRAIN, "--warmup-iters", "-1", NONNEG_INT),
    bad(GPT_TRAIN, "--dropout", "1", "[0, 1)"),
    bad(GPT_TRAIN, "--beta1", "1", "[0, 1)"),
    bad(GPT_TRAIN, "--beta2", "-0.5", "[0, 1)"),
    bad(GPT_TRAIN, "--batch-size", "0", POS_INT),
    bad(GPT_TRAIN, "--grad-accum", "0", POS_INT),
    bad(GPT_TRAIN, "--max-iters", "-1", NONNEG_INT),
    bad(GPT_TRAIN, "--lr-decay-iters", "0", POS_INT),
    bad(GPT_TRAIN, "--eval-interval", "0", POS_INT),
    bad(GPT_TRAIN, "--eval-iters", "0", POS_INT),
    bad(GPT_TRAIN, "--log-interval", "0", POS_INT),
    bad(GPT_TRAIN, "--val-fraction", "1", "(0, 1)"),
    bad(GPT_TRAIN, "--block-size", "0", POS_INT),
    bad(GPT_TRAIN, "--n-layer", "0", POS_INT),
    bad(GPT_TRAIN, "--n-head", "-2", POS_INT),
    bad(GPT_TRAIN, "--n-embd", "0", POS_INT),
    bad(GPT_TRAIN, "--seed", "-1", NONNEG_INT),
    bad(GPT_TRAIN, "--threads", "0", POS_INT),
    bad(GPT_TRAIN, "--max-nan-steps", "0", POS_INT),
    bad(GPT_TRAIN, "--dist-timeout", "nan", "(0, inf)"),
    pytest.param([*GPT_TRAIN, "--min-lr", "0.01", "--lr", "0.001"], ["--min-lr 0.01", "above --lr 0.001"],
                 id="train --min-lr above --lr"),
    pytest.param([*GPT_TRAIN, "--lr", "abc"], ["'--lr'", "abc"], id="train --lr abc"),
    # ---- sample
    bad(SAMPLE, "--temperature", "nan", "[0, inf)"),
    bad(SAMPLE, "--temperature", "-0.5", "[0, inf)"),
    bad(SAMPLE, "--top-p", "0", "(0, 1]"),
    bad(SAMPLE, "--top-p", "1.5", "(0, 1]"),
    bad(SAMPLE, "--top-p", "nan", "(0, 1]"),
    bad(SAMPLE, "--top-k", "-1", NONNEG_INT),
    bad(SAMPLE, "--max-new-tokens", "-5", NONNEG_INT),
    bad(SAMPLE, "--num-samples", "0", POS_INT),
    bad(SAMPLE, "--seed", "-7", NONNEG_INT),
    bad(SAMPLE, "--block-size", "0", POS_INT),
    bad(SAMPLE, "--threads", "-1", POS_INT),
    pytest.param([*SAMPLE, "--block-size", "64"], ["--block-size 64", "above the model's block size 16"],
                 id="sample --block-size above the model's"),
    # ---- eval
    bad(EVAL, "--batch-size", "0", POS_INT),
    bad(EVAL, "--max-batches", "0", POS_INT),
    bad(EVAL, "--max-batches", "-1", POS_INT),
    # ---- encoder pretrain
    bad(PRETRAIN, "--epochs", "0", "(0, inf)"),
    bad(PRETRAIN, "--mask-prob", "0", "(0, 1]"),
    bad(PRETRAIN, "--mask-prob", "1.5", "(0, 1]"),
    bad(PRETRAIN, "--max-len", "2", "[3, inf)"),
    bad(PRETRAIN, "--vocab-size", "0", POS_INT),
    pytest.param([*PRETRAIN, "--vocab-size", "100"], ["'--vocab-size'", "100 must be in [261, "],
                 id="encoder pretrain --vocab-size below bytes and specials"),
    pytest.param([*ENC_TRAIN, "--vocab-size", "260"], ["'--vocab-size'", "260 must be in [261, "],
                 id="encoder train --vocab-size below bytes and specials"),
    bad(PRETRAIN, "--phrase-share", "2", "[0, 1]"),
    bad(PRETRAIN, "--bigram-buckets", "-1", NONNEG_INT),
    bad(PRETRAIN, "--limit", "0", POS_INT),
    pytest.param([*PRETRAIN, "--min-lr", "1", "--lr", "0.5"], ["--min-lr 1", "--lr 0.5"],
                 id="encoder pretrain --min-lr above --lr"),
    # ---- encoder train / eval / predict
    bad(ENC_TRAIN, "--token-dropout", "1", "[0, 1)"),
    bad(ENC_TRAIN, "--token-dropout", "-1", "[0, 1)"),
    bad(ENC_TRAIN, "--epochs", "0", "(0, inf)"),
    bad(ENC_TRAIN, "--epochs", "nan", "(0, inf)"),
    bad(ENC_TRAIN, "--val-limit", "0", POS_INT),
    bad(ENC_TRAIN, "--max-iters", "0", POS_INT),
    bad(ENC_TRAIN, "--lr", "-1", "(0, inf)"),
    bad(ENC_TRAIN, "--grad-clip", "-1", "[0, inf)"),
    bad(ENC_EVAL, "--batch-size", "0", POS_INT),
    bad(ENC_EVAL, "--limit", "-1", POS_INT),
    bad(ENC_PREDICT, "--threads", "0", POS_INT),
    # ---- vit train / eval / predict / attention
    bad(VIT_TRAIN, "--image-size", "0", POS_INT),
    bad(VIT_TRAIN, "--patch-size", "0", POS_INT),
    bad(VIT_TRAIN, "--epochs", "0", POS_INT),
    bad(VIT_TRAIN, "--max-iters", "0", POS_INT),
    bad(VIT_TRAIN, "--label-smoothing", "1", "[0, 1)"),
    bad(VIT_TRAIN, "--crop-pad", "-1", NONNEG_INT),
    bad(VIT_TRAIN, "--val-fraction", "0", "(0, 1)"),
    bad(VIT_TRAIN, "--train-limit", "0", POS_INT),
    bad(VIT_TRAIN, "--eval-limit", "0", POS_INT),
    bad(VIT_TRAIN, "--grad-clip", "nan", "[0, inf)"),
    pytest.param([*VIT_TRAIN, "--min-lr", "0.1", "--lr", "0.01"], ["--min-lr 0.1", "--lr 0.01"],
                 id="vit train --min-lr above --lr"),
    pytest.param([*VIT_TRAIN, "--image-size", "30", "--patch-size", "4"], ["--image-size 30", "--patch-size 4"],
                 id="vit train --image-size not divisible by --patch-size"),
    bad(VIT_EVAL, "--batch-size", "0", POS_INT),
    bad(VIT_EVAL, "--limit", "0", POS_INT),
    bad(VIT_EVAL, "--image-size", "-3", POS_INT),
    bad(VIT_PREDICT, "--top-k", "0", POS_INT),
    pytest.param([*VIT_ATTENTION, "--out", "{root}/map.xyz"], ["'--out'", ".xyz", ".png", ".svg", ".pdf"],
                 id="vit attention --out map.xyz"),
    pytest.param([*VIT_ATTENTION, "--out", "{root}/map"], ["'--out'", "no extension", ".png"],
                 id="vit attention --out without extension"),
    # ---- attention (GPT), seq2seq
    bad(GPT_ATTENTION, "--layer", "0", POS_INT),
    bad(GPT_ATTENTION, "--head", "-1", POS_INT),
    pytest.param(["attention", "{gpt}", "--prompt", "To be", "--out", "{root}/map.xyz"], ["'--out'", ".xyz", ".png"],
                 id="attention --out map.xyz"),
    pytest.param([*GPT_ATTENTION, "--layer", "9"], ["layer 9", "1 layers"], id="attention --layer 9"),
    bad(S2S_TRAIN, "--lr", "nan", "(0, inf)"),
    bad(S2S_TRAIN, "--enc-layers", "0", POS_INT),
    bad(S2S_TRAIN, "--dec-layers", "-2", POS_INT),
    bad(S2S_TRAIN, "--label-smoothing", "1", "[0, 1)"),
    bad(S2S_TRAIN, "--dropout", "-0.1", "[0, 1)"),
    bad(S2S_TRAIN, "--vocab-size", "100", "[260, inf)"),
    bad(S2S_TRAIN, "--adam-eps", "0", "(0, inf)"),
    bad(S2S_TRAIN, "--beta2", "1", "[0, 1)"),
    bad(S2S_TRAIN, "--epochs", "0", "(0, inf)"),
    pytest.param([*S2S_TRAIN, "--min-lr", "0.1"], ["--min-lr 0.1", "--lr"], id="seq2seq train --min-lr above --lr"),
    bad(S2S_TRANSLATE, "--beam", "0", POS_INT),
    bad(S2S_TRANSLATE, "--length-penalty", "-1", "[0, inf)"),
    bad(S2S_TRANSLATE, "--len-a", "nan", "[0, inf)"),
    bad(S2S_EVAL, "--limit", "0", POS_INT),
    bad(S2S_EVAL, "--batch-size", "0", POS_INT),
    bad(S2S_ATTENTION, "--head", "0", POS_INT),
    pytest.param([*S2S_ATTENTION, "--layer", "4"], ["layer 4", "1 layers"], id="seq2seq attention --layer 4"),
    pytest.param(["seq2seq", "translate", "{s2s}", "ot?"], ["'?'", "vocabulary"], id="seq2seq translate unknown"),
    pytest.param(["seq2seq", "eval", "{s2s}", "cmudict:dev"], ["cmudict:test"], id="seq2seq eval cmudict:dev"),
    pytest.param(["seq2seq", "translate", "{gpt}", "ot"], ["GPT checkpoint", "mingpt sample"],
                 id="seq2seq translate a GPT"),
    # ---- tokenize train, bench
    bad(TOK_TRAIN, "--vocab-size", "-1", POS_INT),
    bad(TOK_TRAIN, "--min-frequency", "-1", NONNEG_INT),
    bad(TOK_TRAIN, "--phrases-after", "-1", NONNEG_INT),
    bad(["bench"], "--rounds", "0", POS_INT),
    bad(["bench"], "--steps", "0", POS_INT),
    bad(["bench"], "--threads", "0", POS_INT),
    bad(["bench"], "--sample-tokens", "-1", NONNEG_INT),
]


@pytest.mark.parametrize("args,needles", CASES)
def test_bad_value_is_one_line_and_touches_nothing(world, args, needles):
    before = hashes(world["root"])
    args = [a.format(**world) for a in args]
    one_line_error(invoke(*args), *needles)
    assert hashes(world["root"]) == before


def test_enough_cases():
    def command(args):
        words = [a for a in args[:2] if a[0] not in "{-"]
        return " ".join(words[:len(words) if words[0] in ("encoder", "vit", "tokenize", "seq2seq") else 1])

    commands = {command(p.values[0]) for p in CASES}
    assert len(CASES) >= 60
    assert {"train", "sample", "eval", "encoder pretrain", "encoder train", "encoder eval", "encoder predict",
            "vit train", "vit eval", "vit predict", "vit attention", "tokenize train", "bench", "attention",
            "seq2seq train", "seq2seq translate", "seq2seq eval", "seq2seq attention"} <= commands


def test_range_ends_still_accepted(world, tmp_path):
    """The closed ends stay valid: greedy sampling, top-p 1, no new tokens."""
    res = invoke("sample", world["gpt"], "--prompt", "To be", "--temperature", "0", "--top-p", "1",
                 "--top-k", "0", "--max-new-tokens", "0", "--no-stream")
    assert res.exit_code == 0, res.stderr
    assert res.output == "To be\n"
    res = invoke("vit", "attention", world["vit"], world["image"], "--out", tmp_path / "map.SVG")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "map.SVG").read_bytes().lstrip().startswith(b"<?xml")
