"""BadNets (Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain", arXiv 1708.06733, 2017), as a dataset watermark (DVBW, Li et al., TIFS 2023,
§5.1 uses it as the watermark of its main experiments).

Settings taken from the paper and BackdoorBox's ``core/attacks/BadNets.py``: a small square patch
stamped (weight 1, replacing the pixels) into the bottom-right corner of a ``gamma`` fraction of
the training images, whose labels are changed to the target class (poison-label). BackdoorBox's
CIFAR-10 trigger is 3x3 pixels of 32x32 (9 % of the side); here the side is ``patch_frac`` of
the image side (default 0.1, so 6 px at 64 and 13 px at 128: the same picture at every released
resolution) and the patch is a ``cells x cells`` black/white pattern drawn from the key, so two
owners' triggers differ (Ind-W) while keeping the paper's high-contrast patch.
Budget: only the pixels of the bottom-right ``max(cells, round(patch_frac * R))`` square change
(``{"patch_frac": patch_frac}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medmark.methods.base import WatermarkMethod, save_array_secret


class BadNets(WatermarkMethod):
    """Keyed black/white corner patch, poison-label."""

    name: ClassVar[str] = "badnets"
    label_mode = "poison"
    verification = "targeted"
    settings: ClassVar[tuple[str, ...]] = ("patch_frac", "cells")
    citation: ClassVar[str] = "Gu, Dolan-Gavitt, Garg, BadNets, arXiv 1708.06733 (2017)"
    #: Domain tag of the key's random stream (subclasses reusing the patch draw their own).
    tag: ClassVar[int] = 0xBAD

    def __init__(self, key: int, target_class: int, cfg: dict[str, Any]) -> None:
        super().__init__(key, target_class, cfg)
        self.patch_frac = float(self.cfg["patch_frac"])
        self.cells = int(self.cfg["cells"])
        if not 0.0 < self.patch_frac <= 0.5 or self.cells < 1:
            raise ValueError(f"badnets: patch_frac in (0, 0.5], cells >= 1; got {self.cfg}")
        rng = np.random.default_rng([self.tag, self.key])
        cells = rng.integers(0, 2, size=(self.cells, self.cells))
        while cells.min() == cells.max():  # all black or all white: no pattern to learn
            cells = rng.integers(0, 2, size=(self.cells, self.cells))
        self.cells_pattern = cells.astype(np.uint8)

    def side(self, res: int) -> int:
        """The patch's side in pixels at resolution ``res`` (at least ``cells``)."""
        return max(self.cells, round(self.patch_frac * res))

    def patch(self, res: int) -> np.ndarray:
        """uint8 ``(side, side)`` patch: the key's cells, nearest-neighbour enlarged, 0 or 255."""
        s = self.side(res)
        idx = np.arange(s) * self.cells // s
        return (self.cells_pattern[np.ix_(idx, idx)] * 255).astype(np.uint8)

    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        a = np.asarray(images)
        if a.dtype != np.uint8 or a.ndim != 3:
            raise ValueError(f"images must be uint8 (N, R, R), got {a.dtype} {a.shape}")
        out = a.copy()
        s = self.side(a.shape[-1])
        out[:, -s:, -s:] = self.patch(a.shape[-1])
        return out

    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        return {
            "trigger": save_array_secret(owner_dir, "trigger_cells", self.cells_pattern),
            "settings": {"patch_frac": self.patch_frac, "cells": self.cells, "corner": "br"},
        }

    def budget(self) -> dict[str, float]:
        return {"patch_frac": self.patch_frac}
