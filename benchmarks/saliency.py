"""Benchmark: batched EigenCAM (medmark.saliency) against its limit, the bare forward pass.

Same model, batch size and resolution for all rows. Prints images/s of

- the bare forward pass (``torch.no_grad``, whole classifier): the limit on a CPU;
- medmark's batched EigenCAM, and its parts (forward up to the target layer; the thin-SVD
  projection and grad-cam's scaling), beside grad-cam's own projection (full SVD);
- the grad-cam library's ``EigenCAM`` class fed the same batches (what medmark called before)
  and called per image;

then the ratio batched EigenCAM / bare forward pass (target >= 0.9) and the largest difference
to the library's per-image maps (must stay below 1e-4). Not a test.

    nice -n 19 .venv/bin/python benchmarks/saliency.py --n 256 --resolution 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from medmark.models import build_classifier
from medmark.saliency import EigenCamBatcher, first_component_projection


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64, help="config saliency.batch_size")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_classifier(args.arch, seed=0).eval()
    n, bs, r = args.n, args.batch_size, args.resolution
    x = torch.rand(n, 1, r, r, generator=torch.Generator().manual_seed(0))
    batches = [x[i : i + bs] for i in range(0, n, bs)]
    batcher = EigenCamBatcher(model, resolution=r)
    with torch.no_grad():
        model(batches[0])  # warm-up (allocator, kernels)
    batcher(batches[0])

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    t_fwd, _ = _timed(forward)
    t_batched, maps = _timed(lambda: np.concatenate([batcher(b) for b in batches]))
    t_acts, acts = _timed(lambda: [batcher.activations(b).numpy() for b in batches])
    t_svd, _ = _timed(
        lambda: [
            scale_cam_image(np.maximum(first_component_projection(a), 0), (r, r))
            for a in acts  # type: ignore[union-attr]
        ]
    )
    t_full, _ = _timed(lambda: [get_2d_projection(a) for a in acts])  # type: ignore[union-attr]

    cam = EigenCAM(model=model, target_layers=[batcher.layer])
    t_lib_batched, _ = _timed(lambda: [cam(input_tensor=b, targets=None) for b in batches])
    n_single = min(n, 64)
    t_single, single = _timed(
        lambda: np.concatenate(
            [cam(input_tensor=x[i : i + 1], targets=None) for i in range(n_single)]
        )
    )
    batcher.close()

    print(
        f"machine: {os.cpu_count()} cores, torch threads {args.threads}, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.arch} @ {r}px, {n} images, batch {bs}, target layer output {tuple(acts[0].shape[1:])}"
    )  # type: ignore[index]
    rows = [
        ("bare forward pass (no_grad, whole model)", n / t_fwd),
        ("medmark batched EigenCAM", n / t_batched),
        ("  of which: forward to the target layer", n / t_acts),
        ("  of which: thin-SVD projection + grad-cam scaling", n / t_svd),
        ("grad-cam get_2d_projection alone (full SVD)", n / t_full),
        ("grad-cam EigenCAM class, same batches", n / t_lib_batched),
        ("grad-cam EigenCAM class, per image", n_single / t_single),
    ]
    for label, rate in rows:
        print(f"{label:48s}: {rate:8.1f} images/s")
    print(f"ratio batched EigenCAM / bare forward pass: {t_fwd / t_batched:.2f} (target >= 0.9)")
    print(
        f"ratio batched EigenCAM / grad-cam class, same batches: {t_lib_batched / t_batched:.2f}x"
    )
    diff = np.abs(maps[:n_single] - single).max()  # type: ignore[index]
    print(f"max |batched - grad-cam per-image| = {diff:.2e} (must be < 1e-4)")


if __name__ == "__main__":
    main()
