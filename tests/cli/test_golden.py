"""The golden runs (tests/golden_runs.py) give the recorded losses, weights
and sample bit for bit: moving code must not change a single result."""
import json

import pytest

from golden_runs import GOLDEN, RUNS, simd

RECORDED = json.loads(GOLDEN.read_text()).get(simd()) if GOLDEN.exists() else None


@pytest.mark.skipif(RECORDED is None, reason=f"no golden runs recorded for the {simd()} vector path "
                                              "(python tests/golden_runs.py records them)")
@pytest.mark.parametrize("name", list(RUNS))
def test_golden_run(name, tmp_path):
    assert RUNS[name](tmp_path) == RECORDED[name]
