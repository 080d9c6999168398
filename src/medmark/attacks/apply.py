"""Apply an ``{attack}`` wildcard to a suspect: the entry points the Snakemake stage calls (docs/methods/attacks.md).

* ``kind == "model"``: :func:`apply_model_attack` returns a repaired model (save it with
  ``medmark.models.save_classifier``; the verify rule then tests it like any suspect).
* ``kind == "query"``: :func:`apply_query_attack` wraps the suspect's black box so every query
  is transformed first.
* ``kind == "data"``: :func:`apply_data_attack` filters the suspect's training set with features
  of the suspect itself and retrains a fresh model of the same architecture on what is kept.

Hyper-parameters that the wildcard does not carry come from :class:`AttackConfig` (config
section ``attacks``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from medmark.attacks.filtering import (
    extract_features,
    spectral_keep_indices,
    spectral_signature_scores,
)
from medmark.attacks.query import BlackBox, TransformedBlackBox, build_query_transform
from medmark.attacks.repair import distill, fine_prune, finetune
from medmark.attacks.spec import (
    FAMILIES,
    AttackKind,
    AttackSpec,
    DistillSpec,
    FinetuneSpec,
    PruneSpec,
    SpectralFilterSpec,
    as_spec,
    attack_family,
    attack_kind,
    format_attack,
)
from medmark.io import write_json_atomic
from medmark.models import ARCHS, Classifier, build_classifier
from medmark.train import TrainConfig, train_classifier


@dataclass(frozen=True)
class AttackConfig:
    """Attack hyper-parameters not carried by the wildcard (config section ``attacks``).

    ``train`` is the suspects' training recipe: the repair attacks take its batch size, weight
    decay, workers and augmentation (their own epochs/lr below override), and the data-filtering
    attack retrains with it unchanged. ``student_arch: same`` distils into the suspect's arch.
    """

    seed: int = 0
    input_resolution: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune_epochs: int = 2  # used when the wildcard has no _ep{e}
    finetune_lr: float = 1e-4
    prune_data_frac: float = 0.1
    prune_epochs: int = 2
    prune_lr: float = 1e-4
    distill_data_frac: float = 1.0
    distill_epochs: int = 6
    distill_lr: float = 1e-3
    student_arch: str = "same"

    def __post_init__(self) -> None:
        if self.student_arch != "same" and self.student_arch not in ARCHS:
            raise ValueError(f"attacks.student_arch must be 'same' or one of {ARCHS}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackConfig:
        """Build from a config mapping; unknown keys are an error (no silent typos)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"attacks: unknown keys {unknown}; known: {sorted(fields)}")
        kwargs = dict(d)
        if "train" in kwargs:
            kwargs["train"] = TrainConfig.from_dict(kwargs["train"])
        return cls(**kwargs)


def _finetune(
    spec: FinetuneSpec,
    suspect: Classifier,
    clean: Dataset,
    cfg: AttackConfig,
    device: torch.device,
    work_dir: Path,
) -> nn.Module:
    return finetune(
        suspect,
        clean,
        spec.frac,
        spec.epochs if spec.epochs is not None else cfg.finetune_epochs,
        cfg.finetune_lr,
        cfg.seed,
        device,
        work_dir / "last.pt",
        train_cfg=cfg.train,
        input_resolution=cfg.input_resolution,
    )


def _prune(
    spec: PruneSpec,
    suspect: Classifier,
    clean: Dataset,
    cfg: AttackConfig,
    device: torch.device,
    work_dir: Path,
) -> nn.Module:
    model, keep, activity = fine_prune(
        suspect,
        clean,
        spec.frac,
        data_frac=cfg.prune_data_frac,
        epochs=cfg.prune_epochs,
        lr=cfg.prune_lr,
        seed=cfg.seed,
        device=device,
        last_path=work_dir / "last.pt",
        train_cfg=cfg.train,
        input_resolution=cfg.input_resolution,
    )
    write_json_atomic(
        work_dir / "pruning.json",
        {
            "attack": format_attack(spec),
            "channels": int(keep.numel()),
            "pruned": torch.nonzero(~keep).flatten().tolist(),
            "activity": activity.tolist(),
            "data_frac": cfg.prune_data_frac,
            "seed": cfg.seed,
        },
    )
    return model


def _distill(
    spec: DistillSpec,
    suspect: Classifier,
    clean: Dataset,
    cfg: AttackConfig,
    device: torch.device,
    work_dir: Path,
) -> nn.Module:
    arch = suspect.arch if cfg.student_arch == "same" else cfg.student_arch
    return distill(
        suspect,
        clean,
        arch,
        spec.temperature,
        cfg.distill_epochs,
        cfg.distill_lr,
        cfg.seed,
        device,
        work_dir / "last.pt",
        data_frac=cfg.distill_data_frac,
        train_cfg=cfg.train,
        input_resolution=cfg.input_resolution,
    )


@dataclass(frozen=True)
class AttackEntry:
    """One attack family: its kind and the function applying a parsed spec of it."""

    kind: AttackKind
    handler: Callable[..., Any] | None
    description: str


#: family name (``attack_family(spec)``) -> entry
REGISTRY: dict[str, AttackEntry] = {
    "none": AttackEntry("none", None, "no attack"),
    "finetune": AttackEntry("model", _finetune, "fine-tune on a clean fraction"),
    "prune": AttackEntry("model", _prune, "fine-pruning of feature-layer channels"),
    "distill": AttackEntry("model", _distill, "distil a fresh student from soft labels"),
    "down": AttackEntry("query", build_query_transform, "query down-scaling"),
    "up": AttackEntry("query", build_query_transform, "query up-scaling"),
    "rescale": AttackEntry("query", build_query_transform, "query down- and up-scaling"),
    "jpeg": AttackEntry("query", build_query_transform, "query JPEG compression"),
    "blur": AttackEntry("query", build_query_transform, "query Gaussian blur"),
    "median": AttackEntry("query", build_query_transform, "query median filter"),
    "filter_spectral": AttackEntry("data", None, "spectral-signature dataset filtering"),
}
assert tuple(REGISTRY) == FAMILIES, "REGISTRY and the grammar must list the same families"


def _require(spec: AttackSpec, kinds: tuple[AttackKind, ...], fn: str) -> str:
    kind = attack_kind(spec)
    if kind not in kinds:
        raise ValueError(f"{fn}: {format_attack(spec)!r} is a {kind!r} attack, expected {kinds}")
    return attack_family(spec)


def apply_model_attack(
    spec: AttackSpec | str,
    suspect: Classifier,
    clean_dataset: Dataset,
    cfg: AttackConfig,
    device: torch.device,
    work_dir: str | Path,
) -> nn.Module:
    """Repair ``suspect`` with a model attack (``none`` returns it unchanged).

    ``clean_dataset`` is the attacker's clean data, items ``(x (1,H,W) in [0,1], int y)``;
    ``work_dir`` holds the resumable ``last.pt`` (and ``pruning.json`` for ``prune_*``).
    """
    spec = as_spec(spec)
    family = _require(spec, ("model", "none"), "apply_model_attack")
    if family == "none":
        return suspect
    handler = REGISTRY[family].handler
    assert handler is not None
    return handler(spec, suspect, clean_dataset, cfg, device, Path(work_dir))


def apply_query_attack(spec: AttackSpec | str, blackbox: BlackBox) -> BlackBox:
    """Wrap ``blackbox`` so every query is transformed first (``none`` returns it unchanged)."""
    spec = as_spec(spec)
    family = _require(spec, ("query", "none"), "apply_query_attack")
    if family == "none":
        return blackbox
    return TransformedBlackBox(blackbox, build_query_transform(spec))


def apply_data_attack(
    spec: AttackSpec | str,
    suspect: Classifier,
    train_dataset: Dataset,
    labels: np.ndarray,
    cfg: AttackConfig,
    device: torch.device,
    work_dir: str | Path,
) -> tuple[Classifier, np.ndarray]:
    """Spectral-signature filtering of the suspect's own training set, then retraining.

    ``suspect`` must have been trained on ``train_dataset`` (Tran et al. take features from a
    model trained on the possibly poisoned data); ``labels`` are its training labels. A fresh
    model of the suspect's arch (init seed ``cfg.seed``) is trained with ``cfg.train`` on the
    kept items. Writes ``work_dir/filter.json`` (removed indices, per-class counts) and the
    resumable ``work_dir/last.pt``. Returns ``(model, kept indices)``.
    """
    spec = as_spec(spec)
    _require(spec, ("data",), "apply_data_attack")
    assert isinstance(spec, SpectralFilterSpec)
    work_dir = Path(work_dir)
    labels = np.asarray(labels)
    if labels.shape != (len(train_dataset),):  # type: ignore[arg-type]
        raise ValueError(f"labels has shape {labels.shape}, dataset has {len(train_dataset)} items")  # type: ignore[arg-type]
    feats = extract_features(
        suspect, train_dataset, device=device, input_resolution=cfg.input_resolution
    )
    scores = spectral_signature_scores(feats, labels)
    kept = spectral_keep_indices(scores, labels, spec.eps)
    removed = np.setdiff1d(np.arange(labels.shape[0]), kept)
    write_json_atomic(
        work_dir / "filter.json",
        {
            "attack": format_attack(spec),
            "n_total": int(labels.shape[0]),
            "n_kept": int(kept.size),
            "removed": removed.tolist(),
            "removed_per_class": {
                str(c): int((labels[removed] == c).sum()) for c in np.unique(labels)
            },
            "seed": cfg.seed,
        },
    )
    model = build_classifier(suspect.arch, num_classes=suspect.num_classes, seed=cfg.seed)
    train_classifier(
        model,
        Subset(train_dataset, kept.tolist()),
        cfg.train,
        seed=cfg.seed,
        device=device,
        last_path=work_dir / "last.pt",
        input_resolution=cfg.input_resolution,
    )
    return model.eval(), kept
