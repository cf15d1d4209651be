"""RWKV-v5 (x052 "Eagle"), written to read like the math.

One layer is ``x = x + TimeMix(ln1(x)); x = x + ChannelMix(ln2(x))``; block 0
first applies ``ln0`` to the embeddings. Parameter names and shapes are the
official RWKV-LM x052 state dict, so official files load with
``strict=True`` and our files load in RWKV-LM and the ``rwkv`` pip package.

Notation: B batch, T time, C n_embd, A dim_att, F dim_ffn, H heads,
N = 64 head size, V vocab. The recurrent state of one layer is
``(att_shift (B, C), wkv (B, H, N, N) float32, ffn_shift (B, C))``; the
model's state is those triples flattened over layers. Feeding a sequence in
chunks with the state carried gives the same logits as one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rwkv_plug.models.embedding import Embedding
from rwkv_plug.models.head_out import head_out
from rwkv_plug.models.kernel_slot import KernelSlot
from rwkv_plug.models.recurrent_state import restart_wkv, start_state

HEAD_SIZE = 64
#: GroupNorm runs on out / 8 (official x052); same as eps 64e-5 on out.
HEAD_SIZE_DIVISOR = 8


def default_dim_ffn(n_embd: int) -> int:
    """The x052 FFN width: 3.5 * C rounded down to a multiple of 32."""
    return int(n_embd * 3.5 // 32 * 32)


def _token_shift(x: Tensor, shift: Tensor, resets: Tensor | None = None) -> Tensor:
    """The previous token of every position; position 0 gets the carried ``shift``,
    and a position ``resets`` (B, T) marks (a packed record's first token) gets zeros."""
    xx = torch.cat([shift.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, C)
    return xx if resets is None else xx.masked_fill(resets.unsqueeze(-1), 0.0)


class TimeMix(nn.Module):
    """Multi-head linear attention with per-channel decay (the "att" of a block)."""

    def __init__(self, n_embd: int, dim_att: int) -> None:
        super().__init__()
        C, A = n_embd, dim_att
        self.n_head = A // HEAD_SIZE
        H, N = self.n_head, HEAD_SIZE
        # how much of the current vs previous token each projection sees
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_g = nn.Parameter(torch.ones(1, 1, C))
        self.time_decay = nn.Parameter(torch.zeros(H, N))  # decay w = exp(-exp(.))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))  # bonus u of the current token
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=1e-5)

    def forward(self, x: Tensor, shift: Tensor, wkv: Tensor, kernel, resets: Tensor | None = None,
                fresh: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape  # x is ln1(x), (B, T, C)
        H, N = self.n_head, HEAD_SIZE
        xx = _token_shift(x, shift, resets)
        dx = x - xx
        # x * mix + xx * (1 - mix), written with one multiply
        xk, xv = xx + dx * self.time_mix_k, xx + dx * self.time_mix_v
        xr, xg = xx + dx * self.time_mix_r, xx + dx * self.time_mix_g

        r = self.receptance(xr).view(B, T, H, N)
        k = self.key(xk).view(B, T, H, N)
        v = self.value(xv).view(B, T, H, N)
        g = F.silu(self.gate(xg))  # (B, T, A)
        y, wkv = self._wkv(r, k, v, wkv, kernel, resets, fresh)
        # clone: a view of x[:, -1] would keep the whole chunk's activations alive
        return self._out(y, g), x[:, -1].clone(), wkv  # (B, T, C)

    def last_output(self, x: Tensor, shift: Tensor, wkv: Tensor, kernel, resets: Tensor | None = None,
                    fresh: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` with the output of the last position only, (B, 1, C): what a run for
        the new state needs. The WKV state needs k and v everywhere; the receptance is zero
        before the last position (the kernel's outputs there are not read), and the gate, group
        norm and output projection run on the last position alone."""
        B, T, C = x.shape  # x is ln1(x)
        H, N = self.n_head, HEAD_SIZE
        xx = _token_shift(x, shift, resets)
        dx = x - xx
        k = self.key(xx + dx * self.time_mix_k).view(B, T, H, N)
        v = self.value(xx + dx * self.time_mix_v).view(B, T, H, N)
        xl, dxl = xx[:, -1:], dx[:, -1:]  # (B, 1, C)
        r_last = self.receptance(xl + dxl * self.time_mix_r).view(B, 1, H, N)
        r = torch.cat([r_last.new_zeros(B, T - 1, H, N), r_last], dim=1)
        g = F.silu(self.gate(xl + dxl * self.time_mix_g))  # (B, 1, A)
        y, wkv = self._wkv(r, k, v, wkv, kernel, resets, fresh)
        return self._out(y[:, -1:], g), x[:, -1].clone(), wkv  # (B, 1, C)

    def _wkv(self, r: Tensor, k: Tensor, v: Tensor, wkv: Tensor, kernel, resets: Tensor | None,
             fresh: Tensor | None) -> tuple[Tensor, Tensor]:
        # decays in at least fp32 (bf16 weights), fp64 when the model is fp64
        wdt = torch.promote_types(self.time_decay.dtype, torch.float32)
        w = torch.exp(-torch.exp(self.time_decay.to(wdt)))  # (H, N) in (0, 1)
        u = self.time_faaaa.to(wdt)  # (H, N)
        # y_t = r_t (S + diag(u) k_t^T v_t);  S <- diag(w) S + k_t^T v_t
        if resets is None:
            return kernel.wkv5(r, k, v, w, u, wkv)  # (B, T, H, N), (B, H, N, N)
        # a record starting inside the chunk starts from ``fresh`` (zeros or the tuned state)
        return kernel.wkv5(r, k, v, w, u, wkv, resets=resets, s_reset=fresh)

    def _out(self, y: Tensor, g: Tensor) -> Tensor:
        """The block's output from the kernel's ``y`` (B, T, H, N) and the gate ``g`` (B, T, A)."""
        B, T, H, N = y.shape
        y = y.reshape(B * T, H * N) / HEAD_SIZE_DIVISOR
        y = self.ln_x(y).view(B, T, H * N)  # (B, T, A)
        return self.output(y * g)  # (B, T, C)


class ChannelMix(nn.Module):
    """The feed-forward half of a block: squared-ReLU MLP gated by a sigmoid."""

    def __init__(self, n_embd: int, dim_ffn: int) -> None:
        super().__init__()
        C, Fd = n_embd, dim_ffn
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def forward(self, x: Tensor, shift: Tensor, resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xx = _token_shift(x, shift, resets)  # x is ln2(x), (B, T, C)
        dx = x - xx
        xk, xr = xx + dx * self.time_mix_k, xx + dx * self.time_mix_r
        k = torch.relu(self.key(xk)).square()  # (B, T, F)
        return torch.sigmoid(self.receptance(xr)) * self.value(k), x[:, -1].clone()  # (B, T, C)


class Block(nn.Module):
    def __init__(self, layer_id: int, n_embd: int, dim_att: int, dim_ffn: int, dropout: float) -> None:
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd)  # normalises the embeddings
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.att = TimeMix(n_embd, dim_att)
        self.ffn = ChannelMix(n_embd, dim_ffn)
        # dropout on the residual sums, as the earlier trainer does
        self.drop0 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, att_shift: Tensor, wkv: Tensor, ffn_shift: Tensor, kernel,
                resets: Tensor | None = None, fresh: Tensor | None = None, state_only: bool = False):
        # resets (B, T) bool: packed records' first tokens, which start from the fresh state
        # (shifts zero, WKV ``fresh``) exactly as if trained alone.
        # state_only: the new state alone (:meth:`new_state`); through forward, so that
        # wrappers' hooks (FSDP2's gathering of a sharded block) run
        if state_only:
            return self.new_state(x, att_shift, wkv, ffn_shift, kernel, resets, fresh)
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, att_shift, wkv = self.att(self.ln1(x), att_shift, wkv, kernel, resets, fresh)
        x = self.drop0(x + dx)
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift, resets)
        x = self.drop1(x + dx)
        return x, att_shift, wkv, ffn_shift

    def new_state(self, x: Tensor, att_shift: Tensor, wkv: Tensor, ffn_shift: Tensor, kernel,
                  resets: Tensor | None = None, fresh: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The state :meth:`forward` returns, without the output it does not need: the time
        mix's output at the last position only, no channel mix (its new shift is its input's
        last position). Draws no random numbers, so only for a block whose dropout is off."""
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, att_shift, wkv = self.att.last_output(self.ln1(x), att_shift, wkv, kernel, resets, fresh)
        x_last = x[:, -1:] + dx  # (B, 1, C)
        return att_shift, wkv, self.ln2(x_last)[:, -1].clone()


class RWKV5(KernelSlot, nn.Module):
    """RWKV-v5 language model: ``model(idx, state) -> (logits, new_state)``.

    The WKV op comes from the kernel registry (``kernel`` is a registered
    name or ``"auto"``), resolved on the first forward for the input's
    device and dtype. A kernel object with a ``wkv5`` method is accepted too.
    """

    #: The registered architecture (``rwkv-plug list-models``) this model belongs to.
    arch_name = "rwkv5"

    wkv_op = "wkv5"
    #: forward takes ``head=True | "last" | False`` (models/head_out.py)
    head_modes = True
    #: forward takes ``head="state"``: the new state only, output None (training/head_loss.model_state)
    state_mode = True

    def __init__(
        self,
        n_layer: int,
        n_embd: int,
        vocab_size: int,
        dim_att: int | None = None,
        dim_ffn: int | None = None,
        *,
        kernel="auto",
        dropout: float = 0.0,
        grad_cp: bool = False,
    ) -> None:
        super().__init__()
        self.n_layer, self.n_embd, self.vocab_size = n_layer, n_embd, vocab_size
        self.dim_att = dim_att or n_embd
        self.dim_ffn = dim_ffn or default_dim_ffn(n_embd)
        self.n_head = self.dim_att // HEAD_SIZE
        self.grad_cp = grad_cp
        self.dropout = dropout
        self.emb = Embedding(vocab_size, n_embd)  # nn.Embedding, gradient memory reused on CPU
        self.drop0 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(i, n_embd, self.dim_att, self.dim_ffn, dropout) for i in range(n_layer)
        )
        self.ln_out = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.set_kernel(kernel)
        #: The trainable WKV start state of ``model.tuning: state`` (a StartState), or None.
        self.tuned_state = None

    # -- state ------------------------------------------------------------
    def zero_state(self, batch_size: int, device=None) -> tuple[Tensor, ...]:
        """Start-of-sample state: per layer (att_shift, wkv float32, ffn_shift), flattened;
        the wkv part is ``tuned_state`` (expanded over the batch) when the model has one.
        """
        device = self.emb.weight.device if device is None else device
        dtype = self.emb.weight.dtype
        B, C, H, N = batch_size, self.n_embd, self.n_head, HEAD_SIZE
        return start_state(self.n_layer, B, C, H, N, dtype, torch.float32, device, self.tuned_state)

    # -- forward ----------------------------------------------------------
    def forward(self, idx: Tensor, state: tuple[Tensor, ...] | None = None, head: bool | str = True,
                resets: Tensor | None = None):
        # resets: (B, T) bool, True at a packed record's first token (the state restarts there)
        B, T = idx.shape  # (B, T) token ids, any T >= 1
        if T < 1:
            raise ValueError("RWKV5.forward needs at least one token per row")
        if state is None:
            state = self.zero_state(B, idx.device)
        elif len(state) != 3 * self.n_layer:
            raise ValueError(f"state must hold 3 tensors per layer ({3 * self.n_layer}), got {len(state)}")
        x = self.drop0(self.emb(idx))  # (B, T, C)
        act_dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(
            idx.device.type
        ) else x.dtype
        kernel = self.kernel_for(idx.device, act_dtype, resets=resets is not None)
        new_state: list[Tensor] = []
        # head="state": the last block computes its new state only (no dropout draws to keep)
        state_only = head == "state" and (self.dropout == 0 or not self.training)
        for i, block in enumerate(self.blocks):
            s = state[3 * i : 3 * i + 3]
            fresh = restart_wkv(self.tuned_state, i, B, idx.device, resets)
            if state_only and i == self.n_layer - 1:
                new_state += block(x, *s, kernel, resets, fresh, state_only=True)
                return None, tuple(new_state)
            if self.grad_cp and self.training and torch.is_grad_enabled():
                out = torch.utils.checkpoint.checkpoint(block, x, *s, kernel, resets, fresh, use_reentrant=False)
            else:
                out = block(x, *s, kernel, resets, fresh)
            x = out[0]
            new_state += out[1:]
        if head == "state":  # dropout on: every block ran whole, for the same random draws
            return None, tuple(new_state)
        # logits (B, T, V); (B, 1, V) for head="last"; the head input (B, T, C) for head=False
        return head_out(self.ln_out, self.head, x, head), tuple(new_state)
