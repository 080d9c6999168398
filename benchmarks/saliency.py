"""Benchmark: batched EigenCAM (medmark.saliency) vs the grad-cam library called per image.

Prints images/s for both and the speed ratio (target: batched faster). Not a test.

    .venv/bin/python benchmarks/saliency.py --n 256 --resolution 224 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM

from medmark.models import build_classifier
from medmark.saliency import EigenCamBatcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_classifier(args.arch, seed=0).eval()
    x = torch.rand(
        args.n, 1, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0)
    )

    batcher = EigenCamBatcher(model, resolution=args.resolution)
    t0 = time.perf_counter()
    batched = np.concatenate(
        [batcher(x[i : i + args.batch_size]) for i in range(0, args.n, args.batch_size)]
    )
    t_batched = time.perf_counter() - t0

    cam = EigenCAM(model=model, target_layers=batcher.cam.target_layers)
    t0 = time.perf_counter()
    single = np.concatenate([cam(input_tensor=x[i : i + 1], targets=None) for i in range(args.n)])
    t_single = time.perf_counter() - t0

    print(
        f"machine: {os.cpu_count()} cores, torch threads {args.threads}, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{args.arch} @ {args.resolution}px, {args.n} images")
    print(f"per-image grad-cam : {args.n / t_single:8.1f} images/s")
    print(f"batched (bs={args.batch_size:3d})  : {args.n / t_batched:8.1f} images/s")
    print(f"speed ratio batched/per-image: {t_single / t_batched:.2f}x")
    print(f"max |batched - per-image| = {np.abs(batched - single).max():.2e}")


if __name__ == "__main__":
    main()
