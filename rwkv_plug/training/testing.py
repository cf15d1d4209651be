"""A tiny recurrent model with the RWKV state API, for tests and benchmarks.

It has what matters to the trainer: token shift and a WKV-style matrix
state carried across calls, ``zero_state(B)``, and
``forward(idx, state) -> (logits, state)`` for any T >= 1. It is not the
product's model (that lives in ``rwkv_plug.models``).
"""

from __future__ import annotations

import torch
from torch import nn

from rwkv_plug.kernels.wkv5.reference import wkv5_recurrent


class ToyBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head, self.head = n_head, n_embd // n_head
        self.ln = nn.LayerNorm(n_embd)
        self.time_mix = nn.Parameter(torch.rand(1, 1, n_embd))
        self.time_decay = nn.Parameter(torch.randn(n_head, self.head) * 0.5 - 1.0)
        self.time_faaaa = nn.Parameter(torch.randn(n_head, self.head) * 0.1)
        self.rkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.out = nn.Linear(n_embd, n_embd, bias=False)
        self.drop = nn.Dropout(0.0)

    def forward(self, x, shift, s):  # x (B, T, C), shift (B, C), s (B, H, N, N)
        B, T, C = x.shape
        xn = self.ln(x)
        xx = torch.cat([shift.unsqueeze(1).to(xn.dtype), xn[:, :-1]], dim=1)  # previous token
        xm = xn * self.time_mix + xx * (1 - self.time_mix)
        r, k, v = self.rkv(xm).view(B, T, 3, self.n_head, self.head).unbind(2)
        w = torch.exp(-torch.exp(self.time_decay))
        y, s = wkv5_recurrent(r, k, v, w, self.time_faaaa, s)
        return x + self.drop(self.out(y.reshape(B, T, C))), xn[:, -1], s


class ToyRWKV(nn.Module):
    """Embedding, a few recurrent blocks, head: the trainer's model contract."""

    def __init__(self, vocab_size=32, n_embd=16, n_layer=2, n_head=2, dropout=0.0, seed=0) -> None:
        super().__init__()
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            self.emb = nn.Embedding(vocab_size, n_embd)
            self.blocks = nn.ModuleList(ToyBlock(n_embd, n_head) for _ in range(n_layer))
            self.ln_out = nn.LayerNorm(n_embd)
            self.head = nn.Linear(n_embd, vocab_size, bias=False)
        for b in self.blocks:
            b.drop.p = dropout
        self.n_embd, self.n_head = n_embd, n_head

    def zero_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, ...]:
        L, C, H = len(self.blocks), self.n_embd, self.n_head
        N = C // H
        dt = self.emb.weight.dtype
        return (
            torch.zeros(L, batch_size, C, device=device, dtype=dt),
            torch.zeros(L, batch_size, H, N, N, device=device, dtype=torch.float32),
        )

    def forward(self, idx, state=None):
        if state is None:
            state = self.zero_state(idx.shape[0], idx.device)
        shifts, wkvs = state
        x = self.emb(idx)
        new_shift, new_wkv = [], []
        for i, block in enumerate(self.blocks):
            x, sh, s = block(x, shifts[i], wkvs[i])
            new_shift.append(sh)
            new_wkv.append(s)
        return self.head(self.ln_out(x)), (torch.stack(new_shift), torch.stack(new_wkv))
