"""A PyTorch twin of our GPT, built from the same parameter views, for parity
tests. Plain autograd, no fused ops, float32."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def torch_params(model):
    """Our flat views as torch leaf tensors (copies), same names."""
    return {k: torch.tensor(np.array(v), requires_grad=True) for k, v in model.p.items()}


def layer_params(tp, i):
    """Lookup of layer i's parameters by their names within the layer."""
    return lambda n: tp[f"transformer.h.{i}.{n}"]


def forward(tp, cfg, idx, targets=None, causal=True, key_mask=None):
    B, T = idx.shape
    C, NH = cfg.n_embd, cfg.n_head
    x = tp["transformer.wte.weight"][idx] + tp["transformer.wpe.weight"][:T]
    for i in range(cfg.n_layer):
        p = layer_params(tp, i)
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"), cfg.layer_norm_eps)
        qkv = F.linear(h, p("attn.c_attn.weight"), p("attn.c_attn.bias"))
        q, k, v = qkv.split(C, dim=2)
        sh = lambda a: a.view(B, T, NH, C // NH).transpose(1, 2)
        q, k, v = sh(q), sh(k), sh(v)
        att = (q @ k.transpose(-2, -1)) / np.sqrt(C // NH)
        if causal:
            att = att.masked_fill(torch.tril(torch.ones(T, T, dtype=torch.bool)).logical_not(), float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + F.linear(y, p("attn.c_proj.weight"), p("attn.c_proj.bias"))
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"), cfg.layer_norm_eps)
        h = F.gelu(F.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias")), approximate="tanh")
        x = x + F.linear(h, p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
    x = F.layer_norm(x, (C,), tp["transformer.ln_f.weight"], tp["transformer.ln_f.bias"], cfg.layer_norm_eps)
    logits = x @ tp["transformer.wte.weight"].T
    if targets is None:
        return logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)
