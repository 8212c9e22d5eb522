"""The run scaffold's behaviours for `mingpt encoder train` through the CLI
(tests/run_checks.py): the non-finite policy, --seed reaching the dropout
masks, --resume bit for bit with its saved configuration (best/ and latest/
written), a contradicting option refused, 2 MPI ranks equal to 1 rank with
the doubled batch (classification and masked-LM pretraining, with gradient
accumulation)."""
import dataclasses

import pytest

from run_checks import FAMILIES, behaviour_test, check_mpi_equals_double_batch, mpi_missing, write_data

ENCODER = FAMILIES["encoder"]


test_run_behaviour = behaviour_test("encoder")


@pytest.mark.skipif(bool(mpi_missing()), reason=mpi_missing() or "")
@pytest.mark.parametrize("task", ["train", "pretrain"])
def test_two_ranks_equal_one_rank_double_batch(task, tmp_path):
    """Classification counts rows, pretraining masked tokens: either way a
    step's gradient is the mean over the global batch."""
    data = write_data(tmp_path)
    fam = ENCODER if task == "train" else dataclasses.replace(
        ENCODER, head=["encoder", "pretrain", "{data}/text.txt"])
    check_mpi_equals_double_batch(fam, data, tmp_path, 3, "--grad-accum", "2", "--epochs", "3")
