"""The exponential moving average of the weights (nn/optim.py
WeightAverage): its recursion with the ramp of the decay against float64,
the swap that lets evaluation read the average and training go on, and
how the run scaffold (--ema) moves, evaluates and saves it."""
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


@pytest.mark.parametrize("decay", [0.9, 0.0])
def test_the_run_scaffold_moves_the_average_with_each_step_taken(decay, tmp_path, rng):
    """Run.step moves the average after a step taken and not after a
    skipped (non-finite) one; Run.evaluating swaps it in; a checkpoint's
    model is the average and its training weights the run's own. Without
    --ema (0) there is no average: the weights are evaluated and saved."""
    from mingpt_c.gpt.train import TrainConfig
    from mingpt_c.nn.optim import AdamW
    from mingpt_c.run.scaffold import Run

    p, g = f32(rng.normal(size=50)), f32(rng.normal(size=50))
    opt = AdamW(p, np.ones(50, np.uint8))
    tc = TrainConfig(out=str(tmp_path / "run"), ema=decay, threads=1, progress=False)
    with Run(tc, log=lambda msg: None) as run:
        run.average_weights(opt)
        if not decay:
            assert run.average is None
            assert run.checkpoint_weights(p) == {"params": p, "train_params": None}
            with run.evaluating(p):
                assert np.array_equal(p, opt.params)
            return
        start = run.average.avg.copy()
        assert np.array_equal(start, p)
        run.step(opt, g, 1.0, 1e-2, 0)
        assert opt.t == 1
        want = start.astype(np.float64) * (2 / 11) + p.astype(np.float64) * (9 / 11)   # d_1 = 2/11
        assert_close(run.average.avg, want, rtol=1e-6, atol=1e-7)
        moved = run.average.avg.copy()
        assert not np.allclose(moved, p)
        assert np.isnan(run.step(opt, g, float("nan"), 1e-2, 1))   # skipped: nothing moves
        assert opt.t == 1 and np.array_equal(run.average.avg, moved)
        own = p.copy()
        with run.evaluating(p):
            assert np.array_equal(p, run.average.avg)
        assert np.array_equal(p, own)
        saved = run.checkpoint_weights(p)
        assert saved["params"] is run.average.avg and saved["train_params"] is p
