"""Bad calls on the CUDA path raise a clear exception and the process, and the
GPU, carry on; a build or machine without CUDA says so in one line.

The first section runs everywhere (CI has no GPU); the rest needs a GPU.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import f32

from mingpt_c import cuda, ops
from mingpt_c._lib import ffi, lib
from mingpt_c.errors import CudaError, DTypeError, IndexRangeError, OutOfMemory, ShapeError

from .conftest import close, gpu, nan_like

D = cuda.to_device
ROOT = Path(__file__).resolve().parents[2]


def fake_device_array(shape, dtype=np.float32):
    """A DeviceArray that owns no memory (address 0), to reach the Python
    checks without a GPU; never handed to C."""
    return cuda.DeviceArray(tuple(shape), np.dtype(dtype), None, 0)

# ---------------------------------------------------------------- without a GPU


@pytest.mark.skipif(cuda.available(), reason="a GPU is usable")
def test_no_gpu_says_so_in_one_line():
    assert cuda.available() is False
    with pytest.raises(CudaError) as e:
        cuda.require()
    msg = str(e.value)
    assert msg and "\n" not in msg
    if not lib.mg_has_cuda():
        assert "make cuda" in msg
    else:
        assert "GPU" in msg
    for call in (lambda: cuda.empty((3,)), lambda: cuda.zeros((2, 2)),
                 lambda: cuda.to_device(np.zeros(3, np.float32)), cuda.info,
                 lambda: cuda.set_math("tf32"), cuda.get_math, cuda.synchronize):
        with pytest.raises(CudaError, match="make cuda" if not lib.mg_has_cuda() else "GPU"):
            call()


@pytest.mark.skipif(bool(lib.mg_has_cuda()), reason="a CUDA build")
def test_cpu_build_stubs_report_no_cuda():
    """The mg_cuda_* entry points of a CPU build exist and return MG_ERR_NO_CUDA."""
    p = ffi.new("void**")
    assert lib.mg_cuda_malloc(p, 16) == lib.MG_ERR_NO_CUDA
    assert "make cuda" in ffi.string(lib.mg_last_error()).decode()
    assert lib.mg_cuda_gelu_forward(ffi.NULL, ffi.NULL, 0) == lib.MG_ERR_NO_CUDA
    assert lib.mg_cuda_relu_forward(ffi.NULL, ffi.NULL, 0) == lib.MG_ERR_NO_CUDA
    assert lib.mg_cuda_silu_backward(ffi.NULL, ffi.NULL, ffi.NULL, 0, 0) == lib.MG_ERR_NO_CUDA
    assert lib.mg_cuda_cross_attention_forward(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL,
                                               1, 1, 1, 1, 1) == lib.MG_ERR_NO_CUDA
    assert lib.mg_cuda_embedding_forward(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, 1.0,
                                         1, 1, 1, 1, 1) == lib.MG_ERR_NO_CUDA


def test_bad_math_mode_name():
    with pytest.raises(ShapeError, match="fp16"):
        cuda.set_math("fp16")


def test_mixing_devices_names_the_argument():
    """Checked in Python before any C call: runs without a GPU too."""
    x = f32(np.zeros((4, 8)))
    w = fake_device_array((3, 8))
    with pytest.raises(DTypeError, match="weight is on cuda but inp is on cpu"):
        ops.matmul_forward(x, w)
    with pytest.raises(DTypeError, match="out is on cpu but inp is on cuda"):
        ops.gelu_forward(fake_device_array((5,)), out=f32(np.zeros(5)))
    with pytest.raises(DTypeError, match="targets is on cpu but logits is on cuda"):
        ops.crossentropy_forward(fake_device_array((2, 3)), np.zeros(2, np.int32))
    with pytest.raises(DTypeError, match="src is on cpu but dst is on cuda"):
        ops.copy(fake_device_array((3,)), f32(np.zeros(3)))


def test_device_array_checks_before_c():
    """dtype and shape checks apply to DeviceArrays as to numpy arrays."""
    with pytest.raises(DTypeError, match="inp must be float32, got int32"):
        ops.gelu_forward(fake_device_array((5,), np.int32))
    with pytest.raises(ShapeError, match=r"weight has shape \(7,\), expected \(8,\)"):
        ops.layernorm_forward(fake_device_array((4, 8)), fake_device_array((7,)),
                              fake_device_array((8,)))
    with pytest.raises(ShapeError, match="C=10 not divisible by n_head=3"):
        ops.attention_forward(fake_device_array((1, 4, 30)), 3)
    with pytest.raises(DTypeError, match="numpy array or a cuda.DeviceArray"):
        ops.gelu_forward([1.0, 2.0])


def test_device_array_views_without_memory():
    a = fake_device_array((6, 4))
    assert a.reshape(-1).shape == (24,) and a.reshape(3, -1).shape == (3, 8)
    assert a.reshape((2, 3, 4)).ndim == 3 and len(a) == 6
    flat = a.reshape(-1)
    v = flat[5:12]
    assert v.shape == (7,) and v.ptr == flat.ptr + 5 * 4 and v.device == "cuda"
    assert flat[20:].shape == (4,) and flat[-3:].ptr == flat.ptr + 21 * 4 and flat[9:2].size == 0
    for bad in (lambda: a.reshape(5, -1), lambda: a.reshape(-1, -1), lambda: a[1:3],
                lambda: flat[::2], lambda: flat[3]):
        with pytest.raises(ShapeError):
            bad()
    assert "shape=(6, 4)" in repr(a) and "float32" in repr(a)
    with pytest.raises(TypeError, match=r"\.numpy\(\)"):
        np.asarray(a)                     # never a silent object array


def test_host_buffers_fill_copy_total(rng):
    """ops.fill / copy / total on the numpy path."""
    a = f32(rng.standard_normal(1001))
    assert ops.total(a) == float(a.sum(dtype=np.float64))
    b = ops.copy(np.empty_like(a), a)
    assert np.array_equal(b, a)
    assert np.all(ops.fill(b, 3.0) == 3.0)
    with pytest.raises(ShapeError):
        ops.copy(np.empty(1000, np.float32), a)
    with pytest.raises(DTypeError):
        ops.copy(np.empty(1001, np.float64), a)

# ---------------------------------------------------------------- with a GPU


@gpu
def test_shape_error_before_launch_then_carry_on(rng):
    x, w = f32(rng.standard_normal((4, 8))), f32(rng.standard_normal((3, 8)))
    out = nan_like((4, 3))
    with pytest.raises(ShapeError):
        ops.matmul_forward(D(x), D(f32(np.zeros((3, 9)))), out=out)
    with pytest.raises(ShapeError, match="out has shape"):
        ops.matmul_forward(D(x), D(w), out=nan_like((4, 4)))
    assert np.all(np.isnan(out.numpy()))      # nothing ran
    # the C entry point validates too, before any launch
    qkv, o, att = nan_like((2, 5, 30)), nan_like((2, 5, 10)), nan_like((2, 3, 5, 5))
    p = lambda a: ffi.cast("float*", a.ptr)
    rc = lib.mg_cuda_attention_forward(p(o), p(att), p(qkv), ffi.NULL, 2, 5, 10, 3, 1)
    assert rc == lib.MG_ERR_SHAPE, ffi.string(lib.mg_last_error()).decode()
    cuda.synchronize()
    assert np.all(np.isnan(o.numpy())) and np.all(np.isnan(att.numpy()))
    # and the next op works
    close(ops.matmul_forward(D(x), D(w), out=out), ops.matmul_forward(x, w))


@gpu
def test_out_of_memory_names_bytes_and_carries_on():
    asked = 1 << 50
    with pytest.raises(OutOfMemory) as e:
        cuda.empty((asked // 4,))
    msg = str(e.value)
    assert str(asked) in msg and "free" in msg and "\n" not in msg
    assert isinstance(e.value, MemoryError)
    a = cuda.zeros((1000,))
    assert ops.total(ops.fill(a, 0.5)) == 500.0
    cuda.synchronize()


@gpu
def test_mixing_devices_raises(rng):
    x = f32(rng.standard_normal((4, 8)))
    w = f32(rng.standard_normal((3, 8)))
    with pytest.raises(DTypeError, match="weight is on cpu but inp is on cuda"):
        ops.matmul_forward(D(x), w)
    with pytest.raises(DTypeError, match="dinp is on cuda but dout is on cpu"):
        ops.gelu_backward(x, x, dx=D(x))
    with pytest.raises(DTypeError, match="key_mask is on cpu"):
        ops.attention_forward(D(f32(np.zeros((1, 2, 6)))), 1, key_mask=np.ones((1, 2), np.int32))
    close(ops.matmul_forward(D(x), D(w)), ops.matmul_forward(x, w))


@gpu
def test_device_dtype_errors():
    with pytest.raises(DTypeError, match="float64"):
        cuda.to_device(np.zeros(3))               # cast to float32 first
    with pytest.raises(DTypeError, match="float64"):
        cuda.empty((3,), np.float64)
    a = cuda.empty((3,))
    with pytest.raises(DTypeError):
        a.copy_from(np.zeros(3, np.int32))
    with pytest.raises(ShapeError):
        a.copy_from(np.zeros(4, np.float32))
    with pytest.raises(DTypeError, match="tokens must be int32, got float32"):
        ops.embedding_forward(a.reshape(1, 3), cuda.zeros((5, 2)), cuda.zeros((4, 2)))


# Run in a child process: were a kernel to read out of bounds, the fault would
# poison this process's CUDA context and fail every test after this one.
_BAD_TOKENS = """
import numpy as np
from mingpt_c import cuda, ops
rng = np.random.default_rng(0)
V, C, maxT = 5, 4, 8
wte = rng.standard_normal((V, C)).astype(np.float32)
wpe = rng.standard_normal((maxT, C)).astype(np.float32)
good = np.array([[0, 1, 4, 2]], np.int32)
bad = np.array([[0, 1 << 30, 4, -7]], np.int32)
D = cuda.to_device
out = ops.embedding_forward(D(bad), D(wte), D(wpe)).numpy()
dout = rng.standard_normal((1, 4, C)).astype(np.float32)
dwte, _ = ops.embedding_backward(D(dout), D(bad), V, maxT)
cuda.synchronize()
want = ops.embedding_forward(good, wte, wpe)
np.testing.assert_allclose(out[:, [0, 2]], want[:, [0, 2]], rtol=1e-6, atol=1e-6)
only_good = dout.copy()
only_good[:, [1, 3]] = 0.0
np.testing.assert_allclose(dwte.numpy(), ops.embedding_backward(only_good, good, V, maxT)[0],
                           rtol=1e-6, atol=1e-6)
print("bad ids skipped")
"""


@gpu
def test_token_ids_out_of_range_are_skipped_on_the_device():
    """Device token ids are not range-checked (the host checks them before the
    upload, as it does here); the kernels skip an id out of range: no fault,
    and the in-range positions come out right."""
    with pytest.raises(IndexRangeError):
        ops.embedding_forward(np.array([[0, 9]], np.int32), f32(np.zeros((5, 4))),
                              f32(np.zeros((8, 4))))
    r = subprocess.run([sys.executable, "-c", _BAD_TOKENS], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0 and "bad ids skipped" in r.stdout, r.stdout + r.stderr
