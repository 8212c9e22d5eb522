"""SiLU ("swish", MarianMT's activation): the C kernels against the float64
reference (tests/reference.py), special values, thread counts and PyTorch.

silu(x) = x s, s = sigmoid(x); silu'(x) = s (1 + x (1 - s)). The float32
kernels hold 1e-6 relative to the reference, with two documented floors:
results below 1e-36 (the vector exp flushes exp(-|x|) below float32's
smallest normal, x < -87.7) may be 0, and the gradient is held relative to
the size of its terms, s (1 + |x| (1 - s)), since it has a root at
x = -1.2785 where any float32 evaluation loses relative accuracy.
The finite-difference check of the reference is in test_reference.py, the
accumulate=False overwrite test in test_kernels.py, the CUDA twin's in
tests/gpu/test_cuda_ops.py.
"""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import ops
from mingpt_c._lib import get_num_threads, set_num_threads
from mingpt_c.errors import DTypeError
from mingpt_c.nn.block import ACTS

TINY = 1e-36   # |silu| below this may flush to 0 (see the module docstring)
# Saturated and special-but-finite inputs, placed at the front of random ones.
LARGE = [100.0, -100.0, 1e4, -1e4, 88.5, -88.5, 30.0, -30.0, 3e38, -3e38, -1.2785, 0.0, -0.0]


def inputs(rng, n):
    x = f32(rng.normal(size=n) * 4)
    k = min(n, len(LARGE))
    x[:k] = LARGE[:k]
    return x


def grad_scale(x):
    """s (1 + |x| (1 - s)): the size of the gradient's terms."""
    s, c = ref._sigmoid_pair(x)
    return s * (1.0 + np.abs(x) * c)


@pytest.mark.parametrize("n", [1, 7, 13, 64, 1000, 70_001])
def test_silu(rng, n):
    x = inputs(rng, n)
    x64 = x.astype(np.float64)
    assert_close(ops.silu_forward(x), ref.silu_forward(x64), rtol=1e-6, atol=TINY)
    # the gradient itself, against its condition-aware scale
    g = ops.silu_backward(np.ones_like(x), x, accumulate=False).astype(np.float64)
    err = np.abs(g - ref.silu_backward(np.ones(n), x64))
    assert np.all(err <= 1e-6 * grad_scale(x64) + TINY), err.max()
    # accumulated into a non-zero buffer
    dout, d0 = f32(rng.normal(size=n), rng.normal(size=n))
    got = ops.silu_backward(dout, x, d0.copy())
    want = d0 + ref.silu_backward(dout.astype(np.float64), x64)
    assert_close(got, want, rtol=1e-6, atol=1e-6 * np.abs(dout) * grad_scale(x64) + TINY)


def test_silu_in_place_and_extremes():
    """Saturation: -0 far left, x far right, finite for every finite x (no
    exp overflow, no inf * 0); 0.5 x and 0.5 at 0."""
    x = f32([-1e4, -100.0, -30.0, -1.0, -0.0, 0.0, 1e-30, 1.0, 30.0, 100.0, 1e4, -3e38, 3e38])
    y = x.copy()
    assert ops.silu_forward(y, out=y) is y
    assert np.all(np.isfinite(y))
    assert_close(y, ref.silu_forward(x.astype(np.float64)), rtol=1e-6, atol=TINY)
    left, right = [0, 1, 11], [9, 10, 12]   # -1e4, -100, -3e38; 100, 1e4, 3e38
    assert np.all(np.abs(y[left]) <= TINY) and np.all(np.signbit(y[left]))  # -0 or tiny
    assert np.array_equal(y[right], x[right])
    assert np.signbit(y[4]) and y[4] == 0 and not np.signbit(y[5])   # -0 at -0, +0 at +0
    assert y[6] == x[6] * np.float32(0.5)
    d = ops.silu_backward(np.ones_like(x), x)
    assert np.all(np.isfinite(d))
    assert np.all(np.abs(d[left]) <= TINY)
    assert np.all(d[right] == 1.0) and np.all(d[[4, 5]] == 0.5)


def test_silu_nan_and_inf():
    """As PyTorch's F.silu: NaN in, NaN out; -inf * sigmoid(-inf) = -inf * 0
    is NaN, +inf passes; the gradient is NaN at both infinities (inf * 0)."""
    x = f32([np.nan, -np.inf, np.inf, 1.0, -1.0])
    y = ops.silu_forward(x)
    assert np.array_equal(np.isnan(y), [True, True, False, False, False]) and y[2] == np.inf
    d = ops.silu_backward(np.ones_like(x), x, accumulate=False)
    assert np.array_equal(np.isnan(d), [True, True, True, False, False])
    # NaN in dout or in the buffer added to propagates too, and only there
    d = ops.silu_backward(f32([np.nan, 1.0, 1.0]), f32([1.0, 2.0, 3.0]),
                          f32([0.0, np.nan, 0.0]))
    assert np.array_equal(np.isnan(d), [True, True, False])


def test_silu_thread_count_independent(rng):
    x, dout = f32(rng.normal(size=70_001) * 4, rng.normal(size=70_001))
    old = get_num_threads()
    runs = []
    try:
        for nt in (1, 2):
            set_num_threads(nt)
            runs.append((ops.silu_forward(x), ops.silu_backward(dout, x)))
    finally:
        set_num_threads(old)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_silu_rejects_float64():
    with pytest.raises(DTypeError, match="float32"):
        ops.silu_forward(np.zeros(4))
    with pytest.raises(DTypeError, match="float32"):
        ops.silu_backward(f32(np.zeros(4)), np.zeros(4))


def test_silu_is_a_block_activation():
    assert ACTS["silu"] == (ops.silu_forward, ops.silu_backward)


def test_silu_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = f32(rng.normal(size=(5, 33)) * 3)
    x[0, :13] = LARGE
    x[1, :4] = [np.nan, np.inf, -np.inf, -88.0]
    dout = f32(rng.normal(size=x.shape))
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.silu(t)
    y.backward(torch.tensor(dout))
    want, dwant = y.detach().numpy(), t.grad.numpy()
    got, dgot = ops.silu_forward(x), ops.silu_backward(dout, x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isnan(dgot), np.isnan(dwant))
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]) and np.array_equal(np.isinf(got), inf)
    ok, dok = np.isfinite(want), ~np.isnan(dwant)
    assert_close(got[ok], want[ok], rtol=1e-6, atol=TINY)
    # PyTorch forms 1 - s by subtraction: a few ulp of s apart near s = 1
    assert_close(dgot[dok], dwant[dok], rtol=1e-5, atol=1e-6)
