"""DistributedDataParallel and GU2Net's per-anatomy layers: is ``find_unused_parameters`` needed, what does it cost?

Two measurements on CPU processes (gloo, loopback), the demo's four anatomies and input sizes, batch 4:

1. necessity: 2 processes train the same anatomy per step (as the bundle's sampler makes them), alternating
   anatomies, with ``find_unused_parameters=False`` and ``True``; the first fails or not;
2. cost: 1 process, training steps of the plain network vs the same network under DDP with
   ``find_unused_parameters=True`` (a world of 1: the autograd-graph search and the reducer, without any
   network transfer), interleaved step by step: median seconds per step and median of the paired ratios.

    python bench/ddp.py [--steps 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle"))

from scripts import GU2Net  # noqa: E402
from scripts.datasets.demo import DEMO_ANATOMIES  # noqa: E402

LANDMARKS = [19, 37, 6, 10]  # the demo's head, hand, chest, pelvis
SIZES = [tuple(DEMO_ANATOMIES[a]) for a in ("head", "hand", "chest", "pelvis")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1 if world > 1 else torch.get_num_threads())


def _net() -> torch.nn.Module:
    return GU2Net(LANDMARKS).to(memory_format=torch.channels_last)  # as the bundle's network


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, domain: int, batch: int = 4) -> None:
    w, h = SIZES[domain]
    x = torch.randn(batch, 1, w, h)
    target = torch.rand(batch, LANDMARKS[domain], w, h)
    opt.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy(net(x, domain).clamp(1e-6, 1 - 1e-6), target)
    loss.backward()
    opt.step()


def _necessity(rank: int, world: int, port: int, find_unused: bool, queue) -> None:
    _init(rank, world, port)
    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(_net(), find_unused_parameters=find_unused)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    try:
        for domain in (0, 1, 2, 3):  # every rank the same anatomy at each step
            _step(net, opt, domain)
        result = "ok"
    except RuntimeError as e:
        result = "RuntimeError: " + str(e).splitlines()[0]
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


def _cost(rank: int, world: int, port: int, steps: int, queue) -> None:
    _init(rank, world, port)
    torch.manual_seed(0)
    plain = _net()
    wrapped = _net()
    ddp = torch.nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=True)
    nets = {"plain": (plain, torch.optim.Adam(plain.parameters(), 1e-4)), "ddp": (ddp, torch.optim.Adam(ddp.parameters(), 1e-4))}
    times: dict[str, list[float]] = {"plain": [], "ddp": []}
    for k in range(steps + 2):
        for name, (net, opt) in nets.items():  # interleaved: the same load on both
            t = time.perf_counter()
            _step(net, opt, k % 4)
            if k >= 2:  # warm-up
                times[name].append(time.perf_counter() - t)
    medians = {name: statistics.median(v) for name, v in times.items()}
    medians["paired ratio"] = statistics.median(d / p for d, p in zip(times["ddp"], times["plain"]))
    queue.put(medians)
    dist.destroy_process_group()


def _spawn(fn, world: int, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=fn, args=(r, world, port, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=1800)
    for p in procs:
        p.join(timeout=600)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json")
    args = parser.parse_args()
    out = {
        "find_unused_parameters=False, 2 processes": _spawn(_necessity, 2, False),
        "find_unused_parameters=True, 2 processes": _spawn(_necessity, 2, True),
    }
    for k, v in out.items():
        print(f"{k}: {v}", flush=True)
    cost = _spawn(_cost, 1, args.steps)
    out["seconds per step, 1 process (median)"] = cost
    print(f"1 process, median s/step: plain {cost['plain']:.3f}, DDP(find_unused_parameters=True) {cost['ddp']:.3f}; "
          f"median of the paired step ratios x{cost['paired ratio']:.3f}")
    if args.json:
        json.dump(out, open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
