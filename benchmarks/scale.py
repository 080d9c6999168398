"""Benchmark: every stage's wall time and peak memory as the dataset grows (not a test).

For each N of ``--sizes`` (frontal images) this runs the pipeline's stages on a synthetic
``bench``-preset CheXpert tree (960-1024 px JPEGs, medmark.data.synthetic) at 224 px, each stage
as its own process under ``/usr/bin/time -v`` (wall time, peak RSS), in pipeline order:

    ingest      ingest (validates every JPEG) + patient splits      (rules ingest, splits)
    preprocess  JPEG -> prep/r224.h5, 2 workers                     (rule preprocess)
    saliency    batched EigenCAM of every image, ResNet-18           (rule saliency)
    generator   one X-Mark generator epoch, capped at --gen-steps    (rule xmark_generator)
    release     watermarked release + owner secret + quality         (rule xmark_release)
    suspect     one ResNet-18 epoch on the release, capped at
                --suspect-steps, + its clean test-split evaluation  (rule suspect_watermarked)
    verify      black-box verification of that suspect               (rule verify)

Training epochs are capped (a random ``steps x batch`` subset of the split, drawn after the
whole split is indexed) so that the benchmark fits its budget; their per-image time is per
trained image, and their memory still sees the full split's index. The surrogate is a seeded,
untrained ResNet-18 (a stage's cost does not depend on its weights); the config is the
embedded default's (config/config.yaml with the schema's defaults) at 224 px.

Printed: the table (wall s, peak RSS MB, ms per image of N), the peak-RSS ratio largest N /
smallest N per stage (target <= 1.2: every stage streams) and the per-image time ratio (flat
= 1); then, in-process at the largest N, the DataLoader's images/s with 0, 1 and 2 workers
beside the training steps' images/s (a loader slower than the step would starve a GPU), and the
saliency stage's rate beside the surrogate's bare forward pass. Peak RSS is that of the
largest single process of a stage (``ru_maxrss``; worker processes are counted separately,
not summed). Results also go to ``<workdir>/results.json``.

Usage:

    nice -n 19 .venv/bin/python benchmarks/scale.py --sizes 1000,4000,12000

``--sizes`` is a comma-separated list of dataset sizes (frontal images); the synthetic tree is
generated once for the largest (reused by later runs) and each smaller N is a view of its
first images. Budget: per size a fixed cost (process start-up, the capped epochs) plus a
per-image cost dominated by saliency (one ResNet-18 forward pass at 224 px per image, about
50 ms on 2 idle cores) and the verifier's and suspect's test-split passes; pick the sizes to fit.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RES = 224
STAGES = ("ingest", "preprocess", "saliency", "generator", "release", "suspect", "verify")
DATASET_DIR = "CheXpert-v1.0-small"


# --------------------------------------------------------------------------- configuration


def pipeline_config() -> dict[str, Any]:
    """The embedded default config (schema defaults filled in), moved to 224 px."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, str(REPO / "config" / "schema.yaml"))
    cfg["preprocess"]["resolutions"] = [RES]
    cfg["surrogate"]["resolution"] = RES
    cfg["xmark"]["resolution"] = RES
    cfg["suspects"]["resolution"] = RES
    return cfg


# --------------------------------------------------------------------------- data


def _frontal_count(csv: Path) -> pd.Series:
    """Cumulative number of frontal images per row of a CheXpert CSV."""
    table = pd.read_csv(csv, usecols=["Frontal/Lateral"])
    return (table["Frontal/Lateral"] == "Frontal").cumsum()


def make_tree(workdir: Path, n_max: int, workers: int) -> Path:
    """A synthetic bench tree with at least ``n_max`` frontal images in train.csv (reused)."""
    from medmark.data.synthetic import generate_dataset, read_stamp

    root = workdir / "synthetic"
    csv = root / DATASET_DIR / "train.csv"
    n_patients = math.ceil(n_max / 1.1)
    while read_stamp(root) is None or int(_frontal_count(csv).iloc[-1]) < n_max:
        t0 = time.perf_counter()
        generate_dataset(root, preset="bench", seed=0, n_patients=n_patients, workers=workers)
        have = int(_frontal_count(csv).iloc[-1])
        print(f"generated {have} frontal train images in {time.perf_counter() - t0:.0f} s")
        n_patients = math.ceil(n_patients * 1.15 * n_max / max(have, 1))
    return root


def make_view(tree: Path, n: int, out: Path) -> Path:
    """``out`` = a CheXpert root whose train.csv lists the first rows of ``tree``'s up to ``n``
    frontal images; the image folder is a symlink to ``tree``'s."""
    src = tree / DATASET_DIR
    table = pd.read_csv(src / "train.csv")
    rows = int(np.searchsorted(_frontal_count(src / "train.csv").to_numpy(), n) + 1)
    ds = out / DATASET_DIR
    ds.mkdir(parents=True, exist_ok=True)
    table.iloc[:rows].to_csv(ds / "train.csv", index=False)
    link = ds / "train"
    if not link.exists():
        link.symlink_to((src / "train").resolve(), target_is_directory=True)
    return out


# --------------------------------------------------------------------------- stages (child)


def _subset(ds: torch.utils.data.Dataset, n: int, seed: int) -> torch.utils.data.Dataset:
    """A seeded random subset of ``n`` items (all when ``n >= len``)."""
    total = len(ds)  # type: ignore[arg-type]
    if n >= total:
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return torch.utils.data.Subset(ds, idx.tolist())


def clear_outputs(d: Path) -> None:
    """Remove a previous run's stage outputs under ``d`` (the tree view stays): a resumable
    checkpoint left there (the generator's) would skip the epoch the benchmark times."""
    if not d.exists():
        return
    for p in d.iterdir():
        if p.name == "tree":
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def run_stage(stage: str, d: Path, args: argparse.Namespace) -> None:
    """One stage in this process (the parent times it with /usr/bin/time -v)."""
    from medmark.runtime import set_threads

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    set_threads(args.threads)
    cfg = pipeline_config()
    task, cpu = cfg["task"], torch.device("cpu")
    h5, sal, sur = d / f"r{RES}.h5", d / f"saliency_r{RES}.h5", Path(args.workdir) / "surrogate.pt"
    release_dir, owner_dir = d / "release", d / "owner"
    if stage == "ingest":
        from medmark.data.ingest import ingest, read_metadata
        from medmark.data.splits import patient_splits

        ingest(
            "chexpert",
            {"dir": str(d / "tree")},
            d / "work",
            d / "metadata.csv",
            d / "boxes.csv",
            d / "ingest.json",
            d / "quarantine.csv",
            "error",
            workers=args.threads,
        )
        meta = read_metadata(d / "metadata.csv")
        splits = patient_splits(
            meta,
            dict(cfg["data"]["splits"]),
            cfg["data"]["split_seed"],
            stratify_on=task["target_observation"],
        )
        splits.to_csv(d / "splits.csv", index=False)
    elif stage == "preprocess":
        from medmark.data.preprocess import preprocess_to_h5
        from medmark.io import sha256_file

        root = json.loads((d / "ingest.json").read_text())["root"]
        preprocess_to_h5(
            d / "metadata.csv",
            d / "splits.csv",
            root,
            RES,
            h5,
            None,
            on_bad_image="error",
            provenance={
                "source_sha256": sha256_file(d / "ingest.json"),
                "config_hash": "benchmarks/scale.py",
                "created_by": "benchmarks/scale.py",
            },
            compression_level=cfg["preprocess"]["compression_level"],
            workers=args.threads,
        )
    elif stage == "saliency":
        from medmark.models import load_classifier
        from medmark.saliency import write_saliency_h5

        write_saliency_h5(
            h5,
            load_classifier(sur),
            sal,
            target_layer=cfg["saliency"]["target_layer"],
            batch_size=cfg["saliency"]["batch_size"],
            device=cpu,
            provenance={},
        )
    elif stage == "generator":
        from medmark.data.datasets import WithSaliency, labeled_split
        from medmark.methods.xmark import save_generator, train_generator
        from medmark.models import load_classifier

        xc = cfg["xmark"] | {"epochs": 1}
        data = WithSaliency(labeled_split(h5, task, "release"), sal)
        data = _subset(data, args.gen_steps * int(xc["batch_size"]), seed=1)
        gen = train_generator(
            data,
            load_classifier(sur),
            xc,
            key=int(xc["owner_key"]),
            device=cpu,
            last_path=d / "generator_last.pt",
            loss_csv=d / "generator_loss.csv",
            target_class=task["target_class"],
            surrogate_resolution=RES,
        )
        save_generator(gen, d / "generator.pt", getattr(gen, "meta", None))
    elif stage == "release":
        from medmark.stages.release import release_stage

        release_stage(
            method="xmark",
            method_cfg={
                "decoys": cfg["xmark"]["decoys"],
                "poison_choice": cfg["release"]["poison_choice"],
                "surrogate_resolution": RES,
            },
            key=int(cfg["xmark"]["owner_key"]),
            inputs={"generator": str(d / "generator.pt"), "surrogate": str(sur)},
            prep={RES: str(h5)},
            saliency={RES: str(sal)},
            metadata_csv=d / "metadata.csv",
            release_dir=release_dir,
            owner_dir=owner_dir,
            working_resolution=RES,
            task=task,
            release_cfg=cfg["release"],
            verify_cfg={k: cfg["verify"][k] for k in ("n_images", "seed")},
            device="cpu",
            threads=args.threads,
            quality_csv=d / "quality.csv",
        )
    elif stage == "suspect":
        from medmark.data.datasets import labeled_split
        from medmark.evaluation import classification_metrics, predict_dataset
        from medmark.models import build_classifier, save_classifier
        from medmark.train import TrainConfig, train_classifier

        train_cfg = TrainConfig.from_dict(cfg["suspects"]["train"] | {"epochs": 1})
        data = labeled_split(release_dir / f"r{RES}.h5", task, None)
        model = build_classifier("resnet18", seed=0)
        train_classifier(
            model,
            _subset(data, args.suspect_steps * train_cfg.batch_size, seed=2),
            train_cfg,
            seed=0,
            device=cpu,
            last_path=d / "suspect_last.pt",
            input_resolution=RES,
        )
        probs, labels = predict_dataset(
            model, labeled_split(h5, task, "test"), device=cpu, input_resolution=RES
        )
        save_classifier(model, d / "suspect.pt", meta=classification_metrics(probs, labels))
    elif stage == "verify":
        from medmark.stages.verification import run_verification, suspect_blackbox

        run_verification(
            blackbox=suspect_blackbox(d / "suspect.pt", device="cpu", input_resolution=RES),
            owner_json=owner_dir / "owner.json",
            verification_h5=owner_dir / f"verification_r{RES}.h5",
            verify_cfg=cfg["verify"],
            labels={"benchmark": "scale"},
            out_summary=d / "verify_summary.json",
            out_per_image=d / "verify_per_image.csv",
            threads=args.threads,
        )
    else:
        raise ValueError(f"unknown stage {stage!r}")


# --------------------------------------------------------------------------- timing (parent)

_TIME_FIELDS = {
    "wall": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)"),
    "rss_kb": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
}


def _seconds(clock: str) -> float:
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def timed_stage(stage: str, d: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run one stage as ``/usr/bin/time -v python benchmarks/scale.py --stage ...``."""
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        __file__,
        "--stage",
        stage,
        "--stage-dir",
        str(d),
        "--workdir",
        args.workdir,
        "--threads",
        str(args.threads),
        "--gen-steps",
        str(args.gen_steps),
        "--suspect-steps",
        str(args.suspect_steps),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (d / f"{stage}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (rc {proc.returncode}); see {d / stage}.log")
    found = {k: rx.search(proc.stderr) for k, rx in _TIME_FIELDS.items()}
    if not all(found.values()):
        raise RuntimeError(f"no /usr/bin/time -v output for {stage}; see {d / stage}.log")
    return {
        "wall_s": _seconds(found["wall"].group(1)),  # type: ignore[union-attr]
        "rss_mb": int(found["rss_kb"].group(1)) / 1024,  # type: ignore[union-attr]
    }


# --------------------------------------------------------------------------- in-process rates


def _rate(n: int, fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def loader_vs_training(d: Path, args: argparse.Namespace) -> dict[str, float]:
    """DataLoader images/s with 0/1/2 workers vs training steps' images/s (ResNet-18 suspect
    step and X-Mark generator step at 224 px, batch sizes of the config)."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from medmark.data.datasets import WithSaliency, labeled_split
    from medmark.methods.xmark.config import resolve_xmark
    from medmark.methods.xmark.generator import GeneratorConfig, build_generator
    from medmark.methods.xmark.losses import XMarkLoss
    from medmark.models import build_classifier, load_classifier

    torch.set_num_threads(args.threads)
    cfg = pipeline_config()
    task, bs = cfg["task"], int(cfg["suspects"]["train"]["batch_size"])
    h5, sal = d / f"r{RES}.h5", d / f"saliency_r{RES}.h5"
    out: dict[str, float] = {}
    pairs = labeled_split(h5, task, "release")
    triples = WithSaliency(labeled_split(h5, task, "release"), sal)
    n_batches = 8
    for ds in (pairs, triples):  # warm the page cache: every row below is timed from memory
        list(DataLoader(_subset(ds, n_batches * bs, seed=3), batch_size=bs))
    for workers in (0, 1, 2):
        for name, ds in (("pairs", pairs), ("triples", triples)):
            loader = DataLoader(
                _subset(ds, n_batches * bs, seed=3),
                batch_size=bs,
                shuffle=True,
                num_workers=workers,
            )
            out[f"loader_{name}_w{workers}"] = _rate(n_batches * bs, lambda it=loader: list(it))

    model = build_classifier("resnet18", seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(bs, 1, RES, RES), torch.arange(bs) % 2

    def steps(k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    steps(1)
    out["train_resnet18"] = _rate(2 * bs, lambda: steps(2))

    xc = resolve_xmark(cfg["xmark"])
    gbs = 8  # images/s per step; the config's batch of 32 takes minutes per step on a CPU
    gen = build_generator(GeneratorConfig.from_xmark(xc, 1), seed=1).train()
    surrogate = load_classifier(Path(args.workdir) / "surrogate.pt").eval()
    for p in surrogate.parameters():
        p.requires_grad_(False)
    objective = XMarkLoss(surrogate, xc, target_class=1, surrogate_resolution=RES)
    gopt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    gx, gs, gy = torch.rand(gbs, 1, RES, RES), torch.rand(gbs, 1, RES, RES), torch.arange(gbs) % 2
    sg = torch.Generator().manual_seed(0)

    def gsteps(k: int) -> None:
        for _ in range(k):
            x_wm, delta = gen(gx, gs)
            full = gen.epsilon * gen.mask(gs) * gen.carrier(RES, RES)
            terms = objective(gx, x_wm, delta, gy, sg, full=full)
            gopt.zero_grad(set_to_none=True)
            terms["total"].backward()
            gopt.step()

    gsteps(1)
    out["train_generator"] = _rate(gbs, lambda: gsteps(1))
    return out


def forward_rate(workdir: Path, threads: int, batch: int, n_batches: int = 3) -> float:
    """Images/s of the surrogate's bare forward pass (no_grad) at 224 px, saliency's batch."""
    from medmark.models import load_classifier

    torch.set_num_threads(threads)
    model = load_classifier(workdir / "surrogate.pt").eval()
    x = torch.rand(batch, 1, RES, RES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)

        def run() -> None:
            for _ in range(n_batches):
                model(x)

        return _rate(n_batches * batch, run)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        default="1000,4000,12000",
        help="comma-separated dataset sizes N (frontal images), smallest first",
    )
    ap.add_argument("--workdir", default="benchmarks/out/scale")
    ap.add_argument("--threads", type=int, default=2, help="torch threads / workers per stage")
    ap.add_argument("--gen-steps", type=int, default=3, help="generator epoch cap (batches)")
    ap.add_argument("--suspect-steps", type=int, default=4, help="suspect epoch cap (batches)")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--stage-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        run_stage(args.stage, Path(args.stage_dir), args)
        return

    from medmark.models import build_classifier, save_classifier

    sizes = sorted({int(s) for s in args.sizes.split(",")})
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(
        f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"sizes {sizes}; {RES} px; threads {args.threads}"
    )
    tree = make_tree(work, sizes[-1], args.threads)
    save_classifier(build_classifier("resnet18", seed=0), work / "surrogate.pt", meta={})
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        d = work / f"n{n}"
        clear_outputs(d)
        make_view(tree, n, d / "tree")
        results[n] = {}
        for stage in STAGES:
            results[n][stage] = timed_stage(stage, d, args)
            r = results[n][stage]
            print(f"  N={n:6d} {stage:10s} {r['wall_s']:7.1f} s {r['rss_mb']:7.0f} MB", flush=True)
    n_lo, n_hi = sizes[0], sizes[-1]
    print(f"\n{'stage':10s}" + "".join(f" | N={n}: s, MB, ms/img" for n in sizes))
    for stage in STAGES:
        cells = "".join(
            f" | {results[n][stage]['wall_s']:7.1f} {results[n][stage]['rss_mb']:6.0f} "
            f"{1e3 * results[n][stage]['wall_s'] / n:6.1f}"
            for n in sizes
        )
        print(f"{stage:10s}{cells}")
    print(f"\nratios N={n_hi} / N={n_lo} (size ratio {n_hi / n_lo:.1f}):")
    ratios = {}
    for stage in STAGES:
        lo, hi = results[n_lo][stage], results[n_hi][stage]
        rss = hi["rss_mb"] / lo["rss_mb"]
        per_img = (hi["wall_s"] / n_hi) / (lo["wall_s"] / n_lo)
        ratios[stage] = {"peak_rss": rss, "per_image_time": per_img}
        flag = "ok" if rss <= 1.2 else "GROWS"
        print(f"  {stage:10s} peak RSS {rss:5.2f} ({flag})   time per image {per_img:5.2f}")
    d_hi = work / f"n{n_hi}"
    rates = loader_vs_training(d_hi, args)
    cfg = pipeline_config()
    fwd = forward_rate(work, args.threads, int(cfg["saliency"]["batch_size"]))
    found = re.search(
        r"saliency: (\d+) maps written .* \(([\d.]+) images/s\)",
        (d_hi / "saliency.log").read_text(),
    )
    if found is None:
        raise RuntimeError(f"no rate in {d_hi / 'saliency.log'}")
    n_img, sal_rate = int(found.group(1)), float(found.group(2))
    print(f"\nloader vs training at {RES} px (N={n_hi}, images/s):")
    for name in ("pairs", "triples"):
        cells = "  ".join(f"{w} workers {rates[f'loader_{name}_w{w}']:7.1f}" for w in (0, 1, 2))
        print(f"  loader {name:8s}: {cells}")
    print(f"  training step: ResNet-18 suspect {rates['train_resnet18']:6.1f}   ", end="")
    print(f"X-Mark generator {rates['train_generator']:6.1f}")
    print(
        f"saliency (write_saliency_h5: read, EigenCAM, write; {n_img} images) {sal_rate:.1f} "
        f"images/s vs the bare forward pass {fwd:.1f} images/s: ratio {sal_rate / fwd:.2f} "
        "(target >= 0.9)"
    )
    total = time.perf_counter() - t_start
    print(f"total {total / 60:.1f} min")
    out = {
        "sizes": sizes,
        "results": {str(k): v for k, v in results.items()},
        "ratios": ratios,
        "rates": rates,
        "forward_rate": fwd,
        "saliency_stage_rate": sal_rate,
        "total_s": total,
        "args": vars(args),
        "torch": torch.__version__,
    }
    (work / "results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
