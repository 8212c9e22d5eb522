"""The CUDA tests' skip mark and fixtures.

`gpu` skips a test, with the reason, when this build has no CUDA path (`make`
rather than `make cuda`) or no GPU is usable. Every test starts in fp32 math
(the parity reference); `math_mode` runs one under tf32 or bf16 and restores
fp32 after it, even when it fails.
"""
from __future__ import annotations

import numpy as np
import pytest

from mingpt_c import cuda
from mingpt_c._lib import lib
from mingpt_c.errors import CudaError


def _skip_reason() -> str:
    if not lib.mg_has_cuda():
        return "no CUDA build (run `make cuda` on a machine with nvcc)"
    try:
        cuda.require()
    except CudaError as e:
        return f"no GPU ({e})"
    return ""


SKIP_REASON = _skip_reason()
gpu = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "a GPU is usable")


@pytest.fixture(autouse=True)
def _fp32_math():
    """Each test starts in fp32 and leaves fp32 behind."""
    if cuda.available():
        cuda.set_math("fp32")
    yield
    if cuda.available():
        cuda.set_math("fp32")


# (mode, rtol, atol as a fraction of the largest magnitude). bf16 keeps 7
# mantissa bits, TF32 10, both accumulating in fp32; TF32 inputs are often
# truncated rather than rounded (a hand-written mma kernel feeds raw fp32
# bits), which biases every product by up to 2^-10 and, where a sum cancels,
# needs a few times rtol of headroom against the largest element.
MATH_MODES = [("tf32", 1e-3, 5e-3), ("bf16", 2e-2, 2e-2)]


@pytest.fixture(params=MATH_MODES, ids=[m for m, _, _ in MATH_MODES])
def math_mode(request):
    """Runs the test under tf32 or bf16 products and restores fp32 after it;
    yields (mode, rtol, atol_rel) for close()."""
    mode, rtol, atol_rel = request.param
    cuda.set_math(mode)
    assert cuda.get_math() == mode
    try:
        yield mode, rtol, atol_rel
    finally:
        cuda.set_math("fp32")


def close(got, want, rtol=1e-5, atol=None, what="", atol_rel=None):
    """|got - want| <= atol + rtol |want| elementwise, got a DeviceArray or a
    numpy array. atol defaults to (atol_rel or rtol) * max(1, max |want|): a
    sum that cancels to near zero is judged against the size of its
    neighbours."""
    got = cuda.to_host(got).astype(np.float64)
    want = cuda.to_host(want).astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if atol is None:
        atol = (atol_rel or rtol) * max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def same_bits(a, b) -> bool:
    """The same shape and the same bits (-0.0 and NaN payloads included)."""
    a, b = cuda.to_host(a), cuda.to_host(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def nan_like(shape, dtype=np.float32):
    """A device buffer poisoned with NaN: whatever the op leaves unwritten shows."""
    return cuda.empty(shape, dtype).fill(np.nan)


def rand(rng, *shape, scale=1.0):
    """float32 normal draws of the given shape."""
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def key_mask(rng, B, T):
    """A key padding mask (B, T) int32, 0 = padded, with a fully padded batch
    row (B > 1) and key 0 of row 0 padded (under causal, query 0 sees nothing)."""
    mask = (rng.random((B, T)) > 0.3).astype(np.int32)   # (B, T), 0 = padded key
    if B > 1:
        mask[1] = 0          # a fully padded batch row: its queries see no key
    mask[0, 0] = 0           # causal: query 0 of row 0 sees no key either
    return mask
