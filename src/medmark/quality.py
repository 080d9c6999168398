"""Image quality of a watermarked release (docs/methods/verification.md, "Metrics": release quality).

Per image and aggregated, for clean/watermarked uint8 pairs:

- ``psnr`` (dB, data range 1) and ``ssim`` (Gaussian window 11, sigma 1.5), torchmetrics
  functional. Identical images have PSNR ``inf``; the aggregate ``psnr_mean`` averages the finite
  values only and ``n_unchanged`` counts the identical pairs.
- ``linf`` / ``l2`` of ``delta = x' - x`` in ``[0, 1]`` units, and ``linf_levels`` /
  ``l2_levels`` in 8-bit grey levels (``255 *``); ``l2`` is the Euclidean norm over the image.
- ``hf_share``: the fraction of the perturbation's energy at high spatial frequency. With the
  orthonormal 2-D DCT-II ``C[u, v]`` of ``delta`` (``scipy.fft.dctn``, energy-preserving, DC
  included in the total) and the radial frequency ``rho(u, v) = sqrt((u / 2H)^2 + (v / 2W)^2)``
  in cycles/pixel (coefficient ``u`` of an ``H``-point DCT-II oscillates at ``u / 2H``; Nyquist =
  0.5), ``hf_share = sum_{rho > 0.25} C^2 / sum C^2``: the share of energy above half the Nyquist
  frequency (the band a 2x antialiased down-scale removes; what the Laplacian term of X-Mark
  suppresses, X-Mark arXiv 2602.09284). **DCT, not FFT**: the FFT's periodic extension turns the image
  border into a step wherever ``delta`` is not zero on the edge, and that step spreads energy over
  all frequencies (measured: it reversed the ranking of two generators); the DCT's symmetric
  extension adds no such edge. ``basis="fft"`` (``rho`` from ``numpy.fft.fftfreq``) is kept for
  comparison. NaN for ``delta = 0``; ``hf_share_mean`` is the mean over perturbed images and
  ``hf_share_pooled`` the energy-weighted share over all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

HF_CUTOFF = 0.25  # cycles/pixel = half the Nyquist frequency
PER_IMAGE = ("psnr", "ssim", "linf", "l2", "linf_levels", "l2_levels", "hf_share")


def _check_pair(clean_u8: np.ndarray, wm_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(clean_u8), np.asarray(wm_u8)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    if a.ndim != 3 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(
            f"expected two non-empty (N, H, W) arrays of one shape, got {a.shape}, {b.shape}"
        )
    return a, b


def _radial_frequency(h: int, w: int, basis: str) -> np.ndarray:
    """Radial spatial frequency (cycles/pixel) of every coefficient of an ``h x w`` transform."""
    if basis == "dct":
        fu, fv = np.arange(h) / (2.0 * h), np.arange(w) / (2.0 * w)
    elif basis == "fft":
        fu, fv = np.fft.fftfreq(h), np.fft.fftfreq(w)
    else:
        raise ValueError(f"basis must be 'dct' or 'fft', got {basis!r}")
    return np.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)


def high_frequency_energy(
    delta: np.ndarray, basis: str = "dct", cutoff: float = HF_CUTOFF
) -> tuple[np.ndarray, np.ndarray]:
    """Per image ``(energy above cutoff, total energy)`` of ``delta`` ``(N, H, W)`` (docstring)."""
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim != 3:
        raise ValueError(f"delta must be (N, H, W), got {d.shape}")
    if basis == "dct":
        power = scipy.fft.dctn(d, type=2, axes=(-2, -1), norm="ortho") ** 2
    else:
        power = np.abs(np.fft.fft2(d, axes=(-2, -1))) ** 2
    high = _radial_frequency(d.shape[-2], d.shape[-1], basis) > cutoff
    return power[:, high].sum(axis=1), power.reshape(len(d), -1).sum(axis=1)


#: Images per SSIM call. torchmetrics filters float64 images with an 11 x 11 Gaussian through
#: ``conv2d``, which on the CPU unfolds every pixel's window (im2col): about 240 MB per 224-px
#: image and 4x that at 448 px, so a whole quality block at once needed 54 GB at N = 4,000
#: (``benchmarks/scale.py``). Chunking keeps that to a few images; SSIM is per image, so the
#: values do not change.
SSIM_CHUNK = 4


def _per_image(
    a: np.ndarray, b: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-image metrics of one block of pairs, and the DCT energies ``(hf, total)``."""
    x = torch.from_numpy(a).to(torch.float64).div(255.0).unsqueeze(1)
    xw = torch.from_numpy(b).to(torch.float64).div(255.0).unsqueeze(1)
    psnr = peak_signal_noise_ratio(xw, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).numpy()
    ssim = np.concatenate(
        [
            structural_similarity_index_measure(
                xw[i : i + SSIM_CHUNK], x[i : i + SSIM_CHUNK], data_range=1.0, reduction="none"
            ).numpy()
            for i in range(0, len(x), SSIM_CHUNK)
        ]
    )
    delta_levels = b.astype(np.float64) - a.astype(np.float64)
    flat = delta_levels.reshape(len(a), -1)
    linf_levels = np.abs(flat).max(axis=1)
    l2_levels = np.sqrt((flat**2).sum(axis=1))
    hf, total = high_frequency_energy(delta_levels)
    changed = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(changed, hf / np.where(changed, total, 1.0), np.nan)
    psnr = np.where(changed, psnr, np.inf)
    per_image = {
        "psnr": psnr,
        "ssim": ssim,
        "linf": linf_levels / 255.0,
        "l2": l2_levels / 255.0,
        "linf_levels": linf_levels,
        "l2_levels": l2_levels,
        "hf_share": share,
    }
    return per_image, hf, total


def release_quality_blocks(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """:func:`release_quality` over ``(clean_u8, wm_u8)`` blocks, one block in memory at a time
    (a CheXpert-scale release marks thousands of images; the metrics are per image, so the
    result equals one call on the concatenated blocks up to the last bit of rounding)."""
    parts = [_per_image(*_check_pair(a, b)) for a, b in pairs]
    if not parts:
        raise ValueError("no image pairs")
    per_image = {k: np.concatenate([p[0][k] for p in parts]) for k in PER_IMAGE}
    hf = np.concatenate([p[1] for p in parts])
    total = np.concatenate([p[2] for p in parts])
    psnr, ssim, share = per_image["psnr"], per_image["ssim"], per_image["hf_share"]
    linf_levels, l2_levels = per_image["linf_levels"], per_image["l2_levels"]
    n, changed = len(psnr), total > 0
    n_changed = int(changed.sum())
    summary: dict[str, float] = {
        "n_images": float(n),
        "n_unchanged": float(n - n_changed),
        "psnr_mean": float(psnr[changed].mean()) if n_changed else math.nan,
        "ssim_mean": float(ssim.mean()),
        "linf_max": float(per_image["linf"].max()),
        "linf_max_levels": float(linf_levels.max()),
        "l2_mean": float(per_image["l2"].mean()),
        "l2_mean_levels": float(l2_levels.mean()),
        "hf_share_mean": float(share[changed].mean()) if n_changed else math.nan,
        "hf_share_pooled": float(hf.sum() / total.sum()) if n_changed else math.nan,
    }
    return {"per_image": per_image, "summary": summary}


def release_quality(clean_u8: np.ndarray, wm_u8: np.ndarray) -> dict[str, Any]:
    """``{"per_image": {metric: (N,) array}, "summary": {metric: float}}`` (module docstring)."""
    return release_quality_blocks([(clean_u8, wm_u8)])


def quality_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per variant (e.g. ``main``, ``no_laplacian``): ``variant`` then the metrics.

    Each row is ``{"variant": name, **release_quality(...)["summary"]}`` (other keys kept as
    columns); write it with ``to_csv`` or ``to_markdown``.
    """
    if not rows:
        raise ValueError("quality_table needs at least one row")
    for i, row in enumerate(rows):
        if "variant" not in row:
            raise ValueError(f"row {i} has no 'variant' key")
    names = [r["variant"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names: {names}")
    df = pd.DataFrame(rows)
    return df[["variant", *[c for c in df.columns if c != "variant"]]].reset_index(drop=True)
