"""Label-Consistent backdoor (Turner, Tsipras, Madry, "Label-Consistent Backdoor Attacks",
arXiv 1912.02771, 2019), as a clean-label dataset watermark.

Settings from the paper (§4) and BackdoorBox's ``core/attacks/LabelConsistent.py``: only
target-class images are marked and no label changes (clean-label); each is first made hard to
classify from its natural features by a projected-gradient (PGD) perturbation of L∞ radius
``eps`` that *raises* a clean surrogate's loss on its (true, target) label, then the trigger is
stamped on it, so a model trained on the release must rely on the trigger to fit those images
(§4.1). The paper's adversarial examples come from a separately trained clean model; here it is
the owner's surrogate (``results/surrogate/…``; an input of the release rule). Defaults: ``eps``
= 16/255 (the paper's main budget; its Figure 3 compares 8, 16, 32), ``steps`` = 20 of size
``2.5 eps / steps`` (Madry et al.'s PGD rule of thumb; BackdoorBox uses 100 steps, too slow on
two CPU cores), and BadNets' keyed corner patch as the trigger (the paper's full-visibility
pattern; ``patch_frac``, ``cells``). Queries carry the trigger alone.
Budget: outside the patch, ``|x' - x| <= eps`` (``{"linf": eps, "patch_frac": patch_frac}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from medmark.methods.badnets import BadNets
from medmark.methods.base import quantise, to_unit


class LabelConsistent(BadNets):
    """PGD-hardened target images plus BadNets' keyed patch; clean-label."""

    name: ClassVar[str] = "label_consistent"
    label_mode = "clean"
    verification = "targeted"
    settings: ClassVar[tuple[str, ...]] = (
        "patch_frac",
        "cells",
        "eps",
        "steps",
        "surrogate_resolution",
    )
    citation: ClassVar[str] = "Turner, Tsipras, Madry, Label-Consistent Backdoor Attacks (2019)"
    tag: ClassVar[int] = 0x1C

    def __init__(self, key: int, target_class: int, cfg: dict[str, Any]) -> None:
        super().__init__(key, target_class, cfg)
        self.eps, self.steps = float(self.cfg["eps"]), int(self.cfg["steps"])
        if not 0 < self.eps < 1 or self.steps < 1:
            raise ValueError(f"label_consistent: eps in (0, 1), steps >= 1; got {self.cfg}")
        self.surrogate: torch.nn.Module | None = None
        self.surrogate_resolution: int | None = None
        self.device = torch.device("cpu")

    def prepare(self, inputs: Mapping[str, Any], device: Any) -> None:
        """The owner's clean surrogate (``inputs["surrogate"]``, queried at
        ``cfg["surrogate_resolution"]``)."""
        from medmark.models import load_classifier

        self.use_surrogate(
            load_classifier(inputs["surrogate"]), int(self.cfg["surrogate_resolution"]), device
        )

    def use_surrogate(self, model: torch.nn.Module, resolution: int, device: Any) -> None:
        """The clean model the adversarial perturbations are computed against."""
        self.surrogate = model.eval().to(device)
        for p in self.surrogate.parameters():
            p.requires_grad_(False)
        self.surrogate_resolution = int(resolution)
        self.device = torch.device(device)

    def harden(self, images: np.ndarray) -> np.ndarray:
        """PGD (L∞ ``eps``, ``steps`` sign steps) raising the surrogate's loss on the target
        label, from the clean image; float in ``[0, 1]``."""
        if self.surrogate is None or self.surrogate_resolution is None:
            raise ValueError("label_consistent: no surrogate (use_surrogate / for_release)")
        x = torch.from_numpy(to_unit(images)).float()[:, None].to(self.device)
        y = torch.full((len(x),), self.target_class, dtype=torch.long, device=self.device)
        step = 2.5 * self.eps / self.steps
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(self.steps):
            xin = torch.clamp(x + delta, 0, 1)
            if xin.shape[-1] != self.surrogate_resolution:
                xin = F.interpolate(
                    xin, size=self.surrogate_resolution, mode="bilinear", antialias=True
                )
            loss = F.cross_entropy(self.surrogate(xin), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta += step * grad.sign()
                delta.clamp_(-self.eps, self.eps)
        return torch.clamp(x + delta.detach(), 0, 1)[:, 0].cpu().numpy().astype(np.float64)

    def mark(
        self,
        images: np.ndarray,
        *,
        saliency: np.ndarray | None = None,
        keys: list[int] | None = None,
        group: str = "poisoned",
    ) -> np.ndarray:
        if group == "poisoned":
            images = quantise(self.harden(images))
        return super().mark(images, group=group)

    def save_secret(self, owner_dir: Any) -> dict[str, Any]:
        out = super().save_secret(owner_dir)
        out["settings"] |= {"eps": self.eps, "steps": self.steps}
        return out

    def budget(self) -> dict[str, float]:
        return {"linf": self.eps, **super().budget()}
