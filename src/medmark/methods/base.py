"""The interface every dataset-watermarking method implements (docs/methods/interface.md).

A method is what the owner runs before release (Li et al., "Black-box Dataset Ownership
Verification via Backdoor Watermarking", TIFS 2023, §3: *dataset watermarking*, then
*ownership verification*). Shaped after BackdoorBox's one-attack-per-file layout (a shared base,
each attack a subclass), but for a *release*, not a training run:

- :meth:`WatermarkMethod.fit` learns the method's secret from the owner's release split (a
  generator for X-Mark and SSCL-BW; a hardening surrogate for Label-Consistent; nothing for a
  fixed keyed pattern such as BadNets or Blended);
- :meth:`WatermarkMethod.select` chooses the release rows to mark (and, for poison-label
  methods, their new task labels; extra named groups such as X-Mark's decoys or WaNet's noise
  samples);
- :meth:`WatermarkMethod.mark` marks a batch of uint8 images (any resolution);
- :attr:`WatermarkMethod.label_mode` says whether labels change (``"clean"`` or ``"poison"``);
- :attr:`WatermarkMethod.verification` says which test applies (``"targeted"``: the paired
  margin test on ``P(y_t)``; ``"untargeted"``: UBW's dispersibility test on ``P(y_true)``);
- :meth:`WatermarkMethod.save_secret` writes what goes in the owner's secret (never in the
  release) and returns what ``owner.json`` records about it.

:mod:`medmark.methods.release` writes the release and the owner directory for any method; the
names the workflow knows are in :mod:`medmark.methods.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

#: The :meth:`WatermarkMethod.mark` group of the owner's verification queries (the trigger as a
#: suspect would meet it; e.g. Label-Consistent's queries carry no adversarial hardening).
VERIFY_GROUP = "verification"

LabelMode = Literal["clean", "poison"]
VerificationTest = Literal["targeted", "untargeted"]


@dataclass(frozen=True)
class Group:
    """Rows marked with one call pattern: local row indices, optional per-row variant keys
    (X-Mark's decoy carriers; ``None`` = the method's own mark) and optional new task labels."""

    rows: np.ndarray
    keys: list[int] | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, dtype=np.int64)
        object.__setattr__(self, "rows", rows)
        if self.keys is not None and len(self.keys) != len(rows):
            raise ValueError(f"{len(self.keys)} keys for {len(rows)} rows")
        if self.labels is not None:
            lab = np.asarray(self.labels, dtype=np.int64)
            if lab.shape != rows.shape:
                raise ValueError(f"labels {lab.shape} for rows {rows.shape}")
            object.__setattr__(self, "labels", lab)


@dataclass(frozen=True)
class Selection:
    """What the release changes: ``groups["poisoned"]`` is the watermark proper; other groups
    (decoys, noise samples) are marked in the order given, after it."""

    groups: dict[str, Group] = field(default_factory=dict)

    @property
    def poisoned(self) -> Group:
        return self.groups["poisoned"]


def poison_budget(n_release: int, n_target: int, poison_rate: float) -> dict[str, Any]:
    """How many release rows to mark: requested ``max(1, round(rate * N))``, capped by the
    candidates (``n_target``: target-class rows for clean-label methods, eligible rows else)."""
    if not 0.0 < poison_rate <= 1.0:
        raise ValueError(f"poison_rate must be in (0, 1], got {poison_rate}")
    requested = max(1, round(poison_rate * n_release)) if n_release > 0 else 0
    chosen = min(requested, n_target)
    return {
        "poison_rate": float(poison_rate),
        "n_release": int(n_release),
        "n_target_class": int(n_target),
        "requested": int(requested),
        "chosen": int(chosen),
        "capped": bool(chosen < requested),
        "effective_rate": chosen / n_release if n_release else 0.0,
    }


def choose_rows(
    candidates: np.ndarray,
    n_total: int,
    poison_rate: float,
    seed: int,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted ``min(max(1, round(rate * n_total)), len(candidates))`` of ``candidates``: a seeded
    choice without replacement, or (``scores``, one per candidate) the lowest scores first with
    ties broken by a seeded permutation."""
    cand = np.asarray(candidates, dtype=np.int64)
    k = poison_budget(n_total, len(cand), poison_rate)["chosen"]
    rng = np.random.default_rng(seed)
    if scores is None:
        return np.sort(rng.choice(cand, size=k, replace=False)).astype(np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    order = rng.permutation(len(cand))
    ranked = cand[order][np.argsort(sc[order], kind="stable")]
    return np.sort(ranked[:k]).astype(np.int64)


def checked_settings(
    name: str, settings: tuple[str, ...], cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """A copy of a method's config section, refused when it lacks one of ``settings``."""
    missing = [k for k in settings if k not in cfg]
    if missing:
        raise ValueError(
            f"{name}: config section lacks {missing} (the workflow fills them from "
            "config/schema.yaml; library callers pass them)"
        )
    return dict(cfg)


class WatermarkMethod(ABC):
    """A dataset watermark: keyed, fitted on the owner's data, applied to chosen release rows.

    Subclasses set the class attributes and implement :meth:`mark` and :meth:`save_secret`;
    the defaults of :meth:`fit` (nothing to learn) and :meth:`select` (clean-label: target rows;
    poison-label: non-target rows relabelled to the target) fit most backdoor watermarks.
    ``cfg`` is the method's config section (schema defaults applied by the workflow).
    """

    name: ClassVar[str]
    label_mode: ClassVar[LabelMode]
    verification: ClassVar[VerificationTest] = "targeted"
    needs_saliency: ClassVar[bool] = False
    #: The paper the method and its settings come from (shown in the report and README).
    citation: ClassVar[str]

    #: Keys the method's config section must hold (defaults live in config/schema.yaml only).
    settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, key: int, target_class: int, cfg: Mapping[str, Any]) -> None:
        self.key = int(key)
        self.target_class = int(target_class)
        self.cfg = checked_settings(self.name, self.settings, cfg)

    # ---- learning the secret ---------------------------------------------------------------
    @classmethod
    def for_release(
        cls,
        key: int,
        target_class: int,
        cfg: Mapping[str, Any],
        *,
        task: Mapping[str, Any],
        inputs: Mapping[str, Any],
        device: Any,
    ) -> WatermarkMethod:
        """The fitted method the release stage uses: built from ``key`` and ``cfg``, then
        :meth:`fit` on the owner's release split of ``inputs["prep_working"]`` (the prep HDF5 at
        the working resolution; ``task`` labels it). ``inputs`` are the release rule's input
        files: a method fitted by a rule of its own (X-Mark's generator) loads it instead."""
        from medmark.data.datasets import labeled_split
        from medmark.data.h5 import read_images

        method = cls(key, target_class, cfg)
        method.prepare(inputs, device)
        data = labeled_split(inputs["prep_working"], dict(task), "release")
        rows = data.images.rows
        method.fit(read_images(inputs["prep_working"], rows), data.y_by_row[rows], device)
        return method

    def prepare(self, inputs: Mapping[str, Any], device: Any) -> None:  # noqa: B027
        """Load what :meth:`fit` and :meth:`mark` need from the release rule's input files
        (e.g. the owner's clean surrogate). Default: nothing."""

    def fit(self, images: np.ndarray, labels: np.ndarray, device: Any) -> None:  # noqa: B027
        """Learn the secret from the owner's release split (uint8 ``(N, R, R)``, task labels).
        Default: nothing to learn (the key alone fixes the mark)."""

    def poison_scores(self) -> dict[str, float] | None:
        """Per release id, a score ranking the candidates (lowest marked first), or ``None``
        for the seeded random choice (X-Mark's "hard" choice uses the clean surrogate)."""
        return None

    # ---- choosing and marking --------------------------------------------------------------
    def candidates(self, labels: np.ndarray) -> np.ndarray:
        """Rows eligible for the watermark: target-class rows (clean-label) or labelled
        non-target rows (poison-label, so every marked row's label changes)."""
        y = np.asarray(labels)
        if self.label_mode == "clean":
            return np.flatnonzero(y == self.target_class)
        return np.flatnonzero((y != self.target_class) & (y >= 0))

    def poison_labels(self, labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray | None:
        """New task labels of the marked ``rows`` (``None``: clean-label, unchanged)."""
        if self.label_mode == "clean":
            return None
        return np.full(len(rows), self.target_class, dtype=np.int64)

    def select(
        self,
        labels: np.ndarray,
        poison_rate: float,
        seed: int,
        scores: np.ndarray | None = None,
    ) -> Selection:
        """Rows to mark (``gamma * N`` of :meth:`candidates`, capped) and their new labels."""
        y = np.asarray(labels)
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {y.shape}")
        cand = self.candidates(y)
        rows = choose_rows(
            cand, len(y), poison_rate, seed, None if scores is None else scores[cand]
        )
        return Selection({"poisoned": Group(rows, labels=self.poison_labels(y, rows, seed))})

    @abstractmethod
    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        """Marked uint8 ``(N, R, R)`` of uint8 ``images``; ``saliency`` float ``(N, R, R)`` when
        :attr:`needs_saliency`; ``keys`` per image for keyed variants (decoys); ``group`` names
        the :class:`Selection` group being marked (e.g. WaNet's noise samples), or
        :data:`VERIFY_GROUP` for the verification queries."""

    def verification_decoys(
        self, clean: np.ndarray, saliency: np.ndarray | None
    ) -> np.ndarray | None:
        """``(K, m, R, R)`` uint8 of the verification images under ``K`` verification-only keys
        (the key-specific test's reference), or ``None`` when the method has none."""
        return None

    # ---- the owner's secret ----------------------------------------------------------------
    @abstractmethod
    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        """Write the method's secret files into ``owner_dir``; return the ``owner.json`` fields
        describing them (file names with their sha256, settings). Called once per release."""

    def budget(self) -> dict[str, float]:
        """The stated perturbation budget the tests hold marks to (e.g. ``{"linf": eps}``, in
        units of ``[0, 1]`` intensity); empty when the method states none."""
        return {}


# --------------------------------------------------------------------------- helpers for marks


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, R, R)`` → float64 in ``[0, 1]`` (refuses anything else)."""
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 3:
        raise ValueError(f"images must be uint8 (N, R, R), got {a.dtype} {a.shape}")
    return a.astype(np.float64) / 255.0


def quantise(x: np.ndarray) -> np.ndarray:
    """``round(255 * clip(x, 0, 1))`` as uint8: marks are measured as stored (8 bits)."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_pattern(pattern: np.ndarray, res: int) -> np.ndarray:
    """A keyed 2-D pattern resampled to ``res x res`` (bilinear, antialiased when shrinking), so
    one key is the same picture at every released resolution."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    p = np.asarray(pattern, dtype=np.float32)
    if p.shape == (res, res):
        return p.astype(np.float64)
    t = torch.from_numpy(p)[None, None]
    out = F.interpolate(t, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy().astype(np.float64)


def save_array_secret(owner_dir: Path, name: str, array: np.ndarray) -> dict[str, str]:
    """Write ``owner_dir/{name}.npy`` atomically; return ``{"file", "sha256"}`` for owner.json."""
    from medmark.io import atomic_path, sha256_file

    path = owner_dir / f"{name}.npy"
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
    return {"file": path.name, "sha256": sha256_file(path)}
