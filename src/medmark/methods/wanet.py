"""WaNet (Nguyen, Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021) in its
noise mode, as a dataset watermark.

Settings from the paper (§3.2-3.3) and BackdoorBox's ``core/attacks/WaNet.py``: a keyed
``k x k x 2`` field ``P`` of uniform values in ``[-1, 1]`` normalised by its mean absolute value,
upsampled (bicubic) to the image, and the warp ``M = clip(identity + s P / h, -1, 1)`` applied by
``grid_sample`` (``k = 4``, ``s = 0.5``). Poison-label: a ``gamma`` fraction of the release
(non-target rows) is warped and relabelled to the target class. Noise mode: another
``cross_ratio * n_poisoned`` rows (``cross_ratio = 2``, any class, labels kept) are warped with
``M + (2 U - 1) / h`` (fresh uniform noise per image), so a model must learn the exact warp, not
any warp. The field is drawn from the key (Ind-W: another key, another field); ``h`` is the side
of the image being marked, so the displacement is the paper's in pixels at every resolution.
Budget: the largest displacement of the owner's warp, in pixels (``{"max_shift_px": ...}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from medmark.methods.base import (
    VERIFY_GROUP,
    Group,
    Selection,
    WatermarkMethod,
    quantise,
    save_array_secret,
    to_unit,
)


class WaNet(WatermarkMethod):
    """Keyed smooth warping field, poison-label, with noise-mode cross samples."""

    name: ClassVar[str] = "wanet"
    label_mode = "poison"
    verification = "targeted"
    settings: ClassVar[tuple[str, ...]] = ("k", "s", "cross_ratio")
    citation: ClassVar[str] = "Nguyen, Tran, WaNet, ICLR 2021"
    #: Domain tag of the key's random stream.
    tag: ClassVar[int] = 0x3A4E7

    def __init__(self, key: int, target_class: int, cfg: dict[str, Any]) -> None:
        super().__init__(key, target_class, cfg)
        self.k, self.s = int(self.cfg["k"]), float(self.cfg["s"])
        self.cross_ratio = float(self.cfg["cross_ratio"])
        if self.k < 2 or self.s <= 0 or self.cross_ratio < 0:
            raise ValueError(f"wanet: k >= 2, s > 0, cross_ratio >= 0; got {self.cfg}")
        rng = np.random.default_rng([self.tag, self.key])
        field = rng.uniform(-1.0, 1.0, size=(2, self.k, self.k))
        self.field = (field / np.abs(field).mean()).astype(np.float32)
        self._noise = np.random.default_rng([self.tag, self.key, 1])

    def grid(self, res: int) -> torch.Tensor:
        """The owner's warp ``(1, res, res, 2)`` in ``grid_sample`` coordinates."""
        ins = torch.from_numpy(self.field)[None]
        noise = F.interpolate(ins, size=res, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        a = torch.linspace(-1, 1, steps=res)
        yy, xx = torch.meshgrid(a, a, indexing="ij")
        identity = torch.stack((xx, yy), 2)[None]
        return torch.clamp(identity + self.s * noise / res, -1, 1)

    def select(
        self,
        labels: np.ndarray,
        poison_rate: float,
        seed: int,
        scores: np.ndarray | None = None,
    ) -> Selection:
        base = super().select(labels, poison_rate, seed, None)
        poisoned = base.poisoned.rows
        y = np.asarray(labels)
        rest = np.setdiff1d(np.flatnonzero(y >= 0), poisoned)
        n = min(len(rest), round(self.cross_ratio * len(poisoned)))
        rng = np.random.default_rng([int(seed), self.tag])
        noise_rows = np.sort(rng.choice(rest, size=n, replace=False))
        return Selection({"poisoned": base.poisoned, "noise": Group(noise_rows)})

    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        x = torch.from_numpy(to_unit(images)).float()[:, None]
        n, res = x.shape[0], x.shape[-1]
        grid = self.grid(res).expand(n, -1, -1, -1)
        if group == "noise":
            ins = torch.from_numpy(self._noise.random((n, res, res, 2), dtype=np.float32))
            grid = torch.clamp(grid + (2 * ins - 1) / res, -1, 1)
        elif group not in ("poisoned", VERIFY_GROUP):
            raise ValueError(f"wanet: unknown group {group!r}")
        out = F.grid_sample(x, grid, align_corners=True)
        return quantise(out[:, 0].numpy().astype(np.float64))

    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        return {
            "trigger": save_array_secret(owner_dir, "warp_field", self.field),
            "settings": {"k": self.k, "s": self.s, "cross_ratio": self.cross_ratio},
        }

    def budget(self) -> dict[str, float]:
        """Largest displacement of the owner's warp in pixels: ``s |P| / h`` in ``[-1, 1]``
        coordinates is ``(h - 1) / 2 * s |P| / h < s |P| / 2`` pixels, with ``max |P|`` of the
        bicubic field taken on a fine grid (it overshoots the ``k x k`` values), plus 1 %."""
        ins = torch.from_numpy(self.field)[None]
        fine = F.interpolate(ins, size=1024, mode="bicubic", align_corners=True)
        return {"max_shift_px": float(self.s * fine.abs().max() / 2 * 1.01)}
