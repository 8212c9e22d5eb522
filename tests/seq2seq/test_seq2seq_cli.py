"""`mingpt seq2seq` through the CLI: a word-reversal task learned to BLEU
>= 95 through translate -> detokenize -> sacrebleu; translate from
arguments and stdin; an ensemble of checkpoints; a right-to-left model
re-scoring the beam; checkpoints of this
family and of others; the
alignment map (a small G2P model puts each letter's phoneme over that
letter); sequence-level distillation from the reversal model; bad input
as one line each."""
import json

import numpy as np
import pytest

from conftest import invoke, one_line_error

WORDS = "red blue green black white pink gray gold cyan teal lime navy".split()


def reversal_pairs(n: int, rng) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        w = list(rng.choice(WORDS, rng.integers(4, 9)))
        out.append((" ".join(w), " ".join(reversed(w))))
    return out


def write_tsv(path, pairs):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    return path


def ok(res):
    assert res.exit_code == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def reverser(tmp_path_factory):
    """A model trained to reverse sequences of words (symbols on both sides)."""
    d = tmp_path_factory.mktemp("reverse")
    rng = np.random.default_rng(0)
    train = write_tsv(d / "train.tsv", reversal_pairs(3000, rng))
    write_tsv(d / "test.tsv", reversal_pairs(100, rng))
    ok(invoke("seq2seq", "train", "--train", train, "--out", d / "run", "--src-vocab", "symbols",
              "--tgt-vocab", "symbols", "--shared-vocab", "--enc-layers", "2", "--dec-layers", "2",
              "--n-embd", "64", "--n-head", "4", "--dropout", "0", "--label-smoothing", "0",
              "--batch-size", "32", "--max-iters", "1000", "--lr", "1e-3", "--warmup-iters", "50",
              "--threads", "2", "--no-progress"))
    return d


def test_reversal_reaches_bleu_95(reverser):
    res = ok(invoke("seq2seq", "eval", reverser / "run", reverser / "test.tsv", "--json"))
    r = json.loads(res.output)
    assert r["n"] == 100
    assert r["bleu"] >= 95, r
    assert r["exact"] >= 0.9, r


def test_translate_arguments_and_stdin(reverser):
    res = ok(invoke("seq2seq", "translate", reverser / "run", "red blue green gold", "navy lime teal pink",
                    "--beam", "4"))
    assert res.stdout.splitlines() == ["gold green blue red", "pink teal lime navy"]
    res = ok(invoke("seq2seq", "translate", reverser / "run", input="red blue green gold\nnavy lime teal pink\n"))
    assert res.stdout.splitlines() == ["gold green blue red", "pink teal lime navy"]


def test_ensemble_of_a_model_with_itself_scores_as_the_model(reverser, tmp_path):
    """--ensemble through eval and translate (the same model twice: the
    mean of equal log-probabilities is one model's); a checkpoint of other
    vocabularies is one line naming them."""
    alone = json.loads(ok(invoke("seq2seq", "eval", reverser / "run", reverser / "test.tsv", "--json")).output)
    both = json.loads(ok(invoke("seq2seq", "eval", reverser / "run", reverser / "test.tsv", "--json",
                                "--ensemble", reverser / "run")).output)
    assert both == alone
    res = ok(invoke("seq2seq", "translate", reverser / "run", "red blue green gold", "--ensemble", reverser / "run",
                    "--beam", "4"))
    assert res.stdout.splitlines() == ["gold green blue red"]
    other = write_tsv(tmp_path / "other.tsv", [("a b c", "c b a"), ("b c", "c b")])
    ok(invoke("seq2seq", "train", "--train", other, "--out", tmp_path / "other", "--src-vocab", "symbols",
              "--tgt-vocab", "symbols", "--enc-layers", "1", "--dec-layers", "1", "--n-embd", "16", "--n-head", "2",
              "--max-iters", "1", "--threads", "1", "--no-progress"))
    one_line_error(invoke("seq2seq", "translate", reverser / "run", "red blue", "--ensemble", tmp_path / "other"),
                   "vocabulary", "ensemble")


def test_right_to_left_model_reranks_through_the_cli(reverser, tmp_path):
    """train --reverse-target learns the targets backwards and still prints
    them in reading order (the reversal task at BLEU >= 95 through eval,
    `mingpt info` says so, the alignment map draws); it re-scores the
    left-to-right model's beam (--rerank); without a beam, with a weight
    out of range, ensembled with a left-to-right model or distilled token
    by token into one: one line each."""
    run = tmp_path / "r2l"
    ok(invoke("seq2seq", "train", "--train", reverser / "train.tsv", "--out", run, "--reverse-target",
              "--src-vocab", "symbols", "--tgt-vocab", "symbols", "--shared-vocab", "--enc-layers", "2",
              "--dec-layers", "2", "--n-embd", "64", "--n-head", "4", "--dropout", "0", "--label-smoothing", "0",
              "--batch-size", "32", "--max-iters", "400", "--lr", "1e-3", "--warmup-iters", "50",
              "--threads", "2", "--no-progress"))
    test = reverser / "test.tsv"
    alone = json.loads(ok(invoke("seq2seq", "eval", run, test, "--json")).output)
    assert alone["bleu"] >= 95, alone
    assert "writes right to left" in ok(invoke("info", run)).output
    assert ok(invoke("seq2seq", "translate", run, "red blue green gold")).stdout.splitlines() == \
        ["gold green blue red"]
    ok(invoke("seq2seq", "attention", run, "red blue green gold", "--out", tmp_path / "map.png"))
    both = json.loads(ok(invoke("seq2seq", "eval", reverser / "run", test, "--json", "--beam", "4",
                                "--rerank", run)).output)
    assert both["bleu"] >= 95, both
    res = ok(invoke("seq2seq", "translate", reverser / "run", "red blue green gold", "--beam", "3", "--rerank", run,
                    "--rerank-weight", "0.8"))
    assert res.stdout.splitlines() == ["gold green blue red"]
    one_line_error(invoke("seq2seq", "eval", reverser / "run", test, "--rerank", run), "--beam")
    one_line_error(invoke("seq2seq", "eval", reverser / "run", test, "--beam", "4", "--rerank", run,
                          "--rerank-weight", "1.5"), "--rerank-weight")
    one_line_error(invoke("seq2seq", "translate", reverser / "run", "red blue", "--ensemble", run), "direction")
    one_line_error(invoke("seq2seq", "train", "--train", reverser / "train.tsv", "--out", tmp_path / "student",
                          "--distill-from", run, "--distill", "token", "--enc-layers", "1", "--dec-layers", "1",
                          "--n-embd", "16", "--n-head", "2", "--max-iters", "1", "--threads", "1", "--no-progress"),
                   "direction")


STUDENT = ["--src-vocab", "symbols", "--tgt-vocab", "symbols", "--enc-layers", "1", "--dec-layers", "1",
           "--n-embd", "16", "--n-head", "2", "--batch-size", "16", "--max-iters", "3", "--threads", "1",
           "--no-progress"]


def test_distillation_trains_on_the_teachers_outputs(reverser, tmp_path):
    """--distill-from: the pairs trained on are each distinct source with the
    teacher's output for it, whatever the file's targets (here the sources
    copied, with a symbol the teacher never writes); the vocabularies still
    cover the references; --resume reads the pairs back without the teacher."""
    rng = np.random.default_rng(1)
    sources = [s for s, _ in reversal_pairs(40, rng)]
    data = write_tsv(tmp_path / "copy.tsv", [(s, s + " zzz") for s in sources + sources[:5]])
    out = tmp_path / "student"
    res = ok(invoke("seq2seq", "train", "--train", data, "--out", out, "--distill-from", reverser / "run",
                    "--distill-beam", "2", *STUDENT))
    distinct = list(dict.fromkeys(sources))
    want = ok(invoke("seq2seq", "translate", reverser / "run", "--beam", "2", input="\n".join(distinct))).stdout
    got = [json.loads(line) for line in open(out / "distilled.jsonl")]
    assert [(g["source"], g["target"]) for g in got] == list(zip(distinct, want.splitlines()))
    assert f"{len(distinct)} outputs (100.0%) are none of their references" in res.stderr
    from mingpt_c.seq2seq.train import load_model

    _, vocabs = load_model(out / "latest")
    assert vocabs["tgt"].unknown("zzz red") == []
    teacher = tmp_path / "teacher"
    (reverser / "run").rename(teacher)
    try:
        res = ok(invoke("seq2seq", "train", "--out", out, "--resume", "--max-iters", "5", "--no-progress"))
    finally:
        teacher.rename(reverser / "run")
    assert "distill:" not in res.stderr
    (out / "distilled.jsonl").unlink()
    one_line_error(invoke("seq2seq", "train", "--out", out, "--resume", "--max-iters", "7", "--no-progress"),
                   "distilled.jsonl", "missing")


def test_token_distillation_mixes_in_the_teachers_distributions(reverser, tmp_path):
    """--distill token: the student takes the teachers' vocabularies; the
    saved table holds, along each reference, the mean of the two teachers'
    next-token probabilities (its top 8, renormalised); --resume reads it
    back without the teachers."""
    from mingpt_c.seq2seq.distill import TokenTargets
    from mingpt_c.seq2seq.train import load_model, make_batch

    rng = np.random.default_rng(2)
    pairs = reversal_pairs(30, rng)
    data = write_tsv(tmp_path / "rev.tsv", pairs)
    other = tmp_path / "other"   # a second teacher: the first, a few steps further on other pairs
    ok(invoke("seq2seq", "train", "--train", write_tsv(tmp_path / "more.tsv", reversal_pairs(64, rng)),
              "--out", other, "--init-from", reverser / "run", "--max-iters", "3", "--lr", "1e-2",
              "--threads", "1", "--no-progress"))
    out = tmp_path / "student"
    res = ok(invoke("seq2seq", "train", "--train", data, "--out", out, "--distill-from", reverser / "run",
                    "--distill-from", other / "latest", "--distill", "token", "--distill-weight", "0.7",
                    *STUDENT))
    assert "distill: the distributions of 2 teacher(s)" in res.stderr
    student, sv = load_model(out / "latest")
    teachers = [load_model(reverser / "run")[0], load_model(other / "latest")[0]]
    tv = load_model(reverser / "run")[1]
    assert sv["src"].to_json() == tv["src"].to_json() and sv["tgt"].to_json() == tv["tgt"].to_json()
    V = student.cfg.tgt_vocab_size
    table = TokenTargets.load(out / "distilled.npz", len(pairs), V)
    for i in (0, 17):
        src, tgt = [tv["src"].encode(pairs[i][0])], [tv["tgt"].encode(pairs[i][1])]
        s, m, tin, tout = make_batch(src, tgt, student.cfg)
        mean = np.zeros((tout.size, V))
        for t in teachers:
            z = np.asarray(t.forward(s, m, tin), np.float64)
            mean += np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True) / 2
        top = np.sort(np.argsort(-mean, axis=1)[:, :8], axis=1)
        got = table.dense([i], tout.shape[1])
        want = np.zeros_like(mean)
        np.put_along_axis(want, top, np.take_along_axis(mean, top, 1), 1)
        np.testing.assert_allclose(got, want / want.sum(1, keepdims=True), atol=1e-6)
    ok(invoke("seq2seq", "train", "--out", out, "--resume", "--max-iters", "5", "--no-progress"))
    one_line_error(invoke("seq2seq", "train", "--train", data, "--out", tmp_path / "gpu", "--distill-from",
                          reverser / "run", "--distill", "token", "--device", "cuda", *STUDENT),
                   "--distill token", "CPU")


def test_distillation_teacher_that_cannot_read_the_sources_is_one_line(reverser, tmp_path):
    data = write_tsv(tmp_path / "purple.tsv", [("red purple", "purple red"), ("blue red", "red blue")])
    one_line_error(invoke("seq2seq", "train", "--train", data, "--out", tmp_path / "s", "--distill-from",
                          reverser / "run", *STUDENT), "'purple'", "vocabulary")
    assert not (tmp_path / "s" / "latest").exists()


@pytest.mark.parametrize("by,key,higher,shown", [("per", "val_per", False, "best val PER"),
                                                  ("bleu", "val_bleu", True, "best val BLEU")])
def test_best_checkpoint_by_a_decoding_measure(tmp_path, by, key, higher, shown):
    """--best-by: best/ is the epoch with the best greedy error rate (or
    BLEU) on the validation sources, not the lowest loss; its train state
    and the done line carry that value. By default every validation source
    is decoded."""
    rng = np.random.default_rng(2)
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(96, rng))
    val = write_tsv(tmp_path / "val.tsv", reversal_pairs(24, rng))
    out = tmp_path / "run"
    res = ok(invoke("seq2seq", "train", "--train", train, "--val", val, "--out", out, "--best-by", by,
                    "--epochs", "6", "--lr", "3e-3", "--warmup-iters", "4",
                    "--src-vocab", "symbols", "--tgt-vocab", "symbols", "--enc-layers", "1", "--dec-layers", "1",
                    "--n-embd", "32", "--n-head", "2", "--batch-size", "16", "--threads", "1", "--no-progress"))
    assert shown in res.stdout and "on 24 sources" in res.stderr
    for sitting in range(2):   # the second: resumed for two more epochs, the best so far kept
        evals = [r for r in map(json.loads, open(out / "log.jsonl")) if r["type"] == "eval"]
        values = [r[key] for r in evals]
        assert len(set(values)) > 1, values          # a choice to make
        best = max(values) if higher else min(values)
        first = evals[values.index(best)]            # a tie keeps the earlier epoch
        state = json.loads((out / "best" / "train_state.json").read_text())
        assert state[f"best_{key}"] == best and state["iter"] == first["iter"]
        assert "best_val_loss" not in state
        if not sitting:
            ok(invoke("seq2seq", "train", "--out", out, "--resume", "--epochs", "8", "--no-progress"))
    info = ok(invoke("info", out / "best")).stdout
    assert shown in info


def test_best_by_what_the_run_cannot_measure_is_one_line(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv", [("abc", "cba"), ("de", "ed")])
    base = ["seq2seq", "train", "--train", data, "--max-iters", "1", "--enc-layers", "1", "--dec-layers", "1",
            "--n-embd", "16", "--n-head", "2", "--threads", "1", "--no-progress"]
    one_line_error(invoke(*base, "--val", data, "--best-by", "wer", "--out", tmp_path / "a"),
                   "--best-by wer", "symbol targets")
    one_line_error(invoke(*base, "--best-by", "chrf", "--out", tmp_path / "b"), "--best-by chrf", "--val")
    assert not (tmp_path / "a" / "latest").exists() and not (tmp_path / "b" / "latest").exists()


def test_unknown_symbol_is_one_line(reverser):
    one_line_error(invoke("seq2seq", "translate", reverser / "run", "red purple blue"), "'purple'", "vocabulary")


def test_long_source_is_cut_with_a_note(reverser):
    res = ok(invoke("seq2seq", "translate", reverser / "run", " ".join(["red"] * 40)))
    assert "cut to their first" in res.stderr


def test_attention_map_png(reverser, tmp_path):
    out = tmp_path / "map.png"
    res = ok(invoke("seq2seq", "attention", reverser / "run", "red blue green gold", "--out", out))
    assert res.stdout.strip() == "gold green blue red"
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_another_kind_of_checkpoint_is_one_line(tmp_path):
    ok(invoke("train", "--max-iters", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
              "--block-size", "16", "--batch-size", "2", "--eval-iters", "1", "--out", tmp_path / "gpt",
              "--no-progress", "--threads", "1"))
    one_line_error(invoke("seq2seq", "translate", tmp_path / "gpt", "hello"), "GPT checkpoint", "mingpt sample")


@pytest.mark.parametrize("content,needles", [
    ("red blue\tblue red\nno tab here\n", ["line 2", "tab"]),
    ("red blue\tblue red\n\tblue\n", ["line 2", "source"]),
    ("red blue\t\n", ["line 1", "target"]),
])
def test_bad_training_file_names_the_line(tmp_path, content, needles):
    f = tmp_path / "bad.tsv"
    f.write_text(content)
    one_line_error(invoke("seq2seq", "train", "--train", f, "--out", tmp_path / "run", "--no-progress"), *needles)
    assert not (tmp_path / "run" / "latest").exists()


def test_g2p_alignment_follows_the_letters(tmp_path):
    """A small model trained on short CMUdict words: for words whose
    letters map one to one onto phonemes, each output phoneme's strongest
    source position is its own letter (or a neighbour)."""
    from mingpt_c.seq2seq.data import g2p_pairs, g2p_split

    short = [(w, p) for w, p in g2p_pairs(g2p_split()["train"]) if len(w) <= 5 and "'" not in w]
    train = write_tsv(tmp_path / "short.tsv", short[::2])
    out = tmp_path / "g2p"
    ok(invoke("seq2seq", "train", "--train", train, "--tgt-vocab", "symbols", "--out", out,
              "--enc-layers", "1", "--dec-layers", "1",
              "--n-embd", "64", "--n-head", "2", "--dropout", "0", "--batch-size", "64", "--max-iters", "700",
              "--lr", "1e-3", "--warmup-iters", "50", "--eval-limit", "50", "--threads", "2", "--no-progress"))
    from mingpt_c.seq2seq.attention import alignment
    from mingpt_c.seq2seq.train import load_model

    model, vocabs = load_model(out)
    near = total = 0
    for word in ("bat", "dog", "pet", "sit", "map", "fun", "cat", "ten", "hid", "rub"):
        src = vocabs["src"].encode(word)
        phones = vocabs["tgt"].encode(" ".join(word_phones[word]))
        A = alignment(model, src, phones)[:len(phones)]       # the </s> row left out
        for t, row in enumerate(A):
            near += abs(int(row.argmax()) - t) <= 1
            total += 1
    assert near / total >= 0.8, (near, total)
    res = ok(invoke("seq2seq", "attention", out, "dog", "--out", tmp_path / "dog.png"))
    assert res.stdout.split()[0] == "D" and (tmp_path / "dog.png").stat().st_size > 1000


word_phones = {"bat": "B AE T", "dog": "D AO G", "pet": "P EH T", "sit": "S IH T", "map": "M AE P",
               "fun": "F AH N", "cat": "K AE T", "ten": "T EH N", "hid": "HH IH D", "rub": "R AH B"}
word_phones = {k: v.split() for k, v in word_phones.items()}


def test_export_of_a_model_trained_here_is_one_line(reverser, tmp_path):
    """Only a Marian-shaped model exports: ours has interleaved sinusoids and its own vocabularies."""
    one_line_error(invoke("export", reverser / "run", "--out", tmp_path / "hf"), "MarianMTModel", "sinusoidal")
    assert not (tmp_path / "hf").exists()
