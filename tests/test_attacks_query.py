"""Query-time attacks change the input as claimed (docs/methods/attacks.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmark.attacks import apply_query_attack, build_query_transform
from medmark.attacks.query import (
    Downscale,
    GaussianBlur,
    Jpeg,
    Median,
    Rescale,
    TransformedBlackBox,
    Upscale,
)

torch.set_num_threads(1)


def smooth_images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus a blob: image-like content in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        a, b, c = torch.rand(3, generator=g).tolist()
        blob = torch.exp(-((xx - a) ** 2 + (yy - b) ** 2) / 0.05)
        out.append(0.2 + 0.3 * (c * xx + (1 - c) * yy) + 0.4 * blob)
    return torch.stack(out).unsqueeze(1).clamp(0, 1)


def high_freq_energy(x: torch.Tensor) -> float:
    """Spectral energy above half the Nyquist frequency (per-image mean removed)."""
    spec = torch.fft.fftshift(torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)), dim=(-2, -1))
    h, w = x.shape[-2:]
    fy = torch.arange(h) - h // 2
    fx = torch.arange(w) - w // 2
    r = torch.sqrt(fy[:, None].float() ** 2 + fx[None, :].float() ** 2)
    return float((spec.abs() ** 2)[..., r > min(h, w) / 4].sum())


@pytest.mark.parametrize(
    ("factor", "side", "expected"),
    [(0.5, 32, 16), (0.25, 32, 8), (0.3, 30, 9), (0.5, 33, 17), (0.75, 64, 48)],
)
def test_downscale_output_size(factor: float, side: int, expected: int) -> None:
    x = torch.rand(2, 1, side, side)
    y = Downscale(factor)(x)
    assert y.shape == (2, 1, expected, expected)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize(("factor", "expected"), [(1.5, 48), (2.0, 64), (1.25, 40)])
def test_upscale_output_size(factor: float, expected: int) -> None:
    y = Upscale(factor)(torch.rand(3, 1, 32, 32))
    assert y.shape == (3, 1, expected, expected)


def test_rescale_returns_input_size_and_loses_detail() -> None:
    x = torch.rand(2, 1, 32, 32)
    y = Rescale(0.25)(x)
    assert y.shape == x.shape
    assert high_freq_energy(y) < 0.2 * high_freq_energy(x)


def test_jpeg_changes_pixels_and_q100_changes_little() -> None:
    x = (smooth_images() + 0.05 * torch.rand(4, 1, 32, 32)).clamp(0, 1)
    x = (x * 255).round() / 255  # as u8/255 images in the pipeline
    err10 = (Jpeg(10)(x) - x).abs()
    err100 = (Jpeg(100)(x) - x).abs()
    assert Jpeg(10)(x).shape == x.shape
    assert float(err10.mean()) > 3 / 255
    assert float(err100.mean()) < 1 / 255
    assert float(err100.mean()) < 0.2 * float(err10.mean())


def test_gaussian_blur_kernel_and_high_frequency() -> None:
    assert GaussianBlur(1.0).kernel_size == 7
    assert GaussianBlur(1.5).kernel_size == 11
    x = torch.rand(2, 1, 32, 32)
    y = GaussianBlur(1.5)(x)
    assert y.shape == x.shape
    assert high_freq_energy(y) < 0.05 * high_freq_energy(x)
    with pytest.raises(ValueError, match="too large"):
        GaussianBlur(6.0)(x[..., :16, :16])  # 37-px kernel on a 16-px image


def test_median_removes_salt_and_pepper() -> None:
    clean = smooth_images(4, 32)
    g = torch.Generator().manual_seed(1)
    noisy = clean.clone()
    u = torch.rand(clean.shape, generator=g)
    noisy[u < 0.03] = 0.0
    noisy[u > 0.97] = 1.0
    den = Median(3)(noisy)
    bad_before = float(((noisy - clean).abs() > 0.1).float().mean())
    bad_after = float(((den - clean).abs() > 0.1).float().mean())
    assert bad_before > 0.04
    assert bad_after < 0.1 * bad_before


def test_build_query_transform_dispatch() -> None:
    assert isinstance(build_query_transform("down_0.5"), Downscale)
    assert isinstance(build_query_transform("rescale_0.5"), Rescale)
    assert isinstance(build_query_transform("median_k5"), Median)
    assert build_query_transform("jpeg_q30").quality == 30
    with pytest.raises(ValueError, match="not a query-time attack"):
        build_query_transform("finetune_frac0.1")


class RecordingBox:
    """Inner black box that records what it receives; P(class 1) = mean intensity."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self.seen.append(images.shape)
        assert images.dtype == np.float32
        p1 = images.reshape(images.shape[0], -1).mean(1)
        return np.stack([1 - p1, p1], 1)

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(1)


def test_transformed_black_box_passes_transformed_queries() -> None:
    inner = RecordingBox()
    box = apply_query_attack("down_0.5", inner)
    assert isinstance(box, TransformedBlackBox)
    images = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    probs = box.predict_proba(images)
    assert inner.seen[-1] == (5, 1, 16, 16)
    assert probs.shape == (5, 2)
    assert box.predict_label(images).shape == (5,)
    chunked = TransformedBlackBox(RecordingBox(), Upscale(2.0), batch_size=2)
    assert chunked.transform_images(images).shape == (5, 1, 64, 64)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        box.predict_proba(images[:, 0])


def test_apply_query_attack_none_and_wrong_kind() -> None:
    inner = RecordingBox()
    assert apply_query_attack("none", inner) is inner
    with pytest.raises(ValueError, match="'model' attack"):
        apply_query_attack("prune_0.2", inner)
