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
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from medmark.data.chexpert import parse_chexpert_csv
from medmark.data.h5 import H5Images
from medmark.data.preprocess import load_resized, preprocess_to_h5
from medmark.data.splits import patient_splits
from medmark.data.synthetic import DATASET_DIR, STAMP_FILE, generate_dataset
from medmark.io import write_json_atomic

SPLIT_FRACTIONS = {"release": 0.55, "verification": 0.1, "independent": 0.2, "test": 0.15}
BATCH = 32


def _frontal(root: Path) -> pd.DataFrame:
    """Frontal rows of the metadata table of a generated tree (empty if there is none)."""
    if not (root / STAMP_FILE).exists():
        return pd.DataFrame({"view": []})
    parts = [
        parse_chexpert_csv(root / DATASET_DIR / f"{name}.csv", root, name).metadata
        for name in ("train", "valid")
    ]
    meta = pd.concat(parts, ignore_index=True)
    return meta[meta["view"] == "Frontal"]


def _dataset(workdir: Path, n_images: int, seed: int, gen_workers: int) -> tuple[Path, Path, Path]:
    """Synthetic tree (reused if it has enough frontal images) + metadata.csv/splits.csv of
    exactly its first ``n_images`` frontal images."""
    root = workdir / "synthetic"
    frontal = _frontal(root)
    n_patients = math.ceil(n_images / 1.1)  # bench preset: ~1.25 frontal images per patient
    while len(frontal) < n_images:
        t0 = time.perf_counter()
        generate_dataset(
            root, preset="bench", seed=seed, n_patients=n_patients, workers=gen_workers
        )
        frontal = _frontal(root)
        print(
            f"generated {len(frontal)} frontal images of {n_patients} patients "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        n_patients = math.ceil(n_patients * 1.2 * n_images / max(len(frontal), 1))
    meta = frontal.iloc[:n_images].reset_index(drop=True)
    meta_csv, splits_csv = workdir / "metadata.csv", workdir / "splits.csv"
    meta.to_csv(meta_csv, index=False)
    patient_splits(meta, SPLIT_FRACTIONS, seed).to_csv(splits_csv, index=False)
    return root, meta_csv, splits_csv


@dataclass
class Timing:
    """Wall and CPU seconds (this process + its joined children) of ``n`` images."""

    n: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.n / self.wall if self.wall > 0 else float("inf")

    @property
    def cpu_ms(self) -> float:
        return 1e3 * self.cpu / self.n


def _cpu() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], int]) -> Timing:
    c0, t0 = _cpu(), time.perf_counter()
    n = fn()
    return Timing(n, time.perf_counter() - t0, _cpu() - c0)


def _naive(paths: list[Path], out_dir: Path, res: int) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im.load()
            im.convert("L").resize((res, res), Image.Resampling.LANCZOS).save(out_dir / f"{i}.png")
    return len(paths)


def _bare(paths: list[Path]) -> int:
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return len(paths)


def _jpeg_item(path: Path, res: int, draft: bool) -> torch.Tensor:
    if draft:
        u8 = load_resized(path, res)
    else:
        with Image.open(path) as im:
            im.load()
            u8 = np.array(im.convert("L").resize((res, res), Image.Resampling.LANCZOS))
    return torch.from_numpy(u8).float().div_(255).unsqueeze(0)


def _reads(batches: list[np.ndarray], fetch: Callable[[np.ndarray], list[torch.Tensor]]) -> int:
    n = 0
    for idx in batches:
        n += torch.stack(fetch(idx)).shape[0]
    return n


def _line(label: str, t: Timing) -> None:
    print(f"{label:46s}: {t.rate:8.1f} images/s  ({t.cpu_ms:5.2f} CPU-ms/image)")


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
    meta = pd.read_csv(meta_csv)
    paths = [root / p for p in meta["path"]]
    sizes = np.array([[w, h] for w, h in zip(meta["width"], meta["height"], strict=True)])
    for p in paths:  # warm the page cache so every variant reads from memory
        p.read_bytes()
    n = len(paths)
    print(
        f"{n} frontal JPEGs, {sizes.min()}-{sizes.max()} px, mean {sizes.mean():.0f} px, "
        f"{sum(p.stat().st_size for p in paths) / n / 1024:.0f} KiB each; resolution {res}"
    )

    load_before = os.getloadavg()
    naive = _timed(lambda: _naive(paths, workdir / "naive_png", res))
    _line("(a) naive PIL open->LANCZOS->PNG, 1 process", naive)
    bare = _timed(lambda: _bare(paths))
    _line("(c) bare JPEG decode, 1 process", bare)
    workers = inspect.signature(preprocess_to_h5).parameters["workers"].default
    out_h5 = workdir / f"r{res}.h5"
    provenance = {
        "source_sha256": "-",
        "config_hash": "-",
        "created_by": "benchmarks/preprocess.py",
    }
    stats: dict = {}

    def run_pipeline() -> int:
        stats.update(
            preprocess_to_h5(
                meta_csv,
                splits_csv,
                root,
                res,
                out_h5,
                workdir / f"r{res}.quarantine.csv",
                provenance=provenance,
                workers=workers,
            )
        )
        return int(stats["n_written"])

    pipeline = _timed(run_pipeline)
    _line(f"(b) preprocess_to_h5, {workers} workers", pipeline)
    print(f"    HDF5 size {out_h5.stat().st_size / 2**20:.1f} MiB ({stats['n_written']} images)")

    rng = np.random.default_rng(args.seed)
    batches = [rng.choice(n, size=min(BATCH, n), replace=False) for _ in range(args.read_batches)]
    few = batches[: max(1, len(batches) // 3)]  # JPEG reads are slow: fewer batches
    ds = H5Images(out_h5)
    ds.__getitems__([0])  # open the handle outside the timing, as a DataLoader worker would
    print(f"random batches of {BATCH}, 1 process:")
    h5_reads = _timed(
        lambda: _reads(batches, lambda i: [x for x, _ in ds.__getitems__(i.tolist())])
    )
    _line("    HDF5 (H5Images.__getitems__)", h5_reads)
    jpeg_reads = _timed(
        lambda: _reads(few, lambda i: [_jpeg_item(paths[k], res, False) for k in i])
    )
    _line("    JPEG tree, full decode + LANCZOS", jpeg_reads)
    draft_reads = _timed(
        lambda: _reads(few, lambda i: [_jpeg_item(paths[k], res, True) for k in i])
    )
    _line("    JPEG tree, DCT draft + LANCZOS (reference)", draft_reads)
    load_after = os.getloadavg()
    print(
        f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/"
        f"{load_before[2]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} "
        f"on {os.cpu_count()} CPUs (other load slows the 2-worker pipeline most)"
    )

    checks = {
        "b/a (pipeline / naive) >= 4": (pipeline.rate / naive.rate, 4.0),
        "b/c (pipeline / bare decode) >= 0.7": (pipeline.rate / bare.rate, 0.7),
        "HDF5 reads / JPEG reads >= 5": (h5_reads.rate / jpeg_reads.rate, 5.0),
    }
    for name, (value, target) in checks.items():
        print(f"{_verdict(value, target)}  {name}: {value:.2f}")
    timings = {
        "naive": naive,
        "pipeline": pipeline,
        "bare_decode": bare,
        "read_h5": h5_reads,
        "read_jpeg": jpeg_reads,
        "read_jpeg_draft": draft_reads,
    }
    write_json_atomic(
        workdir / "results.json",
        {
            "n_images": n,
            "resolution": res,
            "workers": workers,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "load_average": {"before": load_before, "after": load_after},
            "images_per_s": {k: t.rate for k, t in timings.items()},
            "cpu_ms_per_image": {k: t.cpu_ms for k, t in timings.items()},
            "checks": {
                k: {"value": v, "target": t, "pass": v >= t} for k, (v, t) in checks.items()
            },
            "preprocess_stats": stats,
        },
    )
    print(json.dumps({"results": str(workdir / "results.json")}))


if __name__ == "__main__":
    main()
