"""Classifier builders shared by the surrogate, the suspects and the attacks.

Backbones come from torchvision (ResNet-18, DenseNet-121, ShuffleNetV2 x1.0) with the stem
replaced by a
1-channel convolution (grayscale radiographs) and a 2-way head (binary task, see
``medmark.data.labels``). Every model normalises internally, so all models take
``float32 (N, 1, H, W)`` images in ``[0, 1]``: that is the black-box API the verifier uses
(docs/methods/verification.md, "Roles").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from medmark.io import atomic_path

ARCHS: tuple[str, ...] = ("resnet18", "densenet121", "shufflenet_v2")
#: Fixed intensity normalisation applied inside every model (u8/255 images have mean ~0.5).
NORM_MEAN, NORM_STD = 0.5, 0.25
#: Smallest EigenCAM map side the automatic target layer accepts (7 = ResNet at 224 px).
MIN_CAM_SIDE = 7


class Classifier(nn.Module):
    """A backbone with a 1-channel stem and internal normalisation; input in ``[0, 1]``."""

    def __init__(self, arch: str, num_classes: int = 2) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
        self.arch = arch
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(NORM_MEAN).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(NORM_STD).view(1, 1, 1, 1))
        if arch == "resnet18":
            net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
            net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        elif arch == "densenet121":
            net = torchvision.models.densenet121(weights=None, num_classes=num_classes)
            net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:  # shufflenet_v2: a cheap second family (depthwise convolutions, channel shuffle)
            net = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
            net.conv1[0] = nn.Conv2d(1, 24, kernel_size=3, stride=2, padding=1, bias=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def default_cam_layer(self, resolution: int | None = None) -> nn.Module:
        """The layer EigenCAM reads by default: the deepest block with a usable map.

        At 224 px that is the last block (7×7 map), as in the EigenCAM and grad-cam examples.
        At the small working resolutions of the embedded default (64 px) the last block is 2×2
        and EigenCAM's map carries no spatial information, so we take the deepest block whose
        map is at least ``MIN_CAM_SIDE`` pixels wide (stride 32, then 16, then 8).
        """
        if self.arch == "resnet18":
            blocks = [
                (32, self.net.layer4[-1]),
                (16, self.net.layer3[-1]),
                (8, self.net.layer2[-1]),
            ]
        elif self.arch == "densenet121":
            f = self.net.features
            blocks = [(32, f[-1]), (16, f.denseblock3), (8, f.denseblock2)]
        else:
            n = self.net
            blocks = [(32, n.conv5), (16, n.stage3), (8, n.stage2)]
        if resolution is None:
            return blocks[0][1]
        for stride, layer in blocks:
            if resolution // stride >= MIN_CAM_SIDE:
                return layer
        return blocks[-1][1]

    def feature_layer(self) -> nn.Module:
        """The last block whose channels fine-pruning ranks (resnet layer4 / densenet block 4 /
        shufflenet conv5)."""
        if self.arch == "resnet18":
            return self.net.layer4
        if self.arch == "densenet121":
            return self.net.features.denseblock4
        return self.net.conv5


def build_classifier(arch: str, num_classes: int = 2, seed: int | None = None) -> Classifier:
    """Build a freshly initialised classifier (seeded initialisation when ``seed`` is given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Classifier(arch, num_classes)
    return Classifier(arch, num_classes)


def get_submodule(model: nn.Module, dotted: str) -> nn.Module:
    """Resolve a dotted module path such as ``net.layer4.1`` (integers index Sequentials)."""
    return model.get_submodule(dotted)


def save_classifier(
    model: Classifier, path: str | Path, meta: dict[str, Any] | None = None
) -> None:
    """Atomically save architecture, weights and metadata (seed, config) in one file."""
    payload = {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "state_dict": model.state_dict(),
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """Load a classifier written by :func:`save_classifier`."""
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or "arch" not in payload:
        raise ValueError(f"{path}: not a medmark classifier checkpoint (no 'arch' key)")
    model = Classifier(payload["arch"], payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    model.meta = payload.get("meta", {})  # type: ignore[attr-defined]
    return model.eval()
