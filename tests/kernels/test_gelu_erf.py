"""Exact (erf) GELU: the float64 reference against finite differences, the C
kernel against the reference (forward, accumulating backward, extremes), and
PyTorch's nn.functional.gelu where torch is installed."""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import ops
from mingpt_c.errors import DTypeError


def test_reference_gradient_matches_finite_differences(rng):
    x = rng.normal(size=(3, 7)) * 3
    dout = rng.normal(size=x.shape)
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = (ref.gelu_erf_forward(x) * dout).sum()
        x[i] = old - eps
        fm = (ref.gelu_erf_forward(x) * dout).sum()
        x[i] = old
        num[i] = (fp - fm) / (2 * eps)
    assert_close(ref.gelu_erf_backward(dout, x), num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 7, 13, 64, 1000])
def test_kernel_matches_reference(rng, n):
    x = f32(rng.normal(size=n) * 4)
    assert_close(ops.gelu_erf_forward(x), ref.gelu_erf_forward(x.astype(np.float64)),
                 rtol=1e-5, atol=1e-6)
    dout = f32(rng.normal(size=n))
    d0 = f32(rng.normal(size=n))  # non-zero start: backward must add
    got = ops.gelu_erf_backward(dout, x, d0.copy())
    want = d0 + ref.gelu_erf_backward(dout.astype(np.float64), x.astype(np.float64))
    assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_in_place_and_extremes():
    x = f32(np.array([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4]))
    want = ref.gelu_erf_forward(x.astype(np.float64))
    y = x.copy()
    ops.gelu_erf_forward(y, out=y)
    assert np.all(np.isfinite(y))
    assert_close(y, want, rtol=1e-6, atol=1e-6)
    d = ops.gelu_erf_backward(np.ones_like(x), x)
    assert np.all(np.isfinite(d))
    assert_close(d[[0, 1, -2, -1]], [0.0, 0.0, 1.0, 1.0], atol=1e-6)


def test_differs_from_tanh_approximation(rng):
    x = f32(np.linspace(-3, 3, 61))
    diff = np.abs(ops.gelu_erf_forward(x) - ops.gelu_forward(x)).max()
    assert 1e-4 < diff < 1e-2  # the two GELUs are close but not the same function


def test_rejects_float64():
    with pytest.raises(DTypeError):
        ops.gelu_erf_forward(np.zeros(4))


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = f32(rng.normal(size=(5, 33)) * 3)
    dout = f32(rng.normal(size=x.shape))
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.gelu(t)  # approximate="none"
    y.backward(torch.tensor(dout))
    assert_close(ops.gelu_erf_forward(x), y.detach().numpy(), rtol=1e-6, atol=1e-6)
    assert_close(ops.gelu_erf_backward(dout, x), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_tail_keeps_relative_accuracy():
    """The kernel goes through erfc, so far into the negative tail, where
    0.5 x (1 + erf) would cancel to 0 in float32, the values stay accurate."""
    x = f32(np.linspace(-12, 9, 2001))
    want = ref.gelu_erf_forward(x.astype(np.float64))
    got = ops.gelu_erf_forward(x).astype(np.float64)
    # exp(-x^2/2) amplifies the float32 rounding of x by about x^2: the condition number
    assert np.all(np.abs(got - want) <= 2e-6 * (1 + x.astype(np.float64) ** 2) * np.abs(want))
    dwant = ref.gelu_erf_backward(np.ones(x.shape), x.astype(np.float64))
    dgot = ops.gelu_erf_backward(np.ones_like(x), x).astype(np.float64)
    assert np.all(np.abs(dgot - dwant) <= 2e-6 * np.abs(dwant) + 1e-7)
