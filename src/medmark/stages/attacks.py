"""Model-repair attack stage (docs/methods/attacks.md; BackdoorBox taxonomy "model repair").

The attacker holds the suspect and some clean data (config ``attacks.clean_split``, never the
verification split); the repaired model is then verified like any suspect.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medmark.attacks import AttackConfig, apply_model_attack
from medmark.attacks.spec import parse_attack
from medmark.data.datasets import labeled_split
from medmark.evaluation import classification_metrics, predict_dataset
from medmark.io import write_json_atomic
from medmark.models import load_classifier, save_classifier
from medmark.runtime import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)


def attack_model_stage(
    *,
    suspect_path: str | Path,
    data_h5: str | Path,
    clean_split: str,
    task: dict[str, Any],
    attack: str,
    attack_cfg: dict[str, Any],
    device: str,
    threads: int,
    out_model: str | Path,
    out_metrics: str | Path,
) -> dict[str, Any]:
    """Repair one suspect with ``attack`` and save the result with its clean-test metrics."""
    set_threads(threads)
    cfg = AttackConfig.from_dict(attack_cfg)
    seed_everything(cfg.seed)
    dev = resolve_device(device)
    suspect = load_classifier(suspect_path)
    clean = labeled_split(data_h5, task, clean_split)
    work_dir = Path(out_model).parent
    model = apply_model_attack(parse_attack(attack), suspect, clean, cfg, dev, work_dir)
    probs, labels = predict_dataset(
        model,
        labeled_split(data_h5, task, "test"),
        device=dev,
        input_resolution=cfg.input_resolution,
    )
    metrics = {
        **classification_metrics(probs, labels),
        "attack": attack,
        "suspect": str(suspect_path),
        "clean_split": clean_split,
        "n_clean": len(clean),
        "attack_config": attack_cfg,
    }
    save_classifier(model, out_model, meta=metrics)
    write_json_atomic(out_metrics, metrics)
    log.info("%s: test accuracy %.3f auroc %.3f", attack, metrics["accuracy"], metrics["auroc"])
    return metrics
