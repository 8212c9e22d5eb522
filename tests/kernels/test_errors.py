"""Bad calls raise a clear exception and the process carries on.

Each case is checked twice where it matters: at the Python boundary (before C
sees the buffer) and in C itself (calling lib directly), so a caller that
skips the binding still gets a status and a message, never a crash.
"""
import numpy as np
import pytest

from conftest import f32
from mingpt_c import ops
from mingpt_c._lib import check, ffi, lib
from mingpt_c.errors import DTypeError, IndexRangeError, MinGPTError, ShapeError


def test_wrong_dtype():
    x = np.zeros((4, 8), np.float64)
    with pytest.raises(DTypeError, match="inp must be float32, got float64"):
        ops.layernorm_forward(x, f32(np.ones(8)), f32(np.zeros(8)))


def test_non_contiguous():
    x = f32(np.zeros((8, 4))).T
    with pytest.raises(DTypeError, match="C-contiguous"):
        ops.gelu_forward(x)


def test_wrong_shape():
    with pytest.raises(ShapeError, match=r"weight has shape \(7,\), expected \(8,\)"):
        ops.layernorm_forward(f32(np.zeros((4, 8))), f32(np.ones(7)), f32(np.zeros(8)))
    with pytest.raises(ShapeError):
        ops.matmul_forward(f32(np.zeros((4, 8))), f32(np.zeros((3, 9))))


def test_heads_not_dividing():
    qkv = f32(np.zeros((1, 4, 3 * 10)))
    with pytest.raises(ShapeError, match="C=10 not divisible by n_head=3"):
        ops.attention_forward(qkv, 3)
    out, att = np.zeros((1, 4, 10), np.float32), np.zeros((1, 3, 4, 4), np.float32)
    rc = lib.mg_attention_forward(ffi.from_buffer("float*", out), ffi.from_buffer("float*", att),
                                  ffi.from_buffer("float*", qkv), ffi.NULL, 1, 4, 10, 3, 1)
    with pytest.raises(ShapeError, match="C=10 not divisible by NH=3"):
        check(rc)


def test_mask_wrong_length():
    qkv = f32(np.zeros((2, 4, 24)))
    with pytest.raises(ShapeError, match="key_mask has shape"):
        ops.attention_forward(qkv, 2, key_mask=np.ones((2, 3), np.int32))


def test_token_out_of_range():
    wte, wpe = f32(np.zeros((5, 4))), f32(np.zeros((8, 4)))
    with pytest.raises(IndexRangeError, match=r"tokens contains 5, outside \[0, 5\)"):
        ops.embedding_forward(np.array([[0, 5]], np.int32), wte, wpe)
    with pytest.raises(IndexRangeError, match="-1"):
        ops.embedding_forward(np.array([[-1, 0]], np.int32), wte, wpe)
    # C checks too, when called directly
    out = np.zeros((1, 2, 4), np.float32)
    tok = np.array([[0, 9]], np.int32)
    rc = lib.mg_embedding_forward(ffi.from_buffer("float*", out), ffi.from_buffer("int32_t*", tok),
                                  ffi.from_buffer("float*", wte), ffi.from_buffer("float*", wpe),
                                  1.0, 1, 2, 4, 5, 8)
    with pytest.raises(IndexRangeError, match="token id 9 at position 1"):
        check(rc)


def test_target_out_of_range():
    logits = f32(np.zeros((3, 4)))
    with pytest.raises(IndexRangeError, match=r"targets contains 4, outside \[0, 4\)"):
        ops.crossentropy_forward(logits, np.array([0, 4, 1], np.int32))
    ops.crossentropy_forward(logits, np.array([0, -100, 1], np.int32))  # ignore index is fine


def test_sequence_longer_than_block():
    with pytest.raises(ShapeError, match="exceeds the block size"):
        ops.embedding_forward(np.zeros((1, 9), np.int32), f32(np.zeros((5, 4))), f32(np.zeros((8, 4))))


def test_c_rejects_null_and_bad_scalars():
    with pytest.raises(ShapeError, match="is NULL"):
        check(lib.mg_gelu_forward(ffi.NULL, ffi.NULL, 4))
    p = f32(np.zeros(4))
    ptr = ffi.from_buffer("float*", p)
    with pytest.raises(ShapeError, match="step t=0"):
        check(lib.mg_adamw_update(ptr, ptr, ptr, ptr, ffi.NULL, 4, 1e-3, 0.9, 0.99, 1e-8, 0.0, 1.0, 0))
    with pytest.raises(ShapeError, match="thread count 0"):
        check(lib.mg_set_num_threads(0))


def test_errors_share_a_base_and_process_survives():
    for exc in (ShapeError, DTypeError, IndexRangeError):
        assert issubclass(exc, MinGPTError)
    with pytest.raises(MinGPTError):
        ops.gelu_forward(np.zeros(3, np.int64))
    # the core still works after every failure above
    assert np.allclose(ops.residual_forward(f32(np.ones(3)), f32(np.ones(3))), 2.0)


def test_device_only_and_host_only_kernels_refuse_the_other_side():
    """The fused attention runs on the GPU only, a packed weight and the
    logit statistics on the CPU only: the wrong side is one clear error,
    never a foreign pointer handed to C. Without CUDA the C entry point
    says so."""
    qkv = f32(np.zeros((1, 4, 96)))
    with pytest.raises(DTypeError, match="GPU only"):
        ops.flash_attention_forward(qkv, 1)
    with pytest.raises(DTypeError, match="GPU only"):
        ops.flash_attention_backward(f32(np.zeros((1, 4, 32))), qkv, f32(np.zeros((1, 4, 32))),
                                     f32(np.zeros((1, 1, 4))), 1)
    if not lib.mg_has_cuda():
        with pytest.raises(MinGPTError, match="no CUDA"):
            check(lib.mg_cuda_flash_attention_forward(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL,
                                                      1, 4, 32, 1, 1))
