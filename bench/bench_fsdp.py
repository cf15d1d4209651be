"""FSDP2 vs DDP on 2 CPU ranks (gloo), same run: tokens/s and peak memory per rank.

Each rank trains the same RWKV5 model on the same random samples with exact BPTT, first
under DDP, then with the model sharded by FSDP2 (``fully_shard`` per block and on the
model, as ``trainer.strategy: fsdp2`` does). It prints per-rank tokens/s and the growth of
the process's peak RSS during each phase, and the FSDP2/DDP ratios.

    python bench/bench_fsdp.py            # L6-D512, vocab 4096, 4 samples of 2048 tokens, ctx 512
    python bench/bench_fsdp.py --quick    # tiny sizes: checks that it runs

Peak RSS only grows, so FSDP2 runs second and its figure is its growth over the DDP peak
(0 means it stayed within DDP's); run each phase alone (``--only``) for absolute peaks.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(args):
    from rwkv_plug.models import load_model
    from rwkv_plug.models.init import init_state_dict

    sd = init_state_dict(args.layers, args.width, args.vocab, seed=0)
    return load_model(sd, kernel="torch")


def _train(model, args, rank: int) -> float:
    from rwkv_plug.training.bptt import BpttSettings, sequence_loss

    g = torch.Generator().manual_seed(rank)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    settings = BpttSettings(ctx_len=args.ctx)
    tokens, start = 0, None
    for step in range(args.steps + 1):
        if step == 1:  # the first step warms up (allocations, FSDP's lazy init)
            dist.barrier()
            start, tokens = time.perf_counter(), 0
        ids = torch.randint(1, args.vocab, (1, args.length + 1), generator=g)
        out = sequence_loss(model, ids, torch.ones_like(ids), settings, train=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += args.length
    dist.barrier()
    return tokens / (time.perf_counter() - start)


def _worker(rank: int, args, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.nn.parallel import DistributedDataParallel

        from rwkv_plug.training.sharding import shard_model

        results = {}
        for phase in ("ddp", "fsdp2"):
            if args.only and phase != args.only:
                continue
            before = _peak_mb()
            model = _model(args)
            if phase == "ddp":
                wrapped = DistributedDataParallel(model)
                # the BPTT engine calls the RWKV module itself: DDP's hooks sync its gradients
                rate = _train(_DdpView(wrapped), args, rank)
            else:
                shard_model(model, init_device_mesh("cpu", (2,)))
                rate = _train(model, args, rank)
            results[phase] = (rate, max(0.0, _peak_mb() - before))
            del model
        queue.put((rank, results))
    finally:
        dist.destroy_process_group()


class _DdpView(torch.nn.Module):
    """The DDP-wrapped model as the BPTT engine calls it: ``model(idx, state)`` and ``zero_state``."""

    def __init__(self, ddp) -> None:
        super().__init__()
        self.ddp = ddp

    def forward(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def zero_state(self, *args, **kwargs):
        return self.ddp.module.zero_state(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.ddp.module, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks that it runs)")
    p.add_argument("--only", choices=("ddp", "fsdp2"), help="run one phase (absolute peak memory)")
    args = p.parse_args()
    sizes = dict(layers=2, width=64, vocab=256, ctx=32, length=96, steps=2) if args.quick else \
        dict(layers=6, width=512, vocab=4096, ctx=512, length=2048, steps=4)
    for k, v in sizes.items():
        setattr(args, k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args, port, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    got = dict(queue.get(timeout=3600) for _ in procs)
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        sys.exit("a rank failed")
    print(f"L{args.layers}-D{args.width} vocab {args.vocab}, samples of {args.length} tokens, ctx {args.ctx}, "
          f"{args.steps} timed steps, 2 CPU ranks (gloo)")
    for rank in (0, 1):
        for phase, (rate, peak) in got[rank].items():
            print(f"rank {rank} {phase:>5}: {rate:10.1f} tokens/s  peak RSS growth {peak:8.1f} MB")
        if len(got[rank]) == 2:
            (r_ddp, m_ddp), (r_fsdp, m_fsdp) = got[rank]["ddp"], got[rank]["fsdp2"]
            print(f"rank {rank} fsdp2/ddp: tokens/s {r_fsdp / r_ddp:.3f}x, "
                  f"peak growth {m_fsdp / m_ddp if m_ddp else float('nan'):.3f}x (see the docstring)")


if __name__ == "__main__":
    main()
