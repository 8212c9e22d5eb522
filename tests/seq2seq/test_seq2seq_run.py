"""The run scaffold's behaviours for `mingpt seq2seq train` through the CLI
(tests/run_checks.py): the non-finite policy, --seed reaching the dropout
masks, --resume bit for bit with its saved configuration (best/ and latest/
written), a contradicting option refused, 2 MPI ranks equal to 1 rank with
the doubled batch, --ema's average (tests/run_checks.py); with --ema, the
non-finite policy holds and the validation loss is the saved average's; a distilling run resumes bit for
bit on the pairs its first sitting decoded."""
import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from run_checks import (CHECKS, FAMILIES, behaviour_test, check_mpi_equals_double_batch, mpi_missing, ok, run,
                        write_data)

test_run_behaviour = behaviour_test("seq2seq")


@pytest.mark.skipif(bool(mpi_missing()), reason=mpi_missing() or "")
def test_two_ranks_equal_one_rank_double_batch(tmp_path):
    """A micro-batch counts by its target tokens: the step's gradient is the
    mean over the global batch's tokens on any number of ranks."""
    data = write_data(tmp_path)
    check_mpi_equals_double_batch(FAMILIES["seq2seq"], data, tmp_path, 4, "--grad-accum", "2", "--epochs", "3")



def _with_average(decay: str = "0.9"):
    fam = FAMILIES["seq2seq"]
    return dataclasses.replace(fam, tiny=[*fam.tiny, "--ema", decay])


def _training_weights(ckpt) -> np.ndarray:
    return load_file(str(ckpt / "optimizer.safetensors"))["params"]


def test_non_finite_policy_with_weight_average(tmp_path, monkeypatch):
    """--ema (the scaffold's, checked for every family by run_checks'
    weight_average) under the non-finite policy: a skipped step and the run
    goes on; a run that diverges leaves latest/ (the average) as it was."""
    CHECKS["non_finite"](_with_average(), write_data(tmp_path), tmp_path, monkeypatch)


def test_eval_limit_validates_on_the_first_sources(tmp_path):
    """--eval-limit N: each epoch's validation loss, as its greedy decoding,
    covers the first N validation sources."""
    from mingpt_c.seq2seq import data as sd
    from mingpt_c.seq2seq.train import encode_pairs, load_model, mean_loss

    data = write_data(tmp_path)
    out = tmp_path / "limited"
    res = ok(run(*FAMILIES["seq2seq"].argv(data, "--out", out, "--eval-limit", "3")))
    model, vocabs = load_model(out / "latest")
    pairs = sd.read_pairs(data / "pairs.tsv")
    last = [json.loads(line) for line in open(out / "log.jsonl") if '"eval"' in line][-1]
    assert mean_loss(model, *encode_pairs(vocabs, pairs[:3], model.cfg)[:2]) == pytest.approx(last["val_loss"],
                                                                                             rel=1e-6)
    assert mean_loss(model, *encode_pairs(vocabs, pairs, model.cfg)[:2]) != pytest.approx(last["val_loss"],
                                                                                          rel=1e-3)
    assert f"3 validation sources (of {len(pairs)}: --eval-limit)" in res.output
    assert "on 3 sources" in res.output


def test_weight_average_is_the_model_evaluated(tmp_path):
    """The validation loss in log.jsonl is that of the saved model, the
    average, not of the training weights (kept in optimizer.safetensors)."""
    from mingpt_c.seq2seq import data as sd
    from mingpt_c.seq2seq.model import Seq2Seq
    from mingpt_c.seq2seq.train import encode_pairs, load_model, mean_loss

    data = write_data(tmp_path)
    out = tmp_path / "avg"
    ok(run(*_with_average().argv(data, "--out", out)))
    model, vocabs = load_model(out / "latest")
    src, tgt, _ = encode_pairs(vocabs, sd.read_pairs(data / "pairs.tsv")[:4], model.cfg)   # the tiny's --eval-limit
    last = [json.loads(line) for line in open(out / "log.jsonl") if '"eval"' in line][-1]
    assert mean_loss(model, src, tgt) == pytest.approx(last["val_loss"], rel=1e-6)
    trained = Seq2Seq(model.cfg, _training_weights(out / "latest"))
    assert abs(mean_loss(trained, src, tgt) - last["val_loss"]) > 1e-4


@pytest.mark.parametrize("mode,kept", [("sequence", "distilled.jsonl"), ("token", "distilled.npz")])
def test_resume_bit_exact_when_distilling(mode, kept, tmp_path, monkeypatch):
    """--distill-from: the stopped run's resumption reads back the targets
    its first sitting made and ends where the uninterrupted run does."""
    data = write_data(tmp_path)
    fam = FAMILIES["seq2seq"]
    teacher = tmp_path / "teacher"
    ok(run(*fam.argv(data, "--out", teacher, "--epochs", "40", "--dropout", "0", "--lr", "3e-3")))
    student = dataclasses.replace(fam, tiny=[*fam.tiny, "--distill-from", str(teacher), "--distill", mode])
    CHECKS["resume_bit_exact"](student, data, tmp_path, monkeypatch)
    assert (tmp_path / "cut" / kept).read_bytes() == (tmp_path / "full" / kept).read_bytes()
