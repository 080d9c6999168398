"""Batched EigenCAM saliency maps (X-Mark, Kulkarni, Guo, Huang, arXiv 2602.09284: saliency conditioning).

EigenCAM (Muhammad & Yeasin, IJCNN 2020) projects a convolutional layer's activations on their
first principal component; it is class-agnostic and needs no gradients. The maths is the
``grad-cam`` package's own (``get_2d_projection``: per-image SVD, ``scale_cam_image``: min-max
scaling and resize); we only drive it differently from its ``EigenCAM`` class, whose call costs
more than the forward pass it needs (measured, ``benchmarks/saliency.py``): it runs the model
with autograd recording (EigenCAM needs no gradient), runs the layers after the target and the
classifier head (their output is unused), and copies the activations. Here one forward hook,
registered once, captures the target layer's output under ``torch.inference_mode`` and stops the
forward there. Maps equal the library's per-image call to 1e-4 (tested) and are stored, in
``[0, 1]`` per image, as float16 next to the images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image
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


def first_component_projection(activations: np.ndarray) -> np.ndarray:
    """grad-cam's ``get_2d_projection`` with the thin SVD: float32 ``(N, h, w)`` projections of
    ``(N, C, h, w)`` activations on their first principal component.

    The library asks numpy for the *full* SVD of each centred ``(h*w, C)`` matrix, which builds
    the whole ``C x C`` right-singular basis (512 x 512 for a ResNet-18 block) to use its first
    row only; at 224 px that costs a third of the forward pass (``benchmarks/saliency.py``). The
    thin SVD runs the same LAPACK driver (``gesdd``) on the same matrix, and its first right
    singular vector came out bit-identical, sign included, on every architecture and resolution
    we tried; ``tests/test_saliency.py`` compares the maps with the library's call.
    """
    acts = np.array(activations, dtype=np.float32)  # a copy, as the library's
    acts[np.isnan(acts)] = 0
    out = np.empty((acts.shape[0], *acts.shape[2:]), dtype=np.float32)
    for i, a in enumerate(acts):
        m = a.reshape(a.shape[0], -1).transpose()
        m = m - m.mean(axis=0)
        vt = np.linalg.svd(m, full_matrices=False)[2]
        out[i] = (m @ vt[0, :]).reshape(a.shape[1:])
    return out


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the target layer."""


class EigenCamBatcher:
    """EigenCAM over batches of ``float32 (N, 1, H, W)`` images in ``[0, 1]`` (module docstring)."""

    def __init__(
        self, model: Classifier, target_layer: str = "auto", resolution: int | None = None
    ) -> None:
        self.model = model.eval()
        self.layer = resolve_cam_layer(model, target_layer, resolution)
        self._acts: torch.Tensor | None = None
        self._armed = False  # the hook acts only inside activations(): other callers of the
        self._hook = self.layer.register_forward_hook(self._capture)  # model run it whole

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._armed:
            self._acts = output
            raise _Captured

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The target layer's output for ``x`` (the layers after it are not run)."""
        self._acts = None
        self._armed = True
        try:
            with torch.inference_mode():
                self.model(x)
        except _Captured:
            pass
        finally:
            self._armed = False
        if self._acts is None:
            raise RuntimeError("the target layer was not reached by the forward pass")
        acts, self._acts = self._acts, None
        return acts

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Maps ``float32 (N, H, W)`` in ``[0, 1]`` at the input resolution."""
        acts = self.activations(x).float().cpu().numpy()
        # grad-cam's BaseCAM.compute_cam_per_layer + aggregate_multi_layers, one target layer
        cam = np.maximum(first_component_projection(acts), 0)
        scaled = scale_cam_image(cam, (x.shape[-1], x.shape[-2]))
        return scale_cam_image(np.maximum(scaled, 0))

    def close(self) -> None:
        self._hook.remove()


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
    t0 = time.perf_counter()
    model = model.to(device)
    with h5py.File(images_h5, "r") as src:
        n, h, w = src["images"].shape
    batcher = EigenCamBatcher(model, target_layer, resolution=h)
    layer_name = next(k for k, m in model.named_modules() if m is batcher.layer)
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
    seconds = time.perf_counter() - t0
    log.info(
        "saliency: %d maps written to %s in %.1f s (%.1f images/s)", n, out_h5, seconds, n / seconds
    )
    return n
