"""Batched EigenCAM saliency maps (X-Mark, Kulkarni, Guo, Huang, arXiv 2602.09284: saliency conditioning).

EigenCAM (Muhammad & Yeasin, IJCNN 2020) projects a convolutional layer's activations on their
first principal component; it is class-agnostic and needs no gradients. We wrap the ``grad-cam``
package's implementation rather than re-implementing it, feed it whole batches, and store the maps
(normalised to [0, 1] per image by the library) as float16 next to the images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM
from torch import nn

from medmark.io import atomic_path
from medmark.models import Classifier

log = logging.getLogger(__name__)


def resolve_cam_layer(
    model: Classifier, target_layer: str = "auto", resolution: int | None = None
) -> nn.Module:
    """``auto`` = the deepest block with a usable map at ``resolution``; else a dotted path."""
    if target_layer == "auto":
        return model.default_cam_layer(resolution)
    try:
        return model.get_submodule(target_layer)
    except AttributeError as e:
        raise ValueError(
            f"saliency.target_layer {target_layer!r} is not a module of {model.arch}"
        ) from e


class EigenCamBatcher:
    """EigenCAM over batches of ``float32 (N, 1, H, W)`` images in ``[0, 1]``."""

    def __init__(
        self, model: Classifier, target_layer: str = "auto", resolution: int | None = None
    ) -> None:
        self.model = model.eval()
        layer = resolve_cam_layer(model, target_layer, resolution)
        self.cam = EigenCAM(model=self.model, target_layers=[layer])

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Maps ``float32 (N, H, W)`` in ``[0, 1]`` at the input resolution."""
        maps = self.cam(input_tensor=x, targets=None)
        return np.asarray(maps, dtype=np.float32)

    def close(self) -> None:
        self.cam.activations_and_grads.release()


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def write_saliency_h5(
    images_h5: str | Path,
    model: Classifier,
    out_h5: str | Path,
    *,
    target_layer: str,
    batch_size: int,
    device: torch.device,
    provenance: dict[str, Any],
) -> int:
    """Compute EigenCAM for every image of a ``prep/r{res}.h5`` file into ``out_h5``.

    ``maps`` is float16 ``(N, R, R)`` chunked one map per chunk; ``ids`` repeats the image ids in
    the same order so readers can check alignment. Streams batch by batch; atomic output.
    """
    model = model.to(device)
    with h5py.File(images_h5, "r") as src:
        n, h, w = src["images"].shape
    batcher = EigenCamBatcher(model, target_layer, resolution=h)
    layer_name = next(k for k, m in model.named_modules() if m is batcher.cam.target_layers[0])
    try:
        with h5py.File(images_h5, "r") as src, atomic_path(out_h5, suffix=".h5") as tmp:
            images = src["images"]
            with h5py.File(tmp, "w") as dst:
                maps = dst.create_dataset(
                    "maps", shape=(n, h, w), dtype="f2", chunks=(1, h, w), compression="gzip"
                )
                dst.create_dataset("ids", data=src["ids"][:], dtype=h5py.string_dtype())
                for sl in _batches(n, batch_size):
                    x = torch.from_numpy(images[sl]).float().div_(255.0).unsqueeze(1).to(device)
                    maps[sl] = batcher(x).astype(np.float16)
                dst.attrs.update(
                    {
                        "method": "eigencam",
                        "library": "grad-cam",
                        "target_layer": target_layer,
                        "target_layer_resolved": layer_name,
                        "arch": model.arch,
                        "resolution": h,
                        "source_images": str(images_h5),
                        **{k: v for k, v in provenance.items() if v is not None},
                    }
                )
    finally:
        batcher.close()
    log.info("saliency: %d maps written to %s", n, out_h5)
    return n
