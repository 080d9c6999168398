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


def train_steps(arch: str, threads: int, steps: int, seed: int) -> float:
    """Seconds for ``steps`` optimiser steps of ``arch`` using ``threads`` torch threads."""
    torch.set_num_threads(threads)
    model = build_classifier(arch, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(32, 1, 64, 64, generator=gen)
    y = torch.randint(0, 2, (32,), generator=gen)
    for _ in range(2):  # warm-up (allocator, kernels)
        F.cross_entropy(model(x), y).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - t0


def _worker(args: tuple[str, int, int, int]) -> float:
    return train_steps(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=ARCHS, default="resnet18")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    n = a.cores
    t_serial = sum(train_steps(a.arch, n, a.steps, seed) for seed in range(n))
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(n) as pool:
        pool.map(_worker, [(a.arch, 1, a.steps, seed) for seed in range(n)])
    t_parallel = time.perf_counter() - t0  # includes the workers' start-up
    work = n * a.steps * 32
    print(f"{a.arch}, {n} jobs of {a.steps} steps (batch 32, 64 px) on {n} cores")
    print(f"  one after another, {n} threads each: {t_serial:6.1f} s  {work / t_serial:6.1f} img/s")
    print(
        f"  side by side, 1 thread each:        {t_parallel:6.1f} s  {work / t_parallel:6.1f} img/s"
    )
    print(f"  ratio side-by-side / one-after-another: {t_serial / t_parallel:.2f}x")


if __name__ == "__main__":
    main()
