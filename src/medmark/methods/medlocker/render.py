"""Logo rendering, batched over candidate parameters and quantised to 8 bits (Jia et al., ACM MM
2020, the watermark blend; Pu et al., arXiv 2303.09858, abstract: the visible logo).

For parameters θ = (α, u, v) and a logo (value ``L``, opacity ``M``) placed with its top-left
corner at column ``u``, row ``v``, the per-pixel opacity is ``a = min(M, α)`` on the footprint
(0 elsewhere) and the locked image is ``round(255 · ((1 − a) · x + a · L)) / 255``. Rendering runs
in float64 on the CPU whatever device the model uses, so that the image the optimiser scores is
bit for bit the image that is saved and the one a verifier re-renders.
"""

from __future__ import annotations

import numpy as np
import torch


def _place(
    patch: torch.Tensor, u: torch.Tensor, v: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """``(P, H, W)``: ``patch (h, w)`` at top-left ``(u[p], v[p])`` of an ``H × W`` zero image."""
    h, w = patch.shape
    rows = torch.arange(shape[0])[None, :] - v[:, None]  # (P, H)
    cols = torch.arange(shape[1])[None, :] - u[:, None]  # (P, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = patch[rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return out * inside


def render_u8(
    image: np.ndarray | torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    alpha: np.ndarray | torch.Tensor,
    u: np.ndarray | torch.Tensor,
    v: np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """Locked images ``uint8 (P, H, W)`` of one ``uint8 (H, W)`` image for ``P`` parameter sets.

    The footprint must lie inside the image (``0 <= u <= W - w``, ``0 <= v <= H - h``).
    """
    x = torch.as_tensor(np.asarray(image))
    if x.dtype != torch.uint8 or x.ndim != 2:
        raise ValueError(f"image must be uint8 (H, W), got {x.dtype} {tuple(x.shape)}")
    a_ = torch.as_tensor(np.asarray(alpha, dtype=np.float64)).reshape(-1)
    u_ = torch.as_tensor(np.asarray(u, dtype=np.int64)).reshape(-1)
    v_ = torch.as_tensor(np.asarray(v, dtype=np.int64)).reshape(-1)
    h, w = mask.shape
    hh, ww = x.shape
    if bool((u_ < 0).any() or (v_ < 0).any() or (u_ > ww - w).any() or (v_ > hh - h).any()):
        raise ValueError(f"footprint {h}x{w} outside the {hh}x{ww} image at some (u, v)")
    m = _place(mask.to(torch.float64), u_, v_, (hh, ww))
    val = _place(value.to(torch.float64), u_, v_, (hh, ww))
    a = torch.minimum(m, a_[:, None, None])
    xf = x.to(torch.float64)[None] / 255.0
    out = (1.0 - a) * xf + a * val
    return torch.round(out * 255.0).clamp(0, 255).to(torch.uint8)


def to_model_input(images_u8: torch.Tensor) -> torch.Tensor:
    """``uint8 (P, H, W)`` → float32 ``(P, 1, H, W)`` in ``[0, 1]`` (the classifiers' input)."""
    return images_u8.to(torch.float32).unsqueeze(1) / 255.0
