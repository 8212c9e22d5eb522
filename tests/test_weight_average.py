"""The exponential moving average of the weights (nn/optim.py
WeightAverage): its recursion with the ramp of the decay against float64,
and the swap that lets evaluation read the average and training go on."""
import numpy as np
import pytest

from conftest import assert_close, f32
from mingpt_c.nn.optim import WeightAverage


def test_follows_its_recursion(rng):
    p = f32(rng.normal(size=1001))
    avg = WeightAverage(p, 0.99)
    want = p.astype(np.float64)
    for t in range(1, 40):
        p += f32(rng.normal(size=p.size)) * np.float32(0.1)
        avg.update(p, t)
        d = min(0.99, (1 + t) / (10 + t))   # the ramp: the first steps fade fast
        want = d * want + (1 - d) * p
    assert_close(avg.avg, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(avg.avg, p, atol=1e-2)


def test_swapped_in_restores_the_training_weights(rng):
    p = f32(rng.normal(size=64))
    avg = WeightAverage(p, 0.9, avg=f32(rng.normal(size=64)))
    own = p.copy()
    with avg.swapped_in(p):
        assert np.array_equal(p, avg.avg)
    assert np.array_equal(p, own)
    with pytest.raises(RuntimeError), avg.swapped_in(p):
        raise RuntimeError("evaluation failed")
    assert np.array_equal(p, own)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5])
def test_rejects_a_decay_outside_0_1(bad):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(f32(np.zeros(3)), bad)
