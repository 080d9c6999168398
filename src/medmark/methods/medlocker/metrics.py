"""What MedLocker changes and what survives it (Pu et al., arXiv 2303.09858,
abstract: lesions left intact; docs/methods/medlocker.md, "What is measured"): image quality
outside the logo footprint, and the input transforms of the attacks on the lock.

Attacks (docs/methods/medlocker.md, "Attacks"): inpainting the logo (OpenCV's Telea ``inpaint``)
with the footprint known or estimated by template matching, cropping to the lungs, down-and-up
resizing and JPEG re-encoding. Fine-tuning a diagnostic model on locked images is a training
attack and lives in :mod:`medmark.stages.medlocker`.
"""

from __future__ import annotations

import io
import math

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

#: SSIM window (kornia), also the margin around the footprint left out of "outside" SSIM.
SSIM_WINDOW = 7


def footprint_mask(shape: tuple[int, int], u: int, v: int, h: int, w: int) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[v : v + h, u : u + w] = True
    return out


def quality_outside(
    clean: np.ndarray, locked: np.ndarray, footprint: np.ndarray
) -> dict[str, float]:
    """PSNR over the pixels outside the footprint (∞ when identical) and the mean SSIM map over
    the pixels whose SSIM window lies wholly outside it; whole-image PSNR/SSIM for context."""
    c = torch.from_numpy(clean.astype(np.float32) / 255.0)[None, None]
    x = torch.from_numpy(locked.astype(np.float32) / 255.0)[None, None]
    smap = kornia.metrics.ssim(c, x, SSIM_WINDOW, padding="same")[0, 0].numpy()
    grown = cv2.dilate(footprint.astype(np.uint8), np.ones((SSIM_WINDOW, SSIM_WINDOW), np.uint8))
    out = ~footprint
    far = grown == 0
    return {
        "psnr_outside": _psnr(clean[out], locked[out]),
        "ssim_outside": float(smap[far].mean()) if far.any() else math.nan,
        "psnr": _psnr(clean, locked),
        "ssim": float(smap.mean()),
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) if a.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def inpaint(image: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """OpenCV Telea inpainting of ``mask`` (bool) in a ``uint8 (H, W)`` image."""
    return cv2.inpaint(image, mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def estimate_footprint(image: np.ndarray, logo_mask: np.ndarray) -> tuple[int, int]:
    """The attacker's estimate of the logo position ``(u, v)``: the best normalised
    cross-correlation of the logo's opacity map with the image (the logo is public)."""
    score = cv2.matchTemplate(
        image.astype(np.float32), logo_mask.astype(np.float32), cv2.TM_CCOEFF_NORMED
    )
    v, u = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(u), int(v)


def logo_pixels(shape: tuple[int, int], logo_mask: np.ndarray, u: int, v: int) -> np.ndarray:
    """Pixels of the logo (opacity > 0) placed at ``(u, v)``: what inpainting fills."""
    h, w = logo_mask.shape
    out = np.zeros(shape, dtype=bool)
    out[v : v + h, u : u + w] = logo_mask > 0
    return out


def crop_resize(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Crop the normalised box ``(x0, y0, x1, y1)`` and resize back to the image size (bilinear)."""
    r = image.shape[0]
    x0, y0, x1, y1 = (int(round(b * r)) for b in box)
    t = torch.from_numpy(image[y0:y1, x0:x1].astype(np.float32))[None, None]
    out = F.interpolate(t, size=image.shape, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].round().clamp(0, 255).numpy().astype(np.uint8)


def down_up(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` and back (bilinear, antialiased)."""
    r = image.shape[0]
    small = max(1, round(r * factor))
    t = torch.from_numpy(image.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(small, small), mode="bilinear", antialias=True)
    t = F.interpolate(t, size=image.shape, mode="bilinear", antialias=True)
    return t[0, 0].round().clamp(0, 255).numpy().astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip (PIL) at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"), dtype=np.uint8)
