"""DeviceArray and the device facts: round trips, views, fills, frees, info."""
import gc

import numpy as np
import pytest

from mingpt_c import cuda, ops
from mingpt_c.errors import ShapeError

from .conftest import gpu, same_bits

pytestmark = gpu
MiB = 1 << 20


def test_info():
    i = cuda.info()
    assert i["name"] and i["multiprocessors"] > 0
    major, minor = i["capability"].split(".")
    assert int(major) >= 7 and minor.isdigit()
    assert 0 < i["free_memory"] <= i["total_memory"]
    for key in ("runtime_version", "driver_version"):
        assert i[key].count(".") == 1 and int(i[key].split(".")[0]) >= 11
    assert i["math"] == "fp32" == cuda.get_math()


def test_set_math_round_trip():
    for mode in ("tf32", "bf16", "fp32"):
        cuda.set_math(mode)
        assert cuda.get_math() == mode


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (3, 5), (2, 3, 65)])
def test_round_trip(rng, dtype, shape):
    if dtype == np.float32:
        host = rng.standard_normal(shape).astype(dtype)
    else:
        host = rng.integers(0, 256, size=shape).astype(dtype)
    d = cuda.to_device(host)
    assert isinstance(d, cuda.DeviceArray) and d.device == "cuda"
    assert d.shape == shape and d.dtype == np.dtype(dtype) and d.ndim == len(shape)
    assert d.size == host.size and d.nbytes == host.nbytes
    back = cuda.to_host(d)
    assert back.dtype == host.dtype and same_bits(back, host)
    assert d.numpy() is not d.numpy()       # a fresh copy each time


def test_non_contiguous_host_and_special_values(rng):
    host = np.asfortranarray(rng.standard_normal((13, 7)).astype(np.float32))
    host[0, 0], host[1, 1], host[2, 2] = np.nan, np.inf, -0.0
    assert same_bits(cuda.to_device(host), np.ascontiguousarray(host))


def test_views_share_memory(rng):
    flat = cuda.zeros((30,))
    w = flat[4:16].reshape(3, 4)
    b = flat[16:19]
    w.copy_from(np.arange(12, dtype=np.float32).reshape(3, 4))
    b.fill(-1.0)
    want = np.zeros(30, np.float32)
    want[4:16], want[16:19] = np.arange(12), -1.0
    assert same_bits(flat, want)
    assert same_bits(flat.reshape(5, -1), want.reshape(5, 6))
    assert len(flat) == 30 and len(w) == 3 and flat[25:].size == 5 and flat[40:].size == 0


def test_copy_between_views(rng):
    host = rng.standard_normal(20).astype(np.float32)
    flat = cuda.to_device(host)
    ops.copy(flat[10:20], flat[0:10])
    assert same_bits(flat[10:20], host[:10]) and same_bits(flat[0:10], host[:10])
    with pytest.raises(ShapeError, match="overlap"):
        ops.copy(flat[5:15], flat[0:10])
    with pytest.raises(ShapeError):
        ops.copy(flat[0:10], flat[10:19])


def test_fill_and_zeros():
    assert same_bits(cuda.zeros((5, 3)), np.zeros((5, 3), np.float32))
    assert same_bits(cuda.zeros((9,), np.uint8), np.zeros(9, np.uint8))
    assert same_bits(cuda.empty((1001,)).fill(0.1), np.full(1001, 0.1, np.float32))
    assert np.all(np.isnan(cuda.empty((7,)).fill(np.nan).numpy()))
    assert same_bits(cuda.empty((7,), np.int32).fill(0), np.zeros(7, np.int32))
    assert same_bits(cuda.empty((7,), np.int32).fill(-3), np.full(7, -3, np.int32))
    assert same_bits(cuda.empty((7,), np.uint8).fill(255), np.full(7, 255, np.uint8))
    assert cuda.zeros((0,)).fill(1.0).size == 0


def test_memory_is_freed_when_the_last_view_goes():
    gc.collect()
    cuda.synchronize()
    before = cuda.info()["free_memory"]
    a = cuda.empty((256 * MiB // 4,))          # 256 MiB
    view = a[10:20]
    during = cuda.info()["free_memory"]
    assert during <= before - 200 * MiB
    del a
    gc.collect()
    assert cuda.info()["free_memory"] <= before - 200 * MiB   # the view keeps it
    del view
    gc.collect()
    assert cuda.info()["free_memory"] >= before - 64 * MiB


def test_many_allocations_do_not_leak():
    gc.collect()
    before = cuda.info()["free_memory"]
    for _ in range(50):
        cuda.empty((64 * MiB // 4,)).fill(1.0)  # 64 MiB each, 3.2 GiB in all
    gc.collect()
    assert cuda.info()["free_memory"] >= before - 128 * MiB
