"""The exact (erf) GELU kernel that BERT and the ViT use: the float64
reference against central differences, the C kernel against the reference
(backward accumulating into non-zero buffers), and saturation."""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import ops


def test_reference_gradient(rng):
    x = rng.normal(size=17) * 3
    dout = rng.normal(size=17)
    eps = 1e-6
    num = np.array([((ref.gelu_erf_forward(x + eps * e) - ref.gelu_erf_forward(x - eps * e)) * dout).sum()
                    / (2 * eps) for e in np.eye(17)])
    assert_close(ref.gelu_erf_backward(dout, x), num, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("n", [1, 7, 13, 64, 10000])
def test_gelu_erf(rng, n):
    x = f32(rng.normal(size=n) * 4)
    assert_close(ops.gelu_erf_forward(x), ref.gelu_erf_forward(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    dout = f32(rng.normal(size=n))
    d0 = f32(rng.normal(size=n))
    got = ops.gelu_erf_backward(dout, x, d0.copy())
    assert_close(got, d0 + ref.gelu_erf_backward(dout.astype(np.float64), x.astype(np.float64)),
                 rtol=1e-5, atol=1e-5)


def test_gelu_erf_in_place_and_extremes():
    x = f32(np.array([-1e4, -30.0, 0.0, 30.0, 1e4]))
    ops.gelu_erf_forward(x, out=x)
    assert np.all(np.isfinite(x))
    assert_close(x, [0.0, 0.0, 0.0, 30.0, 1e4], atol=1e-6)
    d = ops.gelu_erf_backward(f32(np.ones(3)), f32(np.array([-1e4, 0.0, 1e4])))
    assert_close(d, [0.0, 0.5, 1.0], atol=1e-6)
