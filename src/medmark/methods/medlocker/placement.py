"""Lesion-free logo placement: forbidden maps and feasible positions (Pu et al., arXiv 2303.09858,
abstract: lesion regions stay untouched; docs/methods/medlocker.md, "Placement").

The logo footprint (its ``h × w`` bounding box at top-left ``(u, v)``: column, row) must not meet
the forbidden region: lesion boxes dilated by ``margin`` pixels. With the integral image ``S`` of
the forbidden map, position ``(u, v)`` is feasible iff the footprint sum
``S[v+h, u+w] - S[v, u+w] - S[v+h, u] + S[v, u]`` is 0: one vectorised pass gives every position.

Boxes by source (docs/methods/medlocker.md): ``true`` (the synthetic set's and NIH's
``BBox_List`` boxes, in source pixels, scaled to the preprocessed square like the images),
``saliency`` (top ``top_frac`` pixels of a saliency map → connected components → boxes, for
CheXpert which ships none) and ``anatomy`` (a fixed normalised atlas of lungs and heart).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from medmark.errors import DataFormatError

#: Normalised (x0, y0, x1, y1) boxes of the right lung, left lung and heart on a frontal
#: radiograph resized to a square (the anatomy mode's atlas; generous, it only keeps the logo off).
ANATOMY_ATLAS: tuple[tuple[float, float, float, float], ...] = (
    (0.12, 0.12, 0.50, 0.82),
    (0.50, 0.12, 0.88, 0.82),
    (0.35, 0.45, 0.72, 0.85),
)


def boxes_in_pixels(
    boxes: pd.DataFrame, metadata: pd.DataFrame, resolution: int
) -> dict[str, np.ndarray]:
    """Lesion boxes per image id as float ``(k, 4)`` ``x0, y0, x1, y1`` at ``resolution``.

    Source boxes (``x, y, w, h`` in source pixels, ``boxes.csv``) are scaled by
    ``resolution / width`` and ``resolution / height`` of the source image (``metadata.csv``),
    as preprocessing resizes without keeping the aspect.
    """
    for col in ("image_id", "x", "y", "w", "h"):
        if col not in boxes.columns:
            raise DataFormatError("missing column", file="boxes.csv", field=col)
    for col in ("image_id", "width", "height"):
        if col not in metadata.columns:
            raise DataFormatError("missing column", file="metadata.csv", field=col)
    size = metadata.set_index("image_id")[["width", "height"]]
    out: dict[str, list[list[float]]] = {}
    for row in boxes.itertuples(index=False):
        if row.image_id not in size.index:
            raise DataFormatError(
                f"box of unknown image {row.image_id!r}", file="boxes.csv", field="image_id"
            )
        w0, h0 = size.loc[row.image_id]
        sx, sy = resolution / float(w0), resolution / float(h0)
        x0, y0 = float(row.x) * sx, float(row.y) * sy
        out.setdefault(row.image_id, []).append(
            [x0, y0, x0 + float(row.w) * sx, y0 + float(row.h) * sy]
        )
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def saliency_boxes(saliency: np.ndarray, top_frac: float, min_pixels: int = 1) -> np.ndarray:
    """Boxes ``(k, 4)`` of the connected components of the top ``top_frac`` saliency pixels."""
    if not 0.0 < top_frac < 1.0:
        raise ValueError(f"top_frac must be in (0, 1), got {top_frac}")
    s = np.asarray(saliency, dtype=np.float64)
    thr = np.quantile(s, 1.0 - top_frac)
    # a map mostly at its minimum: the minimum is not "top" (else the whole image is a box)
    labels, _ = ndimage.label(s > thr if thr <= s.min() else s >= thr)
    out = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        ys, xs = sl
        if (ys.stop - ys.start) * (xs.stop - xs.start) >= min_pixels:
            out.append([xs.start, ys.start, xs.stop, ys.stop])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def anatomy_boxes(resolution: int, atlas: Sequence[Sequence[float]] = ANATOMY_ATLAS) -> np.ndarray:
    """The anatomy mode's boxes (lungs and heart) at ``resolution``."""
    return np.asarray(atlas, dtype=np.float64).reshape(-1, 4) * resolution


def forbidden_map(boxes: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    """Boolean ``(H, W)`` map of the boxes dilated by ``margin`` pixels (covering pixels)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0 = max(0, int(np.floor(x0 - margin)))
        r0 = max(0, int(np.floor(y0 - margin)))
        c1 = min(w, int(np.ceil(x1 + margin)))
        r1 = min(h, int(np.ceil(y1 + margin)))
        if c1 > c0 and r1 > r0:
            out[r0:r1, c0:c1] = True
    return out


def feasible_positions(forbidden: np.ndarray, fh: int, fw: int) -> np.ndarray:
    """Boolean ``(H - fh + 1, W - fw + 1)`` map: top-left ``[v, u]`` whose footprint is free.

    Integral image of ``forbidden`` with a zero first row and column; empty when the footprint
    does not fit the image.
    """
    h, w = forbidden.shape
    if fh > h or fw > w:
        return np.zeros((0, 0), dtype=bool)
    s = np.zeros((h + 1, w + 1), dtype=np.int64)
    s[1:, 1:] = forbidden.astype(np.int64).cumsum(0).cumsum(1)
    total = s[fh:, fw:] - s[:-fh, fw:] - s[fh:, :-fw] + s[:-fh, :-fw]
    return total == 0


def footprint_overlap(forbidden: np.ndarray, u: int, v: int, fh: int, fw: int) -> int:
    """Forbidden pixels under the footprint at ``(u, v)`` (direct count, for checks and tests)."""
    return int(forbidden[v : v + fh, u : u + fw].sum())


class Feasible:
    """Feasible positions of one footprint size, with sampling and snapping to the nearest one."""

    def __init__(self, feasible: np.ndarray) -> None:
        if feasible.size == 0 or not feasible.any():
            raise ValueError("no feasible position")
        self.map = feasible
        self.vs, self.us = np.nonzero(feasible)
        # For every position, the coordinates of the nearest feasible one (Euclidean).
        _, idx = ndimage.distance_transform_edt(~feasible, return_indices=True)
        self._near_v, self._near_u = idx[0], idx[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.map.shape  # type: ignore[return-value]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` feasible positions ``(u, v)`` drawn uniformly (with replacement)."""
        i = rng.integers(0, len(self.us), size=n)
        return self.us[i].copy(), self.vs[i].copy()

    def snap(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``(u, v)`` to the image and move each infeasible one to its nearest feasible."""
        hv, hu = self.shape
        vi = np.clip(np.rint(v).astype(np.int64), 0, hv - 1)
        ui = np.clip(np.rint(u).astype(np.int64), 0, hu - 1)
        return self._near_u[vi, ui], self._near_v[vi, ui]

    def ok(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Whether each ``(u, v)`` (integers inside the map) is feasible."""
        hv, hu = self.shape
        inside = (u >= 0) & (u < hu) & (v >= 0) & (v < hv)
        out = np.zeros(np.shape(u), dtype=bool)
        out[inside] = self.map[v[inside], u[inside]]
        return out


def placement(
    forbidden: np.ndarray, sizes: Sequence[tuple[int, int]]
) -> tuple[Feasible, int] | None:
    """Feasible positions of the first footprint size ``(h, w)`` in ``sizes`` that fits anywhere.

    ``sizes`` lists the configured logo size, then the fallback (smaller) sizes. Returns
    ``(feasible, index into sizes)``, or ``None`` when none fits (the caller skips and logs the
    image, ``medlocker.on_infeasible``).
    """
    for i, (fh, fw) in enumerate(sizes):
        f = feasible_positions(forbidden, fh, fw)
        if f.size and f.any():
            return Feasible(f), i
    return None
