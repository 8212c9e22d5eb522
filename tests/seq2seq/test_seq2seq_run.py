"""The run scaffold's behaviours for `mingpt seq2seq train` through the CLI
(tests/run_checks.py): the non-finite policy, --seed reaching the dropout
masks, --resume bit for bit with its saved configuration (best/ and latest/
written), a contradicting option refused, 2 MPI ranks equal to 1 rank with
the doubled batch."""
import pytest

from run_checks import FAMILIES, behaviour_test, check_mpi_equals_double_batch, mpi_missing, write_data

test_run_behaviour = behaviour_test("seq2seq")


@pytest.mark.skipif(bool(mpi_missing()), reason=mpi_missing() or "")
def test_two_ranks_equal_one_rank_double_batch(tmp_path):
    """A micro-batch counts by its target tokens: the step's gradient is the
    mean over the global batch's tokens on any number of ranks."""
    data = write_data(tmp_path)
    check_mpi_equals_double_batch(FAMILIES["seq2seq"], data, tmp_path, 4, "--grad-accum", "2", "--epochs", "3")
