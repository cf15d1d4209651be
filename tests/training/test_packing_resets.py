"""Packed with state resets == every record trained alone, exactly (fp64).

Records of odd lengths are packed by the real packer (data/pack.py), collated
(training/batches.py) and trained through the chunked BPTT engine with ctx_len
smaller than the packed rows, B = 2. The identity (docs/training.md): the packed
microbatch's loss is the token-weighted mean of the records' losses,
``loss_packed * N == sum_i loss_i * n_i`` with ``n_i`` a record's targets and
``N = sum n_i``, and every gradient likewise (the top-logit pull is off: its
strength is per microbatch, so it is not an identity).
"""

from __future__ import annotations

import datasets
import pytest
import torch

from rwkv_plug.data.pack import RECORD_STARTS, pack
from rwkv_plug.training.batches import collate
from rwkv_plug.training.bptt import BpttSettings, sequence_loss

V = 50
LENGTHS = [45, 50, 20, 61, 33, 17]
# packed with cap 192, align 32: row 0 = records 0 @0, 1 @64, 2 @128, 5 @160; row 1 = 3 @0, 4 @64


def _records(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(1, V, (n,), generator=g)
        mask = (torch.rand(n, generator=g) > 0.25).long()
        out.append((ids, mask))
    return out


def _packed_batch(records):
    ds = datasets.Dataset.from_dict({"input_ids": [r[0].tolist() for r in records],
                                     "loss_mask": [r[1].tolist() for r in records]})
    result = pack(ds, 64, 192, in_sequence=True, state="reset", align=32)
    rows = list(result.dataset)
    assert [r[RECORD_STARTS] for r in rows] == [[0, 64, 128, 160], [0, 64]]
    return collate(rows)


def _model(arch, tuned):
    if arch == "rwkv5":
        from rwkv_plug.models.init import init_state_dict

        sd = init_state_dict(2, 64, V, seed=0, dtype=torch.float64)
    else:
        from rwkv_plug.models.init7 import init_state_dict
        from rwkv_plug.models.rwkv7 import LoraDims

        sd = init_state_dict(2, 64, V, seed=0, lora=LoraDims(8, 8, 8, 8), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in sd.items()}
    from rwkv_plug.models import load_model

    model = load_model(sd, kernel="torch", dtype=torch.float64)
    if tuned:
        from rwkv_plug.models.state_tuning import add_start_state

        start = add_start_state(model)
        with torch.no_grad():
            for p in start.wkv:
                p.normal_(0, 0.3, generator=g)
        model.tuned_state = start
    return model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, ids, mask, settings, resets=None):
    model.zero_grad(set_to_none=True)
    out = sequence_loss(model, ids, mask, settings, train=True, resets=resets)
    out.loss.backward()
    return out.loss.detach(), _grads(model)


def _check_identity(model, settings):
    records = _records()
    batch = _packed_batch(records)
    assert batch["resets"].sum() == 4  # the second rows' records: 64, 128, 160 and 64
    loss_p, grads_p = _run(model, batch["input_ids"], batch["loss_mask"], settings, batch["resets"])
    N = int(batch["loss_mask"][:, 1:].sum())
    assert N == sum(int(m[1:].sum()) for _, m in records)  # the packer keeps every target, adds none
    total, grads = torch.zeros((), dtype=torch.float64), {}
    for ids, mask in records:
        loss_i, g_i = _run(model, ids[None], mask[None], settings)
        n_i = int(mask[1:].sum())
        total += loss_i * n_i
        for k, g in g_i.items():
            grads[k] = grads.get(k, 0) + g * n_i
    torch.testing.assert_close(loss_p * N, total, rtol=1e-12, atol=1e-12)
    assert grads.keys() == grads_p.keys()
    for k in grads:
        scale = grads[k].abs().max().clamp(min=1e-30)
        err = ((grads_p[k] * N - grads[k]).abs().max() / scale).item()
        assert err < 1e-9, (k, err)
    return loss_p, grads_p


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
@pytest.mark.parametrize("ctx_len", [64, 96])  # 64: records start on chunk boundaries; 96: records cross them
def test_packed_with_resets_equals_records_trained_alone(arch, ctx_len):
    _check_identity(_model(arch, tuned=False), BpttSettings(ctx_len=ctx_len, l2wrap=False))


@pytest.mark.parametrize("arch", ["rwkv5", "rwkv7"])
def test_each_record_starts_from_the_tuned_state(arch):
    model = _model(arch, tuned=True)
    for n, p in model.named_parameters():
        p.requires_grad_("tuned_state" in n)  # state tuning trains the start state only
    _, grads = _check_identity(model, BpttSettings(ctx_len=96, l2wrap=False))
    assert grads.keys() == {f"tuned_state.wkv.{i}" for i in range(2)}


def test_plain_graph_and_truncated_modes_keep_the_identity():
    model = _model("rwkv5", tuned=False)
    _check_identity(model, BpttSettings(ctx_len=96, learning=False, l2wrap=False))
    # truncated: with ctx_len 64 no record crosses a chunk boundary, so it detaches nothing a
    # record alone would keep (a record crossing one gets the truncated gradient there)
    _check_identity(model, BpttSettings(ctx_len=64, truncated=True, l2wrap=False))


def test_without_resets_the_records_leak_into_each_other():
    """The check above can fail: carrying the state across records changes the loss."""
    model = _model("rwkv5", tuned=False)
    batch = _packed_batch(_records())
    settings = BpttSettings(ctx_len=64, l2wrap=False)
    with torch.no_grad():
        reset = sequence_loss(model, batch["input_ids"], batch["loss_mask"], settings, train=False,
                              resets=batch["resets"]).loss
        carry = sequence_loss(model, batch["input_ids"], batch["loss_mask"], settings, train=False).loss
    assert abs(float(reset - carry)) > 1e-4
