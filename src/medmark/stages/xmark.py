"""X-Mark stages: generator training, release, diagnostics (paper arXiv 2602.09284; docs/methods/xmark.md).

The generator trains on the owner's release split at the working resolution, conditioned on the
surrogate's EigenCAM maps. The release itself is :func:`medmark.stages.release.release_stage`
with :class:`medmark.methods.xmark.XMark` (which loads the generator and, for the "hard" poison
choice, ranks the target images with :func:`target_scores`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmark.data.datasets import WithSaliency, labeled_split
from medmark.data.h5 import H5Images, read_table
from medmark.evaluation import predict_dataset
from medmark.methods.xmark import save_generator, train_generator
from medmark.models import load_classifier
from medmark.runtime import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)

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
