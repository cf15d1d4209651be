"""RWKV-7 (x070 "Goose"), written to read like the math.

One layer is ``x = x + TimeMix(ln1(x)); x = x + ChannelMix(ln2(x))``; block 0
first applies ``ln0`` to the embeddings. Parameter names and shapes are the
official x070 state dict (the table in docs/model_files.md), so official
files load with ``strict=True`` and ours load in the ``rwkv`` pip package.
The initial values live in :mod:`rwkv_plug.models.init7`.

Notation: B batch, T time, C n_embd, H = C / 64 heads, N = 64 head size,
V vocab, Dw/Da/Dv/Dg the low-rank widths of the decay, in-context learning
rate ("a"), value-residual and gate projections (read from the tensors).
The recurrent state of one layer is
``(att_shift (B, C), wkv (B, H, N, N) float32, ffn_shift (B, C))``, the WKV
state indexed [value, key] as in the official code; the model's state is
those triples flattened over layers. ``v_first`` (layer 0's values, mixed
into later layers) is recomputed for every chunk: it is not state. Feeding a
sequence in chunks with the state carried gives the same logits as one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rwkv_plug.models.embedding import Embedding
from rwkv_plug.models.head_out import head_out
from rwkv_plug.models.kernel_slot import KernelSlot
from rwkv_plug.models.recurrent_state import restart_wkv, start_state

HEAD_SIZE = 64
#: The decay is exp(-e^-0.5 * sigmoid(.)), in (exp(-e^-0.5), 1): never 0, never quite 1.
DECAY_SCALE = math.exp(-0.5)
#: GroupNorm eps of ln_x: 1e-5 * head_size_divisor^2 with the official divisor 8.
LN_X_EPS = 64e-5


@dataclass(frozen=True)
class LoraDims:
    """The low-rank widths of one x070 model (the same in every layer)."""

    decay: int  # Dw: w1 (C, Dw), w2 (Dw, C)
    a: int  # Da: a1, a2
    value: int  # Dv: v1, v2 (the value residual)
    gate: int  # Dg: g1, g2


def _token_shift(x: Tensor, shift: Tensor, resets: Tensor | None = None) -> Tensor:
    """The previous token of every position; position 0 gets the carried ``shift``,
    and a position ``resets`` (B, T) marks (a packed record's first token) gets zeros."""
    xx = torch.cat([shift.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, C)
    return xx if resets is None else xx.masked_fill(resets.unsqueeze(-1), 0.0)


class TimeMix(nn.Module):
    """Multi-head linear attention whose state is edited by a rank-one "delta rule"."""

    def __init__(self, layer_id: int, n_embd: int, lora: LoraDims) -> None:
        super().__init__()
        C = n_embd
        self.layer_id = layer_id
        self.n_head = H = C // HEAD_SIZE
        vec = lambda: nn.Parameter(torch.zeros(1, 1, C))  # noqa: E731
        mat = lambda rows, cols: nn.Parameter(torch.zeros(rows, cols))  # noqa: E731
        # token-shift mixes: how much of the previous token each input sees
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        # low-rank projections, registered in the official key order
        self.w1, self.w2, self.w0 = mat(C, lora.decay), mat(lora.decay, C), vec()  # decay
        self.a1, self.a2, self.a0 = mat(C, lora.a), mat(lora.a, C), vec()  # in-context learning rate
        self.v1, self.v2, self.v0 = mat(C, lora.value), mat(lora.value, C), vec()  # value residual
        self.g1, self.g2 = mat(C, lora.gate), mat(lora.gate, C)  # output gate
        if layer_id == 0:
            # official files carry them at layer 0 too, unused there: frozen, so neither
            # the optimizer nor DDP ever sees a parameter without a gradient
            for p in (self.v0, self.v1, self.v2):
                p.requires_grad_(False)
        self.k_k = vec()  # scales k before normalising it into the removal key kk
        self.k_a = vec()  # how much a scales the written key
        self.r_k = nn.Parameter(torch.zeros(H, HEAD_SIZE))  # bonus of the current token
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def forward(self, x: Tensor, shift: Tensor, wkv: Tensor, v_first: Tensor | None, kernel,
                resets: Tensor | None = None, fresh: Tensor | None = None):
        B, T, C = x.shape  # x is ln1(x), (B, T, C)
        H, N = self.n_head, HEAD_SIZE
        d = _token_shift(x, shift, resets) - x  # x_{t-1} - x_t
        xr, xw, xk = x + d * self.x_r, x + d * self.x_w, x + d * self.x_k
        xv, xa, xg = x + d * self.x_v, x + d * self.x_a, x + d * self.x_g

        r = self.receptance(xr)  # (B, T, C)
        k = self.key(xk)
        v = self.value(xv)
        # per-token decay factor, in at least fp32 (fp64 when the model is fp64)
        w = self.w0 + torch.tanh(xw @ self.w1) @ self.w2  # (B, T, C) logits
        w = w.to(torch.promote_types(w.dtype, torch.float32))
        decay = torch.exp(-DECAY_SCALE * torch.sigmoid(w))  # in (0.545, 1)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate, (0, 1)
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        if self.layer_id == 0:
            v_first = v
        else:  # value residual: pull v towards layer 0's values
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0, eps=1e-12)  # unit per head
        k = k * (1 + (a - 1) * self.k_a)

        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        a4 = heads(a)
        # S_t = S diag(w_t) + (S (-kk)) (kk * a)^T + v k^T;  y_t = S_t r_t
        if resets is None:
            y, wkv = kernel.wkv7(heads(r), heads(decay), heads(k), heads(v), -kk, kk * a4, wkv)
        else:  # a record starting inside the chunk starts from ``fresh`` (zeros or the tuned state)
            y, wkv = kernel.wkv7(heads(r), heads(decay), heads(k), heads(v), -kk, kk * a4, wkv,
                                 resets=resets, s_reset=fresh)

        y = self.ln_x(y.reshape(B * T, C)).view(B, T, H, N)
        bonus = (heads(r) * heads(k) * self.r_k).sum(dim=-1, keepdim=True)  # (B, T, H, 1)
        y = (y + bonus * heads(v)).view(B, T, C)
        # clone: a view of x[:, -1] would keep the whole chunk's activations alive
        return self.output(y * g), x[:, -1].clone(), wkv, v_first  # (B, T, C)


class ChannelMix(nn.Module):
    """The feed-forward half of a block: a squared-ReLU MLP (no gate in x070)."""

    def __init__(self, n_embd: int, dim_ffn: int) -> None:
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.key = nn.Linear(n_embd, dim_ffn, bias=False)
        self.value = nn.Linear(dim_ffn, n_embd, bias=False)

    def forward(self, x: Tensor, shift: Tensor, resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xk = x + (_token_shift(x, shift, resets) - x) * self.x_k  # x is ln2(x), (B, T, C)
        k = torch.relu(self.key(xk)).square()  # (B, T, F)
        return self.value(k), x[:, -1].clone()  # (B, T, C)


class Block(nn.Module):
    def __init__(self, layer_id: int, n_embd: int, dim_ffn: int, lora: LoraDims, dropout: float) -> None:
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd)  # normalises the embeddings
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.att = TimeMix(layer_id, n_embd, lora)
        self.ffn = ChannelMix(n_embd, dim_ffn)
        # dropout on the residual sums, as for RWKV-v5
        self.drop0 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, v_first, att_shift: Tensor, wkv: Tensor, ffn_shift: Tensor, kernel,
                resets: Tensor | None = None, fresh: Tensor | None = None):
        # resets (B, T) bool: packed records' first tokens, which start from the fresh state
        # (shifts zero, WKV ``fresh``) exactly as if trained alone; v_first is per token
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, att_shift, wkv, v_first = self.att(self.ln1(x), att_shift, wkv, v_first, kernel, resets, fresh)
        x = self.drop0(x + dx)
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift, resets)
        x = self.drop1(x + dx)
        return x, v_first, att_shift, wkv, ffn_shift


class RWKV7(KernelSlot, nn.Module):
    """RWKV-7 language model: ``model(idx, state) -> (logits, new_state)``.

    The wkv7 op comes from the kernel registry (``kernel`` is a registered
    name or ``"auto"``), resolved on the first forward for the input's
    device and dtype. A kernel object with a ``wkv7`` method is accepted too.
    """

    #: The registered architecture (``rwkv-plug list-models``) this model belongs to.
    arch_name = "rwkv7"

    wkv_op = "wkv7"
    #: forward takes ``head=True | "last" | False`` (models/head_out.py)
    head_modes = True

    def __init__(
        self,
        n_layer: int,
        n_embd: int,
        vocab_size: int,
        lora: LoraDims,
        dim_ffn: int | None = None,
        *,
        kernel="auto",
        dropout: float = 0.0,
        grad_cp: bool = False,
    ) -> None:
        super().__init__()
        self.n_layer, self.n_embd, self.vocab_size = n_layer, n_embd, vocab_size
        self.dim_att = n_embd  # x070 attention is always C wide
        self.dim_ffn = dim_ffn or 4 * n_embd
        self.lora = lora
        self.n_head = n_embd // HEAD_SIZE
        self.grad_cp = grad_cp
        self.emb = Embedding(vocab_size, n_embd)  # nn.Embedding, gradient memory reused on CPU
        self.drop0 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(i, n_embd, self.dim_ffn, lora, dropout) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.set_kernel(kernel)
        #: The trainable WKV start state of ``model.tuning: state`` (a StartState), or None.
        self.tuned_state = None

    # -- state ------------------------------------------------------------
    def zero_state(self, batch_size: int, device=None) -> tuple[Tensor, ...]:
        """Start-of-sample state: per layer (att_shift, wkv float32, ffn_shift), flattened;
        the wkv part is ``tuned_state`` (expanded over the batch) when the model has one.

        The WKV state is fp64 for an fp64 model, so every chunk's state has one layout.
        """
        device = self.emb.weight.device if device is None else device
        dtype = self.emb.weight.dtype
        B, C, H, N = batch_size, self.n_embd, self.n_head, HEAD_SIZE
        sdt = torch.promote_types(dtype, torch.float32)
        return start_state(self.n_layer, B, C, H, N, dtype, sdt, device, self.tuned_state)

    # -- forward ----------------------------------------------------------
    def forward(self, idx: Tensor, state: tuple[Tensor, ...] | None = None, head: bool | str = True,
                resets: Tensor | None = None):
        # resets: (B, T) bool, True at a packed record's first token (the state restarts there)
        B, T = idx.shape  # (B, T) token ids, any T >= 1
        if T < 1:
            raise ValueError("RWKV7.forward needs at least one token per row")
        if state is None:
            state = self.zero_state(B, idx.device)
        elif len(state) != 3 * self.n_layer:
            raise ValueError(f"state must hold 3 tensors per layer ({3 * self.n_layer}), got {len(state)}")
        x = self.drop0(self.emb(idx))  # (B, T, C)
        act_dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(
            idx.device.type
        ) else x.dtype
        kernel = self.kernel_for(idx.device, act_dtype, resets=resets is not None)
        v_first = None  # set by block 0, read by the others
        new_state: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            s = state[3 * i : 3 * i + 3]
            fresh = restart_wkv(self.tuned_state, i, B, idx.device, resets)
            if self.grad_cp and self.training and torch.is_grad_enabled():
                out = torch.utils.checkpoint.checkpoint(block, x, v_first, *s, kernel, resets, fresh,
                                                        use_reentrant=False)
            else:
                out = block(x, v_first, *s, kernel, resets, fresh)
            x, v_first = out[0], out[1]
            new_state += out[2:]
        # logits (B, T, V); (B, 1, V) for head="last"; the head input (B, T, C) for head=False
        return head_out(self.ln_out, self.head, x, head), tuple(new_state)
