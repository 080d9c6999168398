"""SSCL-BW, the sample-specific clean-label backdoor watermark X-Mark extends (arXiv 2510.26420),
as a dataset watermark: X-Mark's conditional U-Net generator trained with the objective X-Mark
inherits from it (efficacy on target-class and on non-target images towards ``y_t``, diagnostic
preservation and a perceptual term) and without what X-Mark adds (X-Mark paper, §3.3).

Built from the variant's ``xmark`` section (architecture, ε, epochs, learning rate, the λ of
the shared terms) with X-Mark's additions switched off: no saliency conditioning (``mask:
uniform``, a constant map), no scale-robustness term (``lambdas.scale = 0``), no Laplacian
regularisation (``lambdas.lap = 0``), and none of this repository's extensions (``carrier.kind:
free``, no decoys, ``lambdas.silence = 0``). The perceptual term is X-Mark's visual term
(1 − SSIM + ‖δ‖², or LPIPS with local weights; ``xmark.visual``). Clean-label: target-class
images only. The generator is fitted inside the release rule from the key (initialisation and
data order), against the owner's clean surrogate; two keys give two independently trained
generators (Ind-W). Budget: ``|x' − x| ≤ ε``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medmark.io import sha256_file
from medmark.methods.base import WatermarkMethod
from medmark.methods.xmark.config import merge_section, resolve_xmark
from medmark.methods.xmark.generator import XMarkGenerator, save_generator
from medmark.methods.xmark.release import apply_generator
from medmark.methods.xmark.training import ArrayTriples, train_generator

#: X-Mark's additions, switched off (module docstring).
SSCL_OVERRIDES: dict[str, Any] = {
    "mask": "uniform",
    "carrier": {"kind": "free"},
    "decoys": {"rate": 0.0, "verify": 0},
    "lambdas": {"scale": 0.0, "lap": 0.0, "silence": 0.0},
}


class SSCLBW(WatermarkMethod):
    """X-Mark's generator without saliency, scale, Laplacian and the keyed extensions."""

    name: ClassVar[str] = "sscl_bw"
    label_mode = "clean"
    verification = "targeted"
    settings: ClassVar[tuple[str, ...]] = ("xmark", "surrogate_resolution")
    citation: ClassVar[str] = "SSCL-BW, arXiv 2510.26420 (2025)"

    def __init__(self, key: int, target_class: int, cfg: dict[str, Any]) -> None:
        super().__init__(key, target_class, cfg)
        self.xmark = merge_section(resolve_xmark(self.cfg["xmark"]), SSCL_OVERRIDES, "sscl_bw")
        self.generator: XMarkGenerator | None = None
        self.surrogate: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def prepare(self, inputs: Mapping[str, Any], device: Any) -> None:
        """The owner's clean surrogate (``inputs["surrogate"]``) the generator trains against."""
        from medmark.models import load_classifier

        self.surrogate = load_classifier(inputs["surrogate"])

    def fit(self, images: np.ndarray, labels: np.ndarray, device: Any) -> None:
        """Train the generator on the release split (uniform saliency) against the surrogate."""
        if self.surrogate is None:
            raise ValueError("sscl_bw: no surrogate to train the generator against")
        self.device = torch.device(device)
        data = ArrayTriples(images, np.ones(images.shape, np.float32), labels)
        with tempfile.TemporaryDirectory(prefix="sscl_bw.") as tmp:
            self.generator = train_generator(
                data,
                self.surrogate,
                self.xmark,
                key=self.key,
                device=self.device,
                last_path=Path(tmp) / "last.pt",
                loss_csv=Path(tmp) / "loss.csv",
                target_class=self.target_class,
                surrogate_resolution=int(self.cfg["surrogate_resolution"]),
            )

    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        if self.generator is None:
            raise ValueError("sscl_bw: the generator is not fitted")
        ones = np.ones(np.shape(images), np.float32)
        return apply_generator(self.generator, images, ones, 64, self.device)

    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        if self.generator is None:
            raise ValueError("sscl_bw: the generator is not fitted")
        path = owner_dir / "generator.pt"
        meta = {k: v for k, v in getattr(self.generator, "meta", {}).items() if k != "history"}
        save_generator(self.generator, path, {**meta, "key": self.key})
        return {
            "generator": {"file": path.name, "sha256": sha256_file(path)},
            "settings": {"xmark": self.xmark},
        }

    def budget(self) -> dict[str, float]:
        return {"linf": float(self.xmark["epsilon"])}
