"""A tiny release fixture shared by the release tests of every method: a 40-row prep HDF5
(release/verification/test splits), its saliency HDF5 and data/metadata.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np

from medmark.data.h5 import H5ImageWriter
from medmark.data.labels import OBSERVATIONS


def release_dataset(tmp_path: Path, res: int, obs: str) -> dict[str, Path]:
    """Write the fixture under ``tmp_path``; labels of ``obs`` cycle 1, 0, blank, -1, ..."""
    rng = np.random.default_rng(0)
    n = 40
    splits = ["release"] * 24 + ["verification"] * 8 + ["test"] * 8
    pe = np.array([1.0, 0.0, np.nan, -1.0, 1.0, 0.0, 0.0, 1.0] * 5)
    labels = np.full((n, len(OBSERVATIONS)), np.nan, np.float32)
    labels[:, OBSERVATIONS.index(obs)] = pe
    labels[::3, 0] = 1.0
    ids = [f"patient{i:05d}/study1/view1_frontal" for i in range(n)]
    images = rng.integers(30, 220, size=(n, res, res), dtype=np.uint8)
    prep = tmp_path / "prep" / f"r{res}.h5"
    attrs = {"source_sha256": "abc", "config_hash": "def", "created_by": "test"}
    with H5ImageWriter(prep, n, res, attrs) as w:
        for i in range(n):
            w.append(images[i], ids[i], f"patient{i:05d}", splits[i], labels[i])
    yy, xx = np.mgrid[0:res, 0:res] / res
    blob = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.05).astype(np.float16)
    sal = tmp_path / "saliency" / f"resnet18_r{res}.h5"
    sal.parent.mkdir(parents=True)
    with h5py.File(sal, "w") as f:
        f.create_dataset("maps", data=np.repeat(blob[None], n, 0))
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    meta = tmp_path / "data" / "metadata.csv"
    meta.parent.mkdir(parents=True)
    cols = ["image_id", "path", "patient", "study", "view", "ap_pa", "sex", "age", "width",
            "height", "source_split", *OBSERVATIONS]  # fmt: skip
    with open(meta, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(cols)
        for i in range(n):
            lab = ["" if np.isnan(v) else f"{v:.1f}" for v in labels[i]]
            wr.writerow([ids[i], f"CheXpert-v1.0-small/train/{ids[i]}.jpg", f"patient{i:05d}",
                         "study1", "Frontal", "AP" if i % 2 else "PA", "Male" if i % 3 else "Female",
                         str(40 + i), "320", "390", "train", *lab])  # fmt: skip
    return {"prep": prep, "saliency": sal, "metadata": meta, "root": tmp_path}
