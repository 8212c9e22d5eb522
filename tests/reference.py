"""Plain float64 numpy forward and backward of every kernel: the spec.

Each backward takes the upstream gradient and the forward's inputs and returns
the gradients of the probe loss sum(out * dout). tests/test_reference.py checks
these against central finite differences; the C kernels are checked against
these.
"""
from __future__ import annotations

import math

import numpy as np

GELU_K = np.sqrt(2.0 / np.pi)


def f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]

# ---------------------------------------------------------------- matmul


def matmul_forward(x, w, b=None):
    out = x @ w.T  # (N, OC)
    return out if b is None else out + b


def matmul_backward(dout, x, w):
    # out = x @ w.T + b
    dx = dout @ w
    dw = dout.reshape(-1, dout.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    db = dout.reshape(-1, dout.shape[-1]).sum(0)
    return dx, dw, db

# ---------------------------------------------------------------- embedding


def embedding_forward(tokens, wte, wpe, scale=1.0):
    T = tokens.shape[1]
    return scale * wte[tokens] + wpe[None, :T]


def embedding_backward(dout, tokens, V, maxT, scale=1.0):
    # out = scale * wte[tokens] + wpe[t]
    C = dout.shape[-1]
    dwte = np.zeros((V, C))
    np.add.at(dwte, tokens.reshape(-1), scale * dout.reshape(-1, C))
    dwpe = np.zeros((maxT, C))
    dwpe[: tokens.shape[1]] = dout.sum(0)
    return dwte, dwpe


def sinusoid_table(maxT, C, interleaved=True):
    """(maxT, C): angle(t, i) = t / 10000^(2i/C); interleaved: sin at 2i,
    cos at 2i+1 (the paper); else the ceil(C/2) sins, then the cosines
    (Marian)."""
    t = np.arange(maxT, dtype=np.float64)[:, None]
    i = np.arange((C + 1) // 2, dtype=np.float64)[None, :]
    ang = t / np.power(10000.0, 2.0 * i / C)            # (maxT, ceil(C/2))
    nc = C // 2                                          # cos columns
    pe = np.zeros((maxT, C))
    if interleaved:
        pe[:, 0::2] = np.sin(ang)
        pe[:, 1::2] = np.cos(ang[:, :nc])
    else:
        pe[:, :ang.shape[1]] = np.sin(ang)
        pe[:, ang.shape[1]:] = np.cos(ang[:, :nc])
    return pe

# ---------------------------------------------------------------- layernorm


def layernorm_forward(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    return xhat * w + b, mean[..., 0], rstd[..., 0]


def layernorm_backward(dout, x, w, eps=1e-5):
    # out = (x - mean) * rstd * w + b
    _, mean, rstd = layernorm_forward(x, w, np.zeros_like(w), eps)
    mean, rstd = mean[..., None], rstd[..., None]
    xhat = (x - mean) * rstd
    axes = tuple(range(x.ndim - 1))
    dw = (dout * xhat).sum(axes)
    db = dout.sum(axes)
    dxhat = dout * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dw, db

# ---------------------------------------------------------------- attention


def _split_heads(qkv, n_head):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    sh = lambda a: a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, NH, T, hs)
    return sh(q), sh(k), sh(v), hs


def _visible(B, T, causal, key_mask):
    vis = np.ones((B, 1, T, T), bool)
    if causal:
        vis &= np.tril(np.ones((T, T), bool))[None, None]
    if key_mask is not None:
        vis &= (np.asarray(key_mask) != 0)[:, None, None, :]
    return vis


def attention_forward(qkv, n_head, causal=True, key_mask=None):
    B, T, _ = qkv.shape
    q, k, v, hs = _split_heads(qkv, n_head)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)  # (B, NH, T, T)
    vis = _visible(B, T, causal, key_mask)
    s = np.where(vis, s, -np.inf)
    smax = np.max(s, -1, keepdims=True)
    smax = np.where(np.isfinite(smax), smax, 0.0)
    e = np.where(vis, np.exp(s - smax), 0.0)
    z = e.sum(-1, keepdims=True)
    att = np.divide(e, z, out=np.zeros_like(e), where=z > 0)
    y = att @ v  # (B, NH, T, hs)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, -1)
    return out, att


def attention_backward(dout, qkv, n_head, causal=True, key_mask=None):
    # out = softmax(q k^T / sqrt(hs)) v
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v, hs = _split_heads(qkv, n_head)
    _, att = attention_forward(qkv, n_head, causal, key_mask)
    dy = dout.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
    datt = dy @ v.transpose(0, 1, 3, 2)
    dv = att.transpose(0, 1, 3, 2) @ dy
    ds = att * (datt - (datt * att).sum(-1, keepdims=True)) / np.sqrt(hs)
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    mg = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)
    return np.concatenate([mg(dq), mg(dk), mg(dv)], -1)

# ---------------------------------------------------------------- cross-attention


def _cross_heads(q, kv, n_head):
    """q (B, Tq, C), kv (B, Tk, 2C) -> q, k, v as (B, NH, T, hs), and hs."""
    B, Tq, C = q.shape
    Tk = kv.shape[1]
    hs = C // n_head
    sh = lambda a, T: a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
    return sh(q, Tq), sh(kv[..., :C], Tk), sh(kv[..., C:], Tk), hs


def cross_attention_forward(q, kv, n_head, key_mask=None):
    B, Tq, C = q.shape
    Tk = kv.shape[1]
    qh, kh, vh, hs = _cross_heads(q, kv, n_head)
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(hs)  # (B, NH, Tq, Tk)
    vis = np.ones((B, 1, 1, Tk), bool)
    if key_mask is not None:
        vis = (np.asarray(key_mask) != 0)[:, None, None, :]
    s = np.where(vis, s, -np.inf)
    smax = np.max(s, -1, keepdims=True)
    smax = np.where(np.isfinite(smax), smax, 0.0)
    e = np.where(vis, np.exp(s - smax), 0.0)
    z = e.sum(-1, keepdims=True)
    att = np.divide(e, z, out=np.zeros_like(e), where=z > 0)
    y = att @ vh  # (B, NH, Tq, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, Tq, C), att


def cross_attention_backward(dout, q, kv, n_head, key_mask=None):
    # out = softmax(q k^T / sqrt(hs)) v, k and v from kv = [k | v]
    B, Tq, C = q.shape
    Tk = kv.shape[1]
    qh, kh, vh, hs = _cross_heads(q, kv, n_head)
    _, att = cross_attention_forward(q, kv, n_head, key_mask)
    dy = dout.reshape(B, Tq, n_head, hs).transpose(0, 2, 1, 3)
    datt = dy @ vh.transpose(0, 1, 3, 2)
    dv = att.transpose(0, 1, 3, 2) @ dy
    ds = att * (datt - (datt * att).sum(-1, keepdims=True)) / np.sqrt(hs)
    dq = ds @ kh
    dk = ds.transpose(0, 1, 3, 2) @ qh
    mg = lambda a, T: a.transpose(0, 2, 1, 3).reshape(B, T, C)
    return mg(dq, Tq), np.concatenate([mg(dk, Tk), mg(dv, Tk)], -1)

# ---------------------------------------------------------------- elementwise


def gelu_forward(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_K * (x + 0.044715 * x ** 3)))


def gelu_backward(dout, x):
    # out = 0.5 x (1 + tanh(u)), u = k (x + 0.044715 x^3)
    u = GELU_K * (x + 0.044715 * x ** 3)
    th = np.tanh(u)
    du = GELU_K * (1.0 + 3 * 0.044715 * x ** 2)
    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th ** 2) * du)


# float64 erfc without scipy; Phi(x) = erfc(-x / sqrt 2) / 2 keeps relative
# accuracy in the negative tail, where 1 + erf(x / sqrt 2) cancels
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def gelu_erf_forward(x):
    return x * 0.5 * _erfc(-x / np.sqrt(2.0))


def gelu_erf_backward(dout, x):
    # out = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2))
    cdf = 0.5 * _erfc(-x / np.sqrt(2.0))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    return dout * (cdf + x * pdf)


def relu_forward(x):
    return np.where(x < 0, 0.0, x)


def relu_backward(dout, x):
    # out = max(x, 0); the gradient at exactly 0 is taken as 0 (PyTorch's choice)
    return np.where(x > 0, dout, 0.0)


def _sigmoid_pair(x):
    # sigmoid(x) and 1 - sigmoid(x) from exp(-|x|): no overflow, no cancellation
    e = np.exp(-np.abs(x))
    r = 1.0 / (1.0 + e)
    return np.where(x >= 0, r, e * r), np.where(x >= 0, e * r, r)


def silu_forward(x):
    return x * _sigmoid_pair(x)[0]


def silu_backward(dout, x):
    # out = x s, s = sigmoid(x): dout/dx = s + x s (1 - s)
    s, c = _sigmoid_pair(x)
    return dout * s * (1.0 + x * c)


def residual_forward(a, b):
    return a + b


def residual_backward(dout):
    return dout.copy(), dout.copy()

# ---------------------------------------------------------------- loss


def _smoothed_target(probs, targets, ignore_index, smoothing):
    """q = (1 - eps) onehot(t) + eps / V per row, and the rows that count."""
    t = np.asarray(targets).reshape(probs.shape[:-1])
    keep = t != ignore_index
    q = np.zeros_like(probs)
    np.put_along_axis(q, np.where(keep, t, 0)[..., None], 1.0 - smoothing, -1)
    return q + smoothing / probs.shape[-1], keep


def crossentropy_forward(logits, targets, ignore_index=-100, smoothing=0.0):
    """losses = -sum_j q_j log softmax(logits)_j, q the label-smoothed target
    (smoothing 0: -log softmax(logits)[target]); 0 on ignored rows."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    probs = np.exp(logp)
    q, keep = _smoothed_target(probs, targets, ignore_index, smoothing)
    losses = -(q * logp).sum(-1)
    return np.where(keep, losses, 0.0), probs


def crossentropy_backward(dlosses, logits, targets, ignore_index=-100, smoothing=0.0):
    _, probs = crossentropy_forward(logits, targets, ignore_index, smoothing)
    q, keep = _smoothed_target(probs, targets, ignore_index, smoothing)
    return np.where(keep[..., None], dlosses[..., None] * (probs - q), 0.0)

# ---------------------------------------------------------------- optimizer


def global_norm(g):
    return float(np.sqrt((np.asarray(g, np.float64) ** 2).sum()))


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, decay_mask=None,
                 grad_scale=1.0):
    """Returns new (p, m, v); the spec PyTorch's AdamW follows."""
    g = g * grad_scale
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** t)
    vhat = v / (1 - beta2 ** t)
    decay = weight_decay * (1.0 if decay_mask is None else np.asarray(decay_mask, np.float64))
    p = p - lr * (mhat / (np.sqrt(vhat) + eps) + decay * p)
    return p, m, v
