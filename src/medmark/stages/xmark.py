"""X-Mark stages: generator training, release, diagnostics (paper arXiv 2602.09284; docs/methods/xmark.md).

The generator trains on the owner's release split at the working resolution, conditioned on the
surrogate's EigenCAM maps. The release stage applies it to the chosen target-class images at every
configured resolution, writes the owner's secret beside (never inside) the release, and measures
the release quality on the watermarked images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmark.data.datasets import WithSaliency, labeled_split
from medmark.data.h5 import H5Images, read_images, read_table
from medmark.evaluation import predict_dataset
from medmark.io import atomic_path
from medmark.methods.xmark import (
    load_generator,
    save_generator,
    train_generator,
    write_owner_dir,
    write_release,
)
from medmark.models import load_classifier
from medmark.quality import release_quality_blocks
from medmark.runtime import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)

QUALITY_BLOCK = 256  # watermarked images per block of the quality metrics (memory flat in N)
PREDICT_BLOCK = 128  # images per surrogate query (as medmark.train.predict_proba)


def generator_stage(
    *,
    prep_h5: str | Path,
    saliency_h5: str | Path,
    surrogate_path: str | Path,
    xmark_cfg: dict[str, Any],
    key: int,
    task: dict[str, Any],
    surrogate_resolution: int,
    device: str,
    threads: int,
    out_model: str | Path,
    out_loss: str | Path,
    last: str | Path,
    on_degenerate: str = "error",
) -> None:
    """Train the generator with key ``key`` (resumable) and save it atomically."""
    set_threads(threads)
    seed_everything(key)
    dev = resolve_device(device)
    data = WithSaliency(labeled_split(prep_h5, task, "release"), saliency_h5)
    log.info("generator key %d on %d release images of %s", key, len(data), prep_h5)
    surrogate = load_classifier(surrogate_path)
    check_surrogate(
        surrogate,
        prep_h5,
        task,
        surrogate_resolution,
        dev,
        where=str(surrogate_path),
        on_degenerate=on_degenerate,
    )
    generator = train_generator(
        data,
        surrogate,
        xmark_cfg,
        key=key,
        device=dev,
        last_path=last,
        loss_csv=out_loss,
        target_class=task["target_class"],
        surrogate_resolution=surrogate_resolution,
    )
    save_generator(generator, out_model, getattr(generator, "meta", {"key": key}))


def check_surrogate(
    surrogate: torch.nn.Module,
    prep_h5: str | Path,
    task: dict[str, Any],
    input_resolution: int,
    device: torch.device,
    where: str,
    on_degenerate: str = "error",
) -> dict[str, int]:
    """Refuse a degenerate surrogate: one that predicts a single class on the whole test split.

    Its EigenCAM maps and its diagnosis/silence terms would then carry no information about the
    task, and the release would be shaped by noise. ``on_degenerate="warn"`` (config
    ``surrogate.on_degenerate``, used only by the tiny smoke-test preset whose test split has 8
    images) logs the same message as a warning instead. Returns the predicted-class counts.
    """
    test = labeled_split(prep_h5, task, "test")
    probs, _ = predict_dataset(
        surrogate,
        test,
        device=device,
        batch_size=PREDICT_BLOCK,
        input_resolution=input_resolution,
    )
    pred = probs.argmax(axis=1)
    counts = {int(c): int((pred == c).sum()) for c in np.unique(pred)}
    if len(counts) < 2:
        msg = (
            f"{where}: degenerate surrogate: it predicts class {next(iter(counts))} for all "
            f"{len(pred)} test images of {prep_h5} (task {task['target_observation']}); train it "
            "longer (surrogate.train.epochs) or check the labels before watermarking"
        )
        if on_degenerate != "warn":
            raise ValueError(msg)
        log.warning("%s (surrogate.on_degenerate: warn)", msg)
    return counts


def target_scores(
    surrogate: torch.nn.Module,
    prep_h5: str | Path,
    task: dict[str, Any],
    input_resolution: int,
    device: torch.device,
) -> dict[str, float]:
    """The clean surrogate's ``P(y_t | x)`` for every target-class row of the release split
    (the poison choice ``hard`` marks the lowest ones first)."""
    data = labeled_split(prep_h5, task, "release")
    rows = data.images.rows[data.y_by_row[data.images.rows] == task["target_class"]]
    ids = read_table(prep_h5)["image_id"].to_numpy()[rows]
    if rows.size == 0:
        return {}
    probs, _ = predict_dataset(
        surrogate,
        H5Images(prep_h5, indices=rows),
        device=device,
        batch_size=PREDICT_BLOCK,
        input_resolution=input_resolution,
    )
    p = probs[:, task["target_class"]]
    return dict(zip(ids.tolist(), p.astype(float).tolist(), strict=True))


def release_stage(
    *,
    prep: dict[int, str],
    saliency: dict[int, str],
    generator_path: str | Path,
    metadata_csv: str | Path,
    release_dir: str | Path,
    owner_dir: str | Path,
    working_resolution: int,
    task: dict[str, Any],
    release_cfg: dict[str, Any],
    verify_cfg: dict[str, Any],
    decoys: dict[str, Any],
    key: int,
    device: str,
    threads: int,
    quality_csv: str | Path,
    batch_size: int = 64,
    surrogate_path: str | Path | None = None,
    surrogate_resolution: int | None = None,
) -> dict[str, Any]:
    """Release at every resolution, the owner's secret, and the quality of the watermarked images."""
    set_threads(threads)
    dev = resolve_device(device)
    generator = load_generator(generator_path).to(dev)
    scores = None
    if release_cfg["poison_choice"] == "hard":
        if surrogate_path is None or surrogate_resolution is None:
            raise ValueError("release.poison_choice 'hard' needs the surrogate")
        scores = target_scores(
            load_classifier(surrogate_path),
            prep[working_resolution],
            task,
            surrogate_resolution,
            dev,
        )
    infos = {}
    for res in sorted(prep):
        infos[res] = write_release(
            prep[res],
            saliency[res],
            release_dir,
            owner_dir=owner_dir,
            generator=generator,
            target_observation=task["target_observation"],
            uncertainty=task["uncertainty"],
            target_class=task["target_class"],
            poison_rate=release_cfg["poison_rate"],
            seed=release_cfg["seed"],
            batch_size=batch_size,
            device=dev,
            image_tree=bool(release_cfg["image_tree"]) and res == working_resolution,
            metadata_csv=metadata_csv,
            decoy_rate=float(decoys["rate"]) if generator.keyed else 0.0,
            key=key,
            poison_scores=scores,
        )
    poisoned = {tuple(i["poisoned_ids"]) for i in infos.values()}
    if len(poisoned) != 1:
        raise RuntimeError("the releases at different resolutions poisoned different images")
    owner = write_owner_dir(
        owner_dir,
        release_dir=release_dir,
        generator=generator,
        sources={res: (prep[res], saliency[res]) for res in prep},
        release_info=infos[working_resolution],
        key=key,
        target_class=task["target_class"],
        target_observation=task["target_observation"],
        uncertainty=task["uncertainty"],
        resolution=working_resolution,
        tau=verify_cfg["tau"],
        alpha=verify_cfg["alpha"],
        n_verify=verify_cfg["n_images"],
        verify_seed=verify_cfg["seed"],
        batch_size=batch_size,
        device=dev,
        generator_meta=getattr(generator, "meta", None),
        n_decoys=int(decoys["verify"]) if generator.keyed else 0,
        key_tau=float(verify_cfg["key_tau"]),
    )
    write_quality(prep, release_dir, owner["poisoned_ids"], quality_csv)
    return owner


def write_quality(
    prep: dict[int, str], release_dir: str | Path, poisoned_ids: list[str], out_csv: str | Path
) -> pd.DataFrame:
    """Quality of the watermarked images (clean prep vs release), one row per resolution."""
    rows = []
    for res, prep_h5 in sorted(prep.items()):
        rel_h5 = Path(release_dir) / f"r{res}.h5"
        src, rel = read_table(prep_h5), read_table(rel_h5)
        want = set(poisoned_ids)
        src_rows = src.loc[src["image_id"].isin(want), ["image_id", "row"]].sort_values("image_id")
        rel_rows = rel.loc[rel["image_id"].isin(want), ["image_id", "row"]].sort_values("image_id")
        if not np.array_equal(src_rows["image_id"].to_numpy(), rel_rows["image_id"].to_numpy()):
            raise RuntimeError(f"{rel_h5}: poisoned ids do not match {prep_h5}")
        a, b = src_rows["row"].to_numpy(), rel_rows["row"].to_numpy()
        q = release_quality_blocks(
            (
                read_images(prep_h5, a[i : i + QUALITY_BLOCK]),
                read_images(rel_h5, b[i : i + QUALITY_BLOCK]),
            )
            for i in range(0, len(a), QUALITY_BLOCK)
        )
        rows.append({"resolution": res, **q["summary"]})
    table = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def diagnostics_stage(
    *,
    owner_dir: str | Path,
    indep_owner_dirs: dict[str, str | Path],
    proxy_model: str | Path,
    reference_models: dict[str, str | Path],
    resolution: int,
    input_resolution: int,
    verify_cfg: dict[str, Any],
    device: str,
    threads: int,
    out_json: str | Path,
) -> dict[str, Any]:
    """Key orthogonality, clean references' and the release proxy's response (no suspects)."""
    from medmark.io import write_json_atomic
    from medmark.methods.xmark.diagnostics import key_orthogonality, model_response
    from medmark.verify import load_owner_verification

    set_threads(threads)
    dev = resolve_device(device)
    dirs = {"owner": Path(owner_dir), **{k: Path(v) for k, v in indep_owner_dirs.items()}}
    owners = {n: load_owner_verification(d, resolution=resolution) for n, d in dirs.items()}
    tests = {
        "input_resolution": input_resolution,
        "tau": float(verify_cfg["tau"]),
        "key_tau": float(verify_cfg["key_tau"]),
        "alpha": float(verify_cfg["alpha"]),
        "device": dev,
    }
    proxy = load_classifier(proxy_model)
    out = {
        "key_orthogonality": key_orthogonality(owners),
        "clean_references": {
            arch: model_response(load_classifier(p), owners["owner"], **tests)
            for arch, p in sorted(reference_models.items())
        },
        "release_proxy": {
            "model": str(proxy_model),
            "arch": proxy.arch,
            **model_response(proxy, owners["owner"], **tests),
        },
        "params": {
            **{k: v for k, v in tests.items() if k != "device"},
            "resolution": resolution,
            "device": str(dev),
        },
    }
    write_json_atomic(out_json, out)
    log.info("diagnostics: %s", out)
    return out
