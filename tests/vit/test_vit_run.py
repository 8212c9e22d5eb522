"""The run scaffold's behaviours for `mingpt vit train` through the CLI
(tests/run_checks.py): the non-finite policy, --seed reaching the dropout
masks, --resume bit for bit with its saved configuration (best/ and latest/
written), a contradicting option refused, 2 MPI ranks equal to 1 rank with
the doubled batch, and gradient accumulation equal to the doubled batch."""
import pytest

from run_checks import (FAMILIES, behaviour_test, check_mpi_equals_double_batch, mpi_missing, ok, run,
                        train_losses,
                        weights)
from conftest import assert_close

VIT = FAMILIES["vit"]


test_run_behaviour = behaviour_test("vit")


@pytest.mark.skipif(bool(mpi_missing()), reason=mpi_missing() or "")
def test_two_ranks_equal_one_rank_double_batch(tmp_path):
    check_mpi_equals_double_batch(VIT, tmp_path, tmp_path, 8)


def test_grad_accum_equals_double_batch(tmp_path):
    """Two micro-batches of B images a step train as one batch of 2B (the
    same images: an epoch's global batches are consecutive slices of its order)."""
    one, two = tmp_path / "one", tmp_path / "two"
    ok(run(*VIT.argv(tmp_path, "--out", one, "--batch-size", "16", "--dropout", "0")))
    ok(run(*VIT.argv(tmp_path, "--out", two, "--batch-size", "8", "--grad-accum", "2", "--dropout", "0")))
    l1, l2 = train_losses(one), train_losses(two)
    assert sorted(l1) == sorted(l2) and len(l1) == 8
    assert_close([l2[k] for k in sorted(l2)], [l1[k] for k in sorted(l1)], rtol=1e-5, atol=0)
    w1, w2 = weights(one / "latest"), weights(two / "latest")
    for k in w1:
        assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, what=k)
