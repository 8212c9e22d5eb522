"""`mingpt encoder`: pretrain, train (from scratch and --init-from), eval,
predict end to end on tiny data; bad input answered by one clear line on
stderr and a non-zero exit (acceptance 5)."""
import json

import numpy as np
import pytest

from conftest import invoke, one_line_error
from run_checks import StopAfter

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "300", "--batch-size", "4",
        "--warmup-iters", "2", "--no-progress"]
WORDS = {"pos": "good great fine lovely", "neg": "bad awful poor dull", "mid": "plain average so so"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    rows = [{"text": f"this film was {WORDS[lab].split()[i % 4]} really {WORDS[lab].split()[(i + 1) % 4]}",
             "label": lab} for i in range(12) for lab in WORDS]
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "test.jsonl", rows[:9])
    return d


@pytest.fixture(scope="module")
def trained(data):
    out = data / "run"
    res = invoke("encoder", "train", "--train", data / "train.jsonl", "--val", data / "test.jsonl",
                 "--out", out, "--epochs", "3", "--max-len", "16", *TINY)
    assert res.exit_code == 0, res.stderr
    assert "val accuracy" in res.output
    return out


def test_train_eval_predict(trained, data):
    assert (trained / "best" / "model.safetensors").exists() and (trained / "latest" / "tokenizer.json").exists()
    cfg = json.loads((trained / "best" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "mid", "1": "neg", "2": "pos"} and cfg["model_type"] == "bert"
    recs = [json.loads(line) for line in open(trained / "log.jsonl")]
    assert [r["epoch"] for r in recs if r["type"] == "eval"] == [1, 2, 3]
    res = invoke("encoder", "eval", trained, data / "test.jsonl")
    assert res.exit_code == 0, res.stderr
    assert res.output.startswith("accuracy ") and "confusion matrix" in res.output
    res = invoke("encoder", "eval", trained, data / "test.jsonl", "--json")
    r = json.loads(res.output)
    assert r["n"] == 9 and sum(map(sum, r["confusion"])) == 9 and len(r["per_class"]) == 3
    res = invoke("encoder", "predict", trained, "this film was great really good", "so so")
    assert res.exit_code == 0, res.stderr
    lines = res.output.strip().splitlines()
    assert len(lines) == 2
    label, probs, _ = lines[0].split("\t")
    assert label in WORDS and abs(sum(float(p.split("=")[1]) for p in probs.split()) - 1) < 1e-3


def test_long_text_is_cut_with_a_note(trained):
    res = invoke("encoder", "predict", trained, "good " * 200)
    assert res.exit_code == 0
    assert "note: 1 of 1 given texts are longer than 14 tokens and were cut" in res.stderr


def test_pretrain_then_fine_tune(data, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"the film was {w} and the plot was {w}\n" for ws in WORDS.values() for w in ws.split()) * 3)
    res = invoke("encoder", "pretrain", text, "--out", tmp_path / "pre", "--max-iters", "4", "--max-len", "16", *TINY)
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "pre" / "latest" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    res = invoke("encoder", "train", "--train", data / "train.jsonl", "--out", tmp_path / "ft", "--init-from",
                 tmp_path / "pre", "--max-iters", "3", "--max-len", "16", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert "init:" in res.stderr and (tmp_path / "ft" / "best" / "model.safetensors").exists()


def test_max_pooling_and_token_dropout(data, tmp_path):
    """Both options reach the run: its logged losses differ from the
    defaults' from the first iteration, and eval reads max pooling back."""
    from mingpt_c.encoder.train import EncoderTrainConfig, train_classifier

    def losses(name, **kw):
        tc = EncoderTrainConfig(out=str(tmp_path / name), train_file=str(data / "train.jsonl"), max_iters=4,
                                max_len=16, n_layer=1, n_head=2, n_embd=16, vocab_size=300, batch_size=4,
                                warmup_iters=2, log_interval=1, progress=False, **kw)
        train_classifier(tc, log=lambda m: None)
        return [json.loads(line)["loss"] for line in open(tmp_path / name / "log.jsonl")
                if '"train"' in line]

    base = losses("base")
    assert len(base) == 4 and base == losses("again")
    dropped, pooled = losses("drop", token_dropout=0.3), losses("max", pooling="max")
    assert dropped[0] != base[0] and pooled[0] != base[0]
    res = invoke("encoder", "eval", tmp_path / "max", data / "test.jsonl", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "max" / "best" / "config.json").read_text())["mingpt"]["config"]["pooling"] == "max"


def test_bigram_buckets(data, tmp_path):
    """--bigram-buckets reaches the model, the checkpoint and `info`; eval
    reads it back; export refuses it (BERT has no such table)."""
    out = tmp_path / "bi"
    res = invoke("encoder", "train", "--train", data / "train.jsonl", "--out", out, "--epochs", "2",
                 "--max-len", "16", "--bigram-buckets", "97", *TINY)
    assert res.exit_code == 0, res.stderr
    assert "97 bigram buckets" in res.stderr
    cfg = json.loads((out / "best" / "config.json").read_text())["mingpt"]["config"]
    assert cfg["bigram_buckets"] == 97
    from safetensors.numpy import load_file
    assert load_file(out / "best" / "model.safetensors")["bert.embeddings.bigram_embeddings.weight"].shape == (97, 16)
    res = invoke("info", out)
    assert res.exit_code == 0 and "97 bigram buckets" in res.output
    res = invoke("encoder", "eval", out, data / "test.jsonl", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.output)["n"] == 9
    one_line_error(invoke("export", out, "--out", tmp_path / "hf"), "bigram embeddings")
    res = invoke("encoder", "train", "--train", data / "train.jsonl", "--out", tmp_path / "neg",
                 "--bigram-buckets", "-1", *TINY)
    assert res.exit_code == 2 and "--bigram-buckets': -1 is not in the range" in res.stderr


@pytest.mark.parametrize("line,needle", [
    ("{oops", "line 3: not valid JSON"),
    ('{"label": "pos"}', 'line 3: no "text"'),
    ('{"text": "nice"}', 'line 3: no "label"'),
    ('{"text": "", "label": "pos"}', "line 3: the text is empty"),
])
def test_bad_training_lines(tmp_path, line, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n' + line + "\n")
    one_line_error(invoke("encoder", "train", "--train", p, "--out", tmp_path / "o", *TINY), needle, str(p))


def test_unseen_label_at_eval(trained, tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "good", "label": "pos"}, {"text": "hm", "label": "weird"}])
    one_line_error(invoke("encoder", "eval", trained, p), 'label "weird"', "not seen in training")


def test_other_bad_input(trained, data, tmp_path):
    one_line_error(invoke("encoder", "predict", trained, "   "), "text 1 is empty")
    one_line_error(invoke("encoder", "eval", tmp_path / "nope", data / "test.jsonl"), "no such checkpoint")
    one_line_error(invoke("encoder", "eval", trained, tmp_path / "missing.jsonl"), "no such file")
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 1}])
    one_line_error(invoke("encoder", "train", "--train", one, "--out", tmp_path / "o", *TINY), "at least two classes")
    pre = tmp_path / "pre"
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n" * 20)
    assert invoke("encoder", "pretrain", corpus, "--out", pre, "--max-iters", "1", "--max-len", "8", *TINY).exit_code == 0
    one_line_error(invoke("encoder", "predict", pre, "hello"), "no classifier head")
    one_line_error(invoke("encoder", "train", "--train", data / "train.jsonl", "--out", tmp_path / "x",
                          "--init-from", pre, "--max-len", "64", *TINY), "--max-len 64 exceeds")
    one_line_error(invoke("encoder", "train", "--train", data / "train.jsonl", "--out", trained, *TINY),
                   "already holds a run")



@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_interrupt_then_resume_is_bit_identical(data, tmp_path, monkeypatch, command):
    """Ctrl-C mid-epoch saves latest; --resume continues with the batch and
    the optimizer state it stopped at, ending on the uninterrupted run's weights."""
    from safetensors.numpy import load_file

    import mingpt_c.run.scaffold as scaffold

    head = (["encoder", "train", "--train", data / "train.jsonl", "--val", data / "test.jsonl"]
            if command == "train" else ["encoder", "pretrain", data / "train.jsonl"])
    args = ["--epochs", "3", "--max-len", "16", "--dropout", "0.1", *TINY]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke(*head, "--out", full, *args).exit_code == 0
    monkeypatch.setattr(scaffold, "StopFlag", StopAfter(14))   # 9 batches an epoch: stops in the second
    res = invoke(*head, "--out", cut, *args)
    assert res.exit_code == 130 and "--resume" in res.stderr   # 128 + SIGINT, the checkpoint saved
    state = json.loads((cut / "latest" / "train_state.json").read_text())
    assert (state["iter"], state["epoch"], state["batch"]) == (13, 1, 4)
    monkeypatch.undo()
    res = invoke(*head, "--out", cut, *args, "--resume")
    assert res.exit_code == 0, res.stderr
    a, b = load_file(str(full / "latest" / "model.safetensors")), load_file(str(cut / "latest" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    one_line_error(invoke(*head, "--out", tmp_path / "none", *args, "--resume"), "no checkpoint to resume")


def test_imdb_starts_from_its_recipe(data, tmp_path):
    """A new run on a --train file named for IMDB starts from the published
    recipe (the run's first line lists what it set); a flag given wins."""
    from mingpt_c.cli.encoder import RECIPES

    imdb = tmp_path / "IMDB-reviews.jsonl"
    imdb.write_text((data / "train.jsonl").read_text())
    out = tmp_path / "run"
    res = invoke("encoder", "train", "--train", imdb, "--out", out, "--max-iters", "1", "--bigram-buckets", "0",
                 "--lr", "1e-3", "--no-progress")
    assert res.exit_code == 0, res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith("recipe: imdb (--vocab-size 32768 --max-len 384 --truncate head_tail"), first
    assert "--bigram-buckets" not in first and "--lr" not in first
    cfg = json.loads((out / "run_config.json").read_text())
    want = dict(RECIPES["imdb"], bigram_buckets=0, lr=1e-3)
    assert {k: cfg[k] for k in want} == want
    assert want["max_len"] == 384 and want["epochs"] == 2 and want["token_dropout"] == 0.1


def test_recipe_option(data, tmp_path):
    """--recipe none keeps the defaults on an IMDB file; --recipe imdb applies
    it to any file; auto leaves other files and --init-from runs alone."""
    imdb = tmp_path / "imdb" / "train.jsonl"   # the folder's name counts too
    imdb.parent.mkdir()
    imdb.write_text((data / "train.jsonl").read_text())
    cases = [(imdb, ["--recipe", "none"], 256), (data / "train.jsonl", ["--recipe", "imdb"], 384),
             (data / "train.jsonl", [], 256), (imdb, [], 384)]
    for i, (train, more, max_len) in enumerate(cases):
        out = tmp_path / f"run{i}"
        res = invoke("encoder", "train", "--train", train, "--out", out, "--max-iters", "1",
                     "--bigram-buckets", "0", "--vocab-size", "300", "--no-progress", *more)
        assert res.exit_code == 0, res.stderr
        assert json.loads((out / "run_config.json").read_text())["max_len"] == max_len, (train, more)
        assert ("recipe: imdb" in res.stderr) == (max_len == 384)
    res = invoke("encoder", "train", "--train", imdb, "--out", tmp_path / "ft", "--init-from", tmp_path / "run0"
                 / "latest", "--max-iters", "1", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert "recipe:" not in res.stderr and json.loads((tmp_path / "ft" / "run_config.json").read_text())["lr"] != 2e-3
    one_line_error(invoke("encoder", "train", "--train", imdb, "--out", tmp_path / "ft2", "--init-from",
                          tmp_path / "run0" / "latest", "--recipe", "imdb"), "--recipe imdb", "--init-from")
    text = " ".join(invoke("encoder", "train", "--help").output.split())   # unwrapped
    assert "--recipe [auto|imdb|none]" in text and "imdb: --vocab-size 32768 --bigram-buckets 262144" in text


def test_resume_does_not_apply_the_recipe(data, tmp_path):
    imdb = tmp_path / "imdb.jsonl"
    imdb.write_text((data / "train.jsonl").read_text())
    out = tmp_path / "run"
    common = ["--train", imdb, "--out", out, "--bigram-buckets", "0", "--no-progress"]
    assert invoke("encoder", "train", *common, "--recipe", "none", "--max-iters", "1").exit_code == 0
    res = invoke("encoder", "train", *common, "--resume", "--max-iters", "2")
    assert res.exit_code == 0, res.stderr
    assert "recipe:" not in res.stderr
    assert json.loads((out / "run_config.json").read_text())["max_len"] == 256
