"""The run scaffold's behaviours for `mingpt train` through the CLI
(tests/run_checks.py): the non-finite policy, --seed reaching the dropout
masks, --resume bit for bit with its saved configuration (best/ and latest/
written), a contradicting option refused. 2 MPI ranks against 1 rank with
the doubled batch: tests/gpt/test_mpi.py."""
from run_checks import behaviour_test

test_run_behaviour = behaviour_test("gpt")
