"""The visible logo of MedLocker (Pu et al., arXiv 2303.09858; Jia et al., ACM MM 2020).

A logo is a grey value map ``value`` and an opacity map ``mask``, both in ``[0, 1]``. It is stored
as an 8-bit ``LA`` PNG (grey, alpha). The default logo is drawn by :func:`draw_default_logo`
(a ring around a medical cross), so the repository ships no downloaded asset; any ``L``/``LA``/
``RGBA`` PNG can replace it (``medlocker.logo``). An ``L`` image without alpha is read as a white
logo whose opacity is its luminance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from medmark.errors import DataFormatError
from medmark.io import atomic_path

#: Side of the generated default logo (pixels) and the supersampling used to antialias it.
DEFAULT_SIDE, SUPERSAMPLE = 128, 4


@dataclass(frozen=True)
class Logo:
    """A logo at its stored size: ``value`` and ``mask`` float32 ``(h, w)`` in ``[0, 1]``."""

    value: np.ndarray
    mask: np.ndarray
    sha256: str

    def scaled(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(value, mask)`` resized (area, aspect kept) so the longer side is ``side`` pixels."""
        if side < 1:
            raise ValueError(f"logo side must be >= 1, got {side}")
        h, w = self.mask.shape
        scale = side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        out = []
        for a in (self.value, self.mask):
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
            out.append(F.interpolate(t, size=size, mode="area")[0, 0].clamp(0, 1))
        return out[0], out[1]


def draw_default_logo(side: int = DEFAULT_SIDE) -> np.ndarray:
    """The default logo as ``uint8 (side, side, 2)`` grey+alpha: a white ring and medical cross."""
    big = side * SUPERSAMPLE
    alpha = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(alpha)
    m = big // 16
    d.ellipse((m, m, big - m, big - m), outline=255, width=big // 10)
    arm, half = big // 2 - 3 * m, big // 9
    c = big // 2
    d.rectangle((c - half, c - arm, c + half, c + arm), fill=255)
    d.rectangle((c - arm, c - half, c + arm, c + half), fill=255)
    alpha = alpha.resize((side, side), Image.Resampling.BOX)
    grey = np.full((side, side), 255, dtype=np.uint8)
    return np.stack([grey, np.asarray(alpha, dtype=np.uint8)], axis=-1)


def write_default_logo(path: str | Path, side: int = DEFAULT_SIDE) -> Path:
    """Write the default logo as an ``LA`` PNG (atomically) and return its path."""
    with atomic_path(path, suffix=".tmp.png") as tmp:
        Image.fromarray(draw_default_logo(side), mode="LA").save(tmp, format="PNG")
    return Path(path)


def load_logo(path: str | Path) -> Logo:
    """Read a logo PNG (``L``, ``LA``, ``RGB`` or ``RGBA``); the hash is of the file's bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("LA", "RGBA", "PA", "P"):
                la = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
                value, mask = la[..., 0], la[..., 1]
            elif mode in ("L", "RGB", "1"):
                lum = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
                value, mask = np.ones_like(lum), lum
            else:
                raise DataFormatError(f"unsupported logo mode {mode!r}", file=str(path))
    except OSError as e:
        raise DataFormatError(f"cannot read the logo: {e}", file=str(path)) from e
    if not mask.any():
        raise DataFormatError("the logo is fully transparent", file=str(path))
    return Logo(value=value, mask=mask, sha256=hashlib.sha256(raw).hexdigest())
