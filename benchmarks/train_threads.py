"""Benchmark: N training jobs side by side with 1 torch thread each vs one after another with N.

The pipeline trains many small models (suspects, generators, attack students). On a CPU with
``N`` cores Snakemake can run them as ``N`` one-thread jobs at once (``train_threads: 1``,
``--cores N``) or one ``N``-thread job at a time. This measures both on the suspects' workload
(the ``medmark.models`` classifier, 1x64x64 inputs, batch 32, AdamW, cross-entropy) and prints
the throughput of each and their ratio; ``train_threads`` in ``config/schema.yaml`` cites it.

Usage: ``python benchmarks/train_threads.py [--arch resnet18] [--cores 2] [--steps 20]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch
import torch.nn.functional as F

from medmark.models import ARCHS, build_classifier


def _setup(arch: str, threads: int, seed: int) -> tuple:
    torch.set_num_threads(threads)
    model = build_classifier(arch, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(32, 1, 64, 64, generator=gen)
    y = torch.randint(0, 2, (32,), generator=gen)
    for _ in range(2):  # warm-up (allocator, kernels)
        F.cross_entropy(model(x), y).backward()
    return model, opt, x, y


def _steps(model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def train_steps(arch: str, threads: int, steps: int, seed: int) -> float:
    """Seconds for ``steps`` optimiser steps of ``arch`` using ``threads`` torch threads."""
    state = _setup(arch, threads, seed)
    t0 = time.perf_counter()
    _steps(*state, steps)
    return time.perf_counter() - t0


def _worker(arch: str, steps: int, seed: int, barrier, out) -> None:
    """One one-thread job: set up and warm up, wait for the others, then time the steps."""
    state = _setup(arch, 1, seed)
    barrier.wait()
    t0 = time.perf_counter()
    _steps(*state, steps)
    out.put(time.perf_counter() - t0)


def side_by_side(arch: str, n: int, steps: int) -> float:
    """Seconds until the last of ``n`` one-thread jobs, started together, finishes its steps
    (process start-up and warm-up excluded, as for the one-after-another jobs)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(arch, steps, s, barrier, out)) for s in range(n)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=ARCHS, default="resnet18")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    n = a.cores
    t_serial = sum(train_steps(a.arch, n, a.steps, seed) for seed in range(n))
    t_parallel = side_by_side(a.arch, n, a.steps)
    work = n * a.steps * 32
    print(f"{a.arch}, {n} jobs of {a.steps} steps (batch 32, 64 px) on {n} cores")
    print(f"  one after another, {n} threads each: {t_serial:6.1f} s  {work / t_serial:6.1f} img/s")
    print(
        f"  side by side, 1 thread each:        {t_parallel:6.1f} s  {work / t_parallel:6.1f} img/s"
    )
    print(f"  ratio side-by-side / one-after-another: {t_serial / t_parallel:.2f}x")


if __name__ == "__main__":
    main()
