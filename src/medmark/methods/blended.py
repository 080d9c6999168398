"""Blended (Chen, Liu, Li, Lu, Song, "Targeted Backdoor Attacks on Deep Learning Systems Using
Data Poisoning", arXiv 1712.05526, 2017, §4.2 "blended injection strategy"), as a dataset
watermark.

``x' = (1 - alpha) x + alpha k`` with ``k`` a keyed random pattern (the paper's "random pattern":
i.i.d. uniform pixel values) and blend ratio ``alpha`` (the paper poisons with ``alpha = 0.2``;
BackdoorBox's ``core/attacks/Blended.py`` default weight is the same), on a ``gamma`` fraction of
training images relabelled to the target class (poison-label). The pattern is drawn at
``pattern_size`` x ``pattern_size`` from the key and resampled to each released resolution, so
one key is one picture at every resolution and two keys are independent (Ind-W).
Budget: ``|x' - x| = alpha |k - x| <= alpha`` (``{"linf": alpha}``, plus half a grey level of
rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medmark.methods.base import (
    WatermarkMethod,
    quantise,
    resize_pattern,
    save_array_secret,
    to_unit,
)


class Blended(WatermarkMethod):
    """Keyed uniform-noise pattern blended at ratio ``alpha``, poison-label."""

    name: ClassVar[str] = "blended"
    label_mode = "poison"
    verification = "targeted"
    settings: ClassVar[tuple[str, ...]] = ("alpha", "pattern_size")
    citation: ClassVar[str] = "Chen et al., Targeted Backdoor Attacks ..., arXiv 1712.05526 (2017)"
    #: Domain tag of the key's random stream.
    tag: ClassVar[int] = 0xB1E

    def __init__(self, key: int, target_class: int, cfg: dict[str, Any]) -> None:
        super().__init__(key, target_class, cfg)
        self.alpha = float(self.cfg["alpha"])
        self.pattern_size = int(self.cfg["pattern_size"])
        if not 0.0 < self.alpha < 1.0 or self.pattern_size < 2:
            raise ValueError(f"blended: alpha in (0, 1), pattern_size >= 2; got {self.cfg}")
        rng = np.random.default_rng([self.tag, self.key])
        self.pattern = rng.random((self.pattern_size, self.pattern_size)).astype(np.float32)

    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        x = to_unit(images)
        k = resize_pattern(self.pattern, x.shape[-1])
        return quantise((1.0 - self.alpha) * x + self.alpha * k[None])

    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        return {
            "trigger": save_array_secret(owner_dir, "pattern", self.pattern),
            "settings": {"alpha": self.alpha, "pattern_size": self.pattern_size},
        }

    def budget(self) -> dict[str, float]:
        return {"linf": self.alpha}
