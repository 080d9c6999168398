"""Query-time attacks change the input as claimed (docs/methods/attacks.md)."""

from __future__ import annotations

import math

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


def textured_images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth content plus fine noise, kept inside [0.05, 0.95] so no clamp is ever active."""
    g = torch.Generator().manual_seed(seed + 100)
    x = (
        smooth_images(n, size, seed) * 0.8
        + 0.1
        + 0.05 * (torch.rand(n, 1, size, size, generator=g) - 0.5)
    )
    return x.clamp(0.05, 0.95)


def triangle_half_matrix(size: int) -> np.ndarray:
    """The 2:1 antialiased bilinear (triangle) resampling matrix, written out by hand.

    Output pixel ``i`` is centred on input coordinate ``2i + 1``; the triangle filter stretched
    by the scale 2 gives inputs ``2i-1, 2i, 2i+1, 2i+2`` the weights ``1, 3, 3, 1`` (/8). At the
    borders the outside tap is dropped and the rest renormalised (``3, 3, 1`` / 7), as PIL does.
    """
    out = np.zeros((size // 2, size))
    for i in range(size // 2):
        taps = {2 * i - 1: 1.0, 2 * i: 3.0, 2 * i + 1: 3.0, 2 * i + 2: 1.0}
        taps = {j: w for j, w in taps.items() if 0 <= j < size}
        total = sum(taps.values())
        for j, w in taps.items():
            out[i, j] = w / total
    return out


def pil_resize(x: torch.Tensor, side: int) -> np.ndarray:
    """Reference resize: PIL's float ('F') BILINEAR resampling, antialiased when reducing."""
    from PIL import Image

    return np.stack(
        [
            np.asarray(
                Image.fromarray(img[0].numpy().astype(np.float32), mode="F").resize(
                    (side, side), Image.Resampling.BILINEAR
                )
            )[None]
            for img in x
        ]
    )


def low_frequencies(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Magnitudes of the ``(2k+1)²`` lowest 2-D DFT coefficients per image, normalised by the
    pixel count (magnitudes: a 2:1 resampling grid is offset by half an input pixel)."""
    spec = np.fft.fft2(x, axes=(-2, -1)) / (x.shape[-1] * x.shape[-2])
    idx = np.r_[0 : k + 1, -k:0]
    return np.abs(spec[..., idx[:, None], idx[None, :]])


def test_downscale_half_equals_the_hand_written_triangle_filter() -> None:
    """Breakage guarded: ``Downscale`` without antialiasing (plain bilinear = 2×2 box at 2:1), a
    nearest/area filter, or a shifted grid: each gives other pixel values than the hand matrix.
    The content is kept: same mean, same lowest frequencies."""
    x = textured_images(3, 32)
    y = Downscale(0.5)(x).numpy()
    w = triangle_half_matrix(32)
    expected = np.stack([w @ img[0] @ w.T for img in x.numpy()])[:, None]
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), x.numpy().mean(axis=(2, 3)), atol=2e-3)
    np.testing.assert_allclose(low_frequencies(y, 2), low_frequencies(x.numpy(), 2), atol=4e-3)


@pytest.mark.parametrize(("factor", "side"), [(0.3, 30), (0.5, 33), (0.75, 64)])
def test_downscale_matches_pil_antialiased_bilinear(factor: float, side: int) -> None:
    """Non-integer ratios against PIL's BILINEAR reduce (an implementation other than the
    torchvision resize under test). Breakage guarded: ``antialias=False`` in ``Downscale``
    (aliased sampling: pixels differ by far more than the tolerance on textured images)."""
    x = textured_images(2, side, seed=3)
    y = Downscale(factor)(x)
    expected = pil_resize(x, y.shape[-1])
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-4)


def test_rescale_matches_pil_down_and_up_and_keeps_content() -> None:
    """``Rescale(0.25)`` = PIL antialiased reduce to 8 px, then PIL bilinear back to 32 px.

    Breakage guarded: a rescale that returns a blank or constant image, or that forgets the
    down-sampling (identity): the first fails the mean/low-frequency checks, the second the
    reference and the high-frequency drop."""
    x = textured_images(3, 32, seed=5)
    y = Rescale(0.25)(x)
    small = torch.from_numpy(pil_resize(x, 8))
    expected = pil_resize(small, 32)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(y.numpy().mean(axis=(2, 3)), x.numpy().mean(axis=(2, 3)), atol=5e-3)
    np.testing.assert_allclose(
        low_frequencies(y.numpy(), 1), low_frequencies(x.numpy(), 1), atol=1e-2
    )


def gaussian_blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian written out with numpy: taps ``exp(-t²/2σ²)`` for ``|t| <= ceil(3σ)``,
    normalised to sum 1, on a mirror-padded image (``np.pad(mode="reflect")``: edge not repeated)."""
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    out = np.empty_like(x, dtype=np.float64)
    for idx in np.ndindex(*x.shape[:-2]):
        img = np.pad(x[idx].astype(np.float64), r, mode="reflect")
        rows = np.stack([np.convolve(row, k, mode="valid") for row in img])
        out[idx] = np.stack([np.convolve(col, k, mode="valid") for col in rows.T]).T
    return out


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_gaussian_blur_matches_numpy_reference_and_keeps_content(sigma: float) -> None:
    """Breakage guarded: a wrong kernel size or sigma (e.g. ``sigma`` read as the kernel radius),
    zero padding instead of reflect, or a blur returning zeros: all move pixels or the mean."""
    x = textured_images(2, 32, seed=7)
    y = GaussianBlur(sigma)(x).numpy()
    np.testing.assert_allclose(y, gaussian_blur_reference(x.numpy(), sigma), atol=1e-5)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), x.numpy().mean(axis=(2, 3)), atol=5e-3)
    np.testing.assert_allclose(low_frequencies(y, 1), low_frequencies(x.numpy(), 1), atol=1e-2)


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
