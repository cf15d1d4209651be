"""Run by tests/training/test_fsdp.py: exact-BPTT gradients of FSDP2-sharded parameters on 2 ranks.

``python fsdp_grad_driver.py OUT MODE [MODE ...]`` (MODE: exact, truncated, range) writes, for each
mode, OUT/MODE/expected.pt (the mean of the two samples' gradients in one process) and
OUT/MODE/grads.pt (rank 0's gathered sharded gradients after each rank ran its own sample). The
modes share one pair of ranks and one process group, and the ranks are forked from this process,
which has imported torch and run nothing yet: starting ranks is most of the cost.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rwkv_plug.training.bptt import BpttSettings, sequence_loss
from rwkv_plug.training.testing import ToyRWKV

SETTINGS = {
    "exact": BpttSettings(ctx_len=4),
    "truncated": BpttSettings(ctx_len=4, truncated=True),
    "range": BpttSettings(ctx_len=4, learning_range=2),
}


def sample(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rank)
    return torch.randint(1, 32, (1, 13 if rank == 0 else 7), generator=g)  # 3 chunks / 2 chunks


def model() -> ToyRWKV:
    return ToyRWKV(n_layer=2).double()


def expected(settings: BpttSettings) -> dict[str, torch.Tensor]:
    m, grads = model(), []
    for rank in range(2):
        m.zero_grad()
        ids = sample(rank)
        sequence_loss(m, ids, torch.ones_like(ids), settings, train=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    return {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}


def sync(chunks: int) -> int:
    """The most chunks of any rank: every rank runs that many (empty ones past its own)."""
    t = torch.tensor([chunks])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def worker(rank: int, out: str, modes: list[str], port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from rwkv_plug.training.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        for mode in modes:  # a fresh model (same init) per mode, sharded anew
            m = model()
            shard_model(m, mesh)
            ids = sample(rank)
            sequence_loss(m, ids, torch.ones_like(ids), SETTINGS[mode], train=True, sync_chunks=sync).loss.backward()
            grads = {n: p.grad.full_tensor() for n, p in m.named_parameters()}
            if rank == 0:
                (Path(out) / mode).mkdir(parents=True, exist_ok=True)
                torch.save(grads, Path(out) / mode / "grads.pt")
    finally:
        dist.destroy_process_group()
    if rank == 0:  # the one-process reference, in a rank: the parent forks before any torch work
        for mode in modes:
            torch.save(expected(SETTINGS[mode]), Path(out) / mode / "expected.pt")


def main() -> None:
    import socket

    out, modes = sys.argv[1], sys.argv[2:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(out, modes, port), nprocs=2, start_method="fork")


if __name__ == "__main__":
    main()
