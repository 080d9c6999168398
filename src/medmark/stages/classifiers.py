"""Surrogate and suspect training stages (docs/methods/verification.md, "The four suspect scenarios").

One recipe (``medmark.train.train_classifier``) trains every classifier; the scenario only
decides the training data:

| scenario  | training data                                                   |
|-----------|-----------------------------------------------------------------|
| Malicious | the protected release (owner watermark), release split          |
| Ind-W     | the same images watermarked by an independent generator (key)   |
| Ind-M     | the clean release-split images (never watermarked)              |
| Ind-D     | the patient-disjoint ``independent`` split, never watermarked   |
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medmark.data.datasets import labeled_split
from medmark.evaluation import classification_metrics, predict_dataset
from medmark.io import write_json_atomic
from medmark.models import build_classifier, save_classifier
from medmark.runtime import resolve_device, seed_everything, set_threads, stream_seed
from medmark.train import TrainConfig, train_classifier

log = logging.getLogger(__name__)

SCENARIO_SPLIT = {"Malicious": None, "Ind-W": None, "Ind-M": "release", "Ind-D": "independent"}


def train_and_save(
    *,
    train_h5: str | Path,
    train_split: str | None,
    test_h5: str | Path,
    arch: str,
    task: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    input_resolution: int,
    device: str,
    threads: int,
    out_model: str | Path,
    out_last: str | Path,
    out_history: str | Path,
    out_metrics: str | Path,
    meta: dict[str, Any],
    seed_stream: str | None = None,
) -> dict[str, Any]:
    """Train one classifier (resumable), evaluate it on the clean test split, save atomically.

    ``seed_stream`` names a role whose torch seed is :func:`medmark.runtime.stream_seed` of
    ``seed`` (the surrogate's), so it never trains the same network as a suspect of that seed.
    """
    set_threads(threads)
    torch_seed = seed if seed_stream is None else stream_seed(seed, seed_stream)
    seed_everything(torch_seed)
    dev = resolve_device(device)
    train_set = labeled_split(train_h5, task, train_split)
    model = build_classifier(arch, seed=torch_seed)
    cfg = TrainConfig.from_dict(train_cfg)
    log.info(
        "training %s on %s (%d images, split=%s) seed %d",
        arch,
        train_h5,
        len(train_set),
        train_split,
        torch_seed,
    )
    history = train_classifier(
        model,
        train_set,
        cfg,
        seed=torch_seed,
        device=dev,
        last_path=out_last,
        history_csv=out_history,
        input_resolution=input_resolution,
    )
    probs, labels = predict_dataset(
        model, labeled_split(test_h5, task, "test"), device=dev, input_resolution=input_resolution
    )
    metrics = {
        **classification_metrics(probs, labels),
        "arch": arch,
        "seed": seed,
        "seed_stream": seed_stream,
        "torch_seed": torch_seed,
        "input_resolution": input_resolution,
        "train_h5": str(train_h5),
        "train_split": train_split,
        "n_train": len(train_set),
        "train_config": train_cfg,
        "epoch_seconds": [h["seconds"] for h in history],
        **meta,
    }
    save_classifier(model, out_model, meta=metrics)
    write_json_atomic(out_metrics, metrics)
    log.info("test accuracy %.3f auroc %.3f", metrics["accuracy"], metrics["auroc"])
    return metrics
