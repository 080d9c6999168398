"""Benchmark: JPEG -> HDF5 preprocessing and random-batch reads (issue "Foundation", item 8).

Generates (or reuses) a synthetic CheXpert-format tree with the ``bench`` preset (960-1024 px
8-bit JPEGs, medmark.data.synthetic), takes the first ``--n-images`` frontal images in metadata
order and measures, all on a warm page cache:

(a) naive: one process, full ``Image.open().load()``, ``Image.resize`` LANCZOS, save PNG;
(b) the pipeline, ``medmark.data.preprocess.preprocess_to_h5`` with its default workers
    (wall time, worker start-up included);
(c) bare JPEG decode: one process, full ``Image.open().load()``, nothing else;

then random batches of 32 indices read from the HDF5 (``H5Images.__getitems__``, the
DataLoader path) vs from the JPEG tree (full decode + LANCZOS resize per image, as a dataloader
without HDF5 would; the DCT-draft decode of the pipeline is printed too, for reference).
Targets: b/a >= 4, b/c >= 0.7, HDF5 reads >= 5x JPEG reads. Results also go to
``<workdir>/results.json``.

Usage: ``python benchmarks/preprocess.py [--n-images 2000] [--workdir benchmarks/out/preprocess]``
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from medmark.data.chexpert import parse_chexpert_csv
from medmark.data.h5 import H5Images
from medmark.data.preprocess import load_resized, preprocess_to_h5
from medmark.data.splits import patient_splits
from medmark.data.synthetic import DATASET_DIR, generate_dataset
from medmark.io import write_json_atomic

SPLIT_FRACTIONS = {"release": 0.55, "verification": 0.1, "independent": 0.2, "test": 0.15}
BATCH = 32


def _dataset(workdir: Path, n_images: int, seed: int, gen_workers: int) -> tuple[Path, Path, Path]:
    """Synthetic tree + metadata.csv/splits.csv of the first ``n_images`` frontal images."""
    root = workdir / "synthetic"
    meta_csv, splits_csv = workdir / "metadata.csv", workdir / "splits.csv"
    if meta_csv.exists() and splits_csv.exists() and len(pd.read_csv(meta_csv)) >= n_images:
        return root, meta_csv, splits_csv
    n_patients = math.ceil(n_images / 1.1)  # bench preset: ~1.3 frontal images per patient
    while True:
        t0 = time.perf_counter()
        generate_dataset(
            root, preset="bench", seed=seed, n_patients=n_patients, workers=gen_workers
        )
        parts = [
            parse_chexpert_csv(root / DATASET_DIR / f"{name}.csv", root, name).metadata
            for name in ("train", "valid")
        ]
        meta = pd.concat(parts, ignore_index=True)
        frontal = meta[meta["view"] == "Frontal"]
        print(
            f"generated {len(meta)} images ({len(frontal)} frontal) of {n_patients} patients "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        if len(frontal) >= n_images:
            break
        n_patients = math.ceil(n_patients * 1.2 * n_images / max(len(frontal), 1))
    meta = frontal.iloc[:n_images].reset_index(drop=True)
    meta.to_csv(meta_csv, index=False)
    patient_splits(meta, SPLIT_FRACTIONS, seed).to_csv(splits_csv, index=False)
    return root, meta_csv, splits_csv


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _naive(paths: list[Path], out_dir: Path, res: int) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im.load()
            im.convert("L").resize((res, res), Image.Resampling.LANCZOS).save(out_dir / f"{i}.png")
    return _rate(len(paths), time.perf_counter() - t0)


def _bare(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return _rate(len(paths), time.perf_counter() - t0)


def _jpeg_item(path: Path, res: int, draft: bool) -> torch.Tensor:
    if draft:
        u8 = load_resized(path, res)
    else:
        with Image.open(path) as im:
            im.load()
            u8 = np.asarray(im.convert("L").resize((res, res), Image.Resampling.LANCZOS))
    return torch.from_numpy(u8).float().div_(255).unsqueeze(0)


def _reads(batches: list[np.ndarray], fetch) -> float:
    t0 = time.perf_counter()
    n = 0
    for idx in batches:
        x = torch.stack(fetch(idx))
        n += x.shape[0]
    return _rate(n, time.perf_counter() - t0)


def _verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "MISS"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/out/preprocess"))
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-workers", type=int, default=2, help="processes for the generator")
    ap.add_argument("--read-batches", type=int, default=60, help="random batches of 32 per reader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    workdir, res = args.workdir, args.resolution
    workdir.mkdir(parents=True, exist_ok=True)

    root, meta_csv, splits_csv = _dataset(workdir, args.n_images, args.seed, args.gen_workers)
    meta = pd.read_csv(meta_csv).iloc[: args.n_images]
    paths = [root / p for p in meta["path"]]
    sizes = np.array([[w, h] for w, h in zip(meta["width"], meta["height"], strict=True)])
    for p in paths:  # warm the page cache so every variant reads from memory
        p.read_bytes()
    n = len(paths)
    print(
        f"{n} frontal JPEGs, {sizes.min()}-{sizes.max()} px, mean {sizes.mean():.0f} px, "
        f"{sum(p.stat().st_size for p in paths) / n / 1024:.0f} KiB each; resolution {res}"
    )

    naive = _naive(paths, workdir / "naive_png", res)
    print(f"(a) naive PIL open->LANCZOS->PNG, 1 process : {naive:8.1f} images/s")
    bare = _bare(paths)
    print(f"(c) bare JPEG decode, 1 process            : {bare:8.1f} images/s")
    workers = inspect.signature(preprocess_to_h5).parameters["workers"].default
    out_h5 = workdir / f"r{res}.h5"
    t0 = time.perf_counter()
    stats = preprocess_to_h5(
        meta_csv,
        splits_csv,
        root,
        res,
        out_h5,
        workdir / f"r{res}.quarantine.csv",
        provenance={
            "source_sha256": "benchmark",
            "config_hash": "benchmark",
            "created_by": "benchmarks/preprocess.py",
        },
        workers=workers,
    )
    pipeline = _rate(stats["n_written"], time.perf_counter() - t0)
    print(f"(b) preprocess_to_h5, {workers} workers           : {pipeline:8.1f} images/s")
    print(f"    HDF5 size {out_h5.stat().st_size / 2**20:.1f} MiB ({stats['n_written']} images)")

    rng = np.random.default_rng(args.seed)
    batches = [rng.choice(n, size=min(BATCH, n), replace=False) for _ in range(args.read_batches)]
    ds = H5Images(out_h5)
    ds.__getitems__([0])  # open the handle outside the timing, as a DataLoader worker would
    h5_reads = _reads(batches, lambda idx: [x for x, _ in ds.__getitems__(idx.tolist())])
    jpeg_reads = _reads(
        batches[: max(1, len(batches) // 3)],
        lambda idx: [_jpeg_item(paths[i], res, False) for i in idx],
    )
    draft_reads = _reads(
        batches[: max(1, len(batches) // 3)],
        lambda idx: [_jpeg_item(paths[i], res, True) for i in idx],
    )
    print(f"random batches of {BATCH}, 1 process:")
    print(f"    HDF5 (H5Images.__getitems__)           : {h5_reads:8.1f} images/s")
    print(f"    JPEG tree, full decode + LANCZOS       : {jpeg_reads:8.1f} images/s")
    print(f"    JPEG tree, DCT draft + LANCZOS (ref.)  : {draft_reads:8.1f} images/s")

    checks = {
        "b/a (pipeline / naive) >= 4": (pipeline / naive, 4.0),
        "b/c (pipeline / bare decode) >= 0.7": (pipeline / bare, 0.7),
        "HDF5 reads / JPEG reads >= 5": (h5_reads / jpeg_reads, 5.0),
    }
    for name, (value, target) in checks.items():
        print(f"{_verdict(value, target)}  {name}: {value:.2f}")
    write_json_atomic(
        workdir / "results.json",
        {
            "n_images": n,
            "resolution": res,
            "workers": workers,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "images_per_s": {
                "naive": naive,
                "pipeline": pipeline,
                "bare_decode": bare,
                "read_h5": h5_reads,
                "read_jpeg": jpeg_reads,
                "read_jpeg_draft": draft_reads,
            },
            "checks": {
                k: {"value": v, "target": t, "pass": v >= t} for k, (v, t) in checks.items()
            },
            "preprocess_stats": stats,
        },
    )
    print(json.dumps({"results": str(workdir / "results.json")}))


if __name__ == "__main__":
    main()
