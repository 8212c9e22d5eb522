"""The run scaffold's behaviours for `mingpt train` through the CLI
(tests/run_checks.py): the non-finite policy, --seed reaching the dropout
masks, --resume bit for bit with its saved configuration (best/ and latest/
written), a contradicting option refused. 2 MPI ranks against 1 rank with
the doubled batch: tests/gpt/test_mpi.py."""
import pytest

from run_checks import (FAMILIES, check_contradicting_flag, check_non_finite, check_resume_bit_exact,
                        check_seed_reaches_dropout, write_data)

CHECKS = {"non_finite": check_non_finite, "seed_reaches_dropout": check_seed_reaches_dropout,
          "resume_bit_exact": check_resume_bit_exact, "contradicting_flag": check_contradicting_flag}


@pytest.mark.parametrize("check", list(CHECKS))
def test_run_behaviour(check, tmp_path, monkeypatch):
    data = write_data(tmp_path)
    CHECKS[check](FAMILIES["gpt"], data, tmp_path, monkeypatch)
