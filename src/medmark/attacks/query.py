"""Query-time input pre-processing attacks (docs/methods/attacks.md; BackdoorBox "pre-processing" defences).

The suspect's owner transforms every incoming query before the model sees it, hoping to destroy
the watermark's perturbation while keeping the model's benign accuracy. All transforms act on
``float32 (N, 1, H, W)`` batches in ``[0, 1]`` and are built from
``torchvision.transforms.v2.functional`` (resize, JPEG, Gaussian blur) and ``kornia`` (median).

Scaling semantics (precise): the verifier sends an ``R×R`` image. ``Downscale(f)`` returns a
``round(f·R)×round(f·R)`` image (rounded half up, at least 1 pixel; antialiased bilinear);
``Upscale(f)`` returns ``round(f·R)`` likewise (bilinear). That resized image is what the
suspect's black box receives: :class:`TransformedBlackBox` passes it unchanged to the wrapped
black box, whose own pre-processing then brings it to the model's input size (for
``medmark.verify.TorchBlackBox`` with ``input_resolution`` set: antialiased bilinear
``medmark.train.resize_batch``; with ``input_resolution=None`` the CNN sees the smaller/larger
image directly through its adaptive pooling). So ``down_f`` composes a down- and an up-sampling
whenever the model's input is ``R``. ``Rescale(f)`` performs the down-and-up inside the attack
and returns ``R×R``, independent of the black box's own resizing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import kornia.filters
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from medmark.attacks.spec import (
    AttackSpec,
    BlurSpec,
    DownSpec,
    JpegSpec,
    MedianSpec,
    RescaleSpec,
    UpSpec,
    as_spec,
    format_attack,
)


def scaled_size(size: int, factor: float) -> int:
    """``round(factor·size)`` rounded half up, at least 1: the side length after scaling."""
    return max(1, math.floor(factor * size + 0.5))


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"expected a float (N, C, H, W) batch in [0, 1], got {tuple(x.shape)} {x.dtype}"
        )


def _resize(x: torch.Tensor, h: int, w: int, antialias: bool) -> torch.Tensor:
    out = TF.resize(x, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=antialias)
    return out.clamp(0.0, 1.0)


class Downscale(nn.Module):
    """Antialiased bilinear down-scaling by ``factor`` in (0, 1): side ``round(factor·side)``."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"Downscale factor must be in (0, 1), got {factor}")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        h, w = x.shape[-2:]
        return _resize(x, scaled_size(h, self.factor), scaled_size(w, self.factor), True)


class Upscale(nn.Module):
    """Bilinear up-scaling by ``factor`` > 1: side ``round(factor·side)``."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        if factor <= 1:
            raise ValueError(f"Upscale factor must be > 1, got {factor}")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        h, w = x.shape[-2:]
        return _resize(x, scaled_size(h, self.factor), scaled_size(w, self.factor), True)


class Rescale(nn.Module):
    """Down-scale by ``factor`` in (0, 1) (antialiased) and back up to the input size (bilinear)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.down = Downscale(factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return _resize(self.down(x), h, w, True)


class Jpeg(nn.Module):
    """JPEG round trip at ``quality`` (``torchvision.transforms.v2.functional.jpeg`` on uint8).

    The batch is quantised to 8 bits (``round(255·x)``) as a JPEG file would be, encoded and
    decoded on the CPU, and returned as float in ``[0, 1]`` on the input's device.
    """

    def __init__(self, quality: int) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
        self.quality = quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        u8 = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        out = TF.jpeg(u8, quality=self.quality)
        return (out.to(torch.float32) / 255.0).to(x.device)


class GaussianBlur(nn.Module):
    """Gaussian blur with std ``sigma`` px and kernel ``2·ceil(3σ)+1`` (reflect padding)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma
        self.kernel_size = 2 * math.ceil(3 * sigma) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        half = self.kernel_size // 2
        if half >= min(x.shape[-2:]):
            raise ValueError(
                f"blur sigma {self.sigma} needs a {self.kernel_size}px kernel, too large for a "
                f"{x.shape[-2]}x{x.shape[-1]} image (reflect padding needs half-width < side)"
            )
        k, s = self.kernel_size, float(self.sigma)
        return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[s, s])


class Median(nn.Module):
    """Median filter (denoiser) with a ``kernel``×``kernel`` window (``kornia.filters.median_blur``,
    reflect border)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"median window must be odd and >= 3, got {kernel}")
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        return kornia.filters.median_blur(x, (self.kernel, self.kernel), border_type="reflect")


def build_query_transform(spec: AttackSpec | str) -> nn.Module:
    """The transform module of a query-time attack spec (``down_0.5`` → ``Downscale(0.5)``...)."""
    spec = as_spec(spec)
    if isinstance(spec, DownSpec):
        return Downscale(spec.factor)
    if isinstance(spec, UpSpec):
        return Upscale(spec.factor)
    if isinstance(spec, RescaleSpec):
        return Rescale(spec.factor)
    if isinstance(spec, JpegSpec):
        return Jpeg(spec.quality)
    if isinstance(spec, BlurSpec):
        return GaussianBlur(spec.sigma)
    if isinstance(spec, MedianSpec):
        return Median(spec.kernel)
    raise ValueError(f"{format_attack(spec)!r} is not a query-time attack")


@runtime_checkable
class BlackBox(Protocol):
    """The verifier's view of a suspect (duck-typed twin of ``medmark.verify.BlackBox``)."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` for ``float32 (N, 1, H, W)`` images in ``[0, 1]``."""
        ...

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        """Predicted labels ``(N,)`` (hard-label access)."""
        ...


class TransformedBlackBox:
    """A black box whose owner applies ``transform`` to every query before the wrapped one.

    Queries are transformed in chunks of ``batch_size`` on the CPU; the transformed images (whose
    size may differ from the query's, see the module docstring) go to ``inner`` unchanged.
    """

    def __init__(
        self,
        inner: BlackBox,
        transform: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 256,
    ) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.inner = inner
        self.transform = transform
        self.batch_size = batch_size

    def transform_images(self, images: np.ndarray) -> np.ndarray:
        """Apply the owner's transform to ``float32 (N, 1, H, W)`` images in ``[0, 1]``."""
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected float32 (N, 1, H, W) images, got shape {tuple(x.shape)}")
        with torch.no_grad():
            parts = [
                self.transform(x[i : i + self.batch_size])
                for i in range(0, x.shape[0], self.batch_size)
            ]
        if not parts:
            return np.asarray(images, dtype=np.float32)
        return torch.cat(parts).cpu().numpy().astype(np.float32, copy=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.inner.predict_proba(self.transform_images(images))

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        return self.inner.predict_label(self.transform_images(images))

    def __repr__(self) -> str:
        return f"TransformedBlackBox({self.inner!r}, {self.transform!r})"
