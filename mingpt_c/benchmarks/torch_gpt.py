"""The PyTorch side of the side-by-side benchmarks: a plain GPT-2-style model
(eager, F.scaled_dot_product_attention, tied head, biases, tanh GELU), the
same AdamW (weight decay on matrices and embeddings only, fused when
available), gradient clipping, and a sampling loop with its own KV cache.

Used by mingpt_c/benchmarks/cpu.py (`mingpt bench`) and bench/shakespeare.py. Imports
torch, so nothing else in the package imports this module.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.nh = NH
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def attn(self, x, cache=None, pos=0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        sh = lambda a: a.view(B, T, self.nh, C // self.nh).transpose(1, 2)
        q, k, v = sh(q), sh(k), sh(v)
        if cache is not None:
            kc, vc = cache
            kc[:, :, pos:pos + T] = k
            vc[:, :, pos:pos + T] = v
            k, v = kc[:, :, :pos + T], vc[:, :, :pos + T]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=(T > 1))
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x, cache=None, pos=0):
        x = x + self.attn(self.ln_1(x), cache, pos)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, V, T, L, NH, C, embd_std=0.02):
        super().__init__()
        self.block_size, self.nh, self.C = T, NH, C
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith("c_proj.weight") or n.endswith("mlp_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))
        for emb in (self.wte, self.wpe):
            nn.init.normal_(emb.weight, 0.0, embd_std)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets=None, caches=None, pos=0):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T, device=idx.device))
        for i, blk in enumerate(self.h):
            x = blk(x, None if caches is None else caches[i], pos)
        x = self.ln_f(x)
        if targets is None:
            return x[:, -1] @ self.wte.weight.T
        logits = x @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def optimizer(self, lr, wd=0.1, betas=(0.9, 0.99)):
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=lr, betas=betas)

    def train_step(self, opt, x, y, lr, clip=1.0):
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = self(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        opt.step()
        return loss.item()

    @torch.no_grad()
    def generate(self, prompt, n_new, generator, temperature=1.0, top_k=None):
        """Sampling with a KV cache (no sliding window: stops at the block)."""
        B = prompt.shape[0]
        hs = self.C // self.nh
        caches = [(torch.zeros(B, self.nh, self.block_size, hs), torch.zeros(B, self.nh, self.block_size, hs))
                  for _ in self.h]
        logits = self(prompt, caches=caches, pos=0)
        pos = prompt.shape[1]
        out = []
        for _ in range(n_new):
            logits = logits / temperature
            if top_k:
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[:, [-1]]] = -float("inf")
            nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            out.append(nxt)
            if pos >= self.block_size:
                break
            logits = self(nxt, caches=caches, pos=pos)
            pos += 1
        return torch.cat(out, 1)
