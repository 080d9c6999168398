"""JPEG -> prep/r{res}.h5 (medmark.data.preprocess; docs/architecture.md, docs/methods/data.md)."""

from __future__ import annotations

import csv
import os
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medmark.data.h5 import read_images, read_table
from medmark.data.labels import OBSERVATIONS
from medmark.data.preprocess import QUARANTINE_COLUMNS, load_resized, preprocess_to_h5
from medmark.errors import DataFormatError

torch.set_num_threads(1)
PROVENANCE = {"source_sha256": "ab" * 32, "config_hash": "cd" * 32, "created_by": "pytest"}
SPLITS = ("release", "verification", "independent", "test")
PREFIX = "CheXpert-v1.0-small/train"


@dataclass
class Fixture:
    root: Path
    meta: pd.DataFrame
    splits: pd.DataFrame
    out: Path

    @property
    def metadata_csv(self) -> Path:
        return self.root.parent / "metadata.csv"

    @property
    def splits_csv(self) -> Path:
        return self.root.parent / "splits.csv"

    def save(self) -> None:
        self.meta.to_csv(self.metadata_csv, index=False)
        self.splits.to_csv(self.splits_csv, index=False)

    def file(self, image_id: str) -> Path:
        return self.root / self.meta.set_index("image_id").loc[image_id, "path"]

    def run(self, resolution: int = 16, **kw) -> dict:
        kw = {"provenance": PROVENANCE, "workers": 1, **kw}
        return preprocess_to_h5(
            self.metadata_csv,
            self.splits_csv,
            self.root,
            resolution,
            self.out / f"r{resolution}.h5",
            self.out / f"r{resolution}.quarantine.csv",
            **kw,
        )


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / (w / 5)) * np.cos(yy / (h / 4))
    return (base + rng.normal(0, 8, (h, w))).clip(0, 255).astype(np.uint8)


def make_dataset(tmp_path: Path, n_patients: int = 6, size: int = 40, seed: int = 0) -> Fixture:
    """CheXpert-layout tree: one frontal per patient, a lateral for even patients; the last
    patient's frontal has no split. Labels cycle through 1/0/-1/blank."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "root"
    meta, splits = [], []
    values = ["1.0", "0.0", "-1.0", ""]
    for p in range(n_patients):
        patient = f"patient{p:05d}"
        views = [("view1_frontal", "Frontal", "AP")] + (
            [("view2_lateral", "Lateral", "")] if p % 2 == 0 else []
        )
        for name, view, ap_pa in views:
            image_id = f"{patient}/study1/{name}"
            rel = f"{PREFIX}/{image_id}.jpg"
            h, w = size + 4 * (p % 3), size + 2 * (p % 4)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, h, w)).save(root / rel, quality=92)
            row = {
                "image_id": image_id,
                "path": rel,
                "patient": patient,
                "study": "study1",
                "view": view,
                "ap_pa": ap_pa,
                "sex": "Female",
                "age": 40 + p,
                "width": w,
                "height": h,
                "source_split": "train",
            }
            row.update({obs: values[(p + j) % 4] for j, obs in enumerate(OBSERVATIONS)})
            meta.append(row)
            if not (view == "Frontal" and p == n_patients - 1):
                splits.append({"image_id": image_id, "patient": patient, "split": SPLITS[p % 4]})
    fx = Fixture(root, pd.DataFrame(meta), pd.DataFrame(splits), tmp_path / "out")
    fx.save()
    return fx


def _expected(fx: Fixture) -> pd.DataFrame:
    split_of = dict(zip(fx.splits["image_id"], fx.splits["split"], strict=True))
    sel = fx.meta[(fx.meta["view"] == "Frontal") & fx.meta["image_id"].isin(list(split_of))].copy()
    sel["split"] = sel["image_id"].map(split_of)
    return sel.reset_index(drop=True)


def _labels(df: pd.DataFrame) -> np.ndarray:
    return df[list(OBSERVATIONS)].replace("", np.nan).astype(np.float32).to_numpy()


def test_layout_order_filters_and_provenance(tmp_path: Path) -> None:
    fx = make_dataset(tmp_path)
    stats = fx.run(16, workers=2, compression_level=5)
    want = _expected(fx)
    assert stats["n_written"] == len(want) == 5 and stats["n_quarantined"] == 0
    assert stats["n_lateral"] == 3 and stats["n_frontal_without_split"] == 1
    with h5py.File(fx.out / "r16.h5", "r") as f:
        images = f["images"]
        assert images.shape == (5, 16, 16) and images.dtype == np.uint8
        assert images.chunks == (1, 16, 16) and images.compression == "gzip"
        assert images.compression_opts == 5 and images.shuffle
        assert f["labels"].dtype == np.float32 and f["labels"].shape == (5, 14)
        assert list(f["ids"].asstr()[:]) == want["image_id"].tolist()
        assert list(f["patients"].asstr()[:]) == want["patient"].tolist()
        assert list(f["splits"].asstr()[:]) == want["split"].tolist()
        labels = f["labels"][:]
        assert np.isnan(labels).any() and (labels == -1).any()
        np.testing.assert_array_equal(labels, _labels(want))  # NaN stays NaN
        attrs = dict(f.attrs)
    for key in ("source_sha256", "config_hash", "created_by"):
        assert attrs[key] == PROVENANCE[key]
    assert attrs["resolution"] == 16 and list(attrs["observations"]) == list(OBSERVATIONS)
    assert "255" in attrs["normalization"] and attrs["medmark_version"]
    assert not any("lateral" in i for i in want["image_id"])
    with open(fx.out / "r16.quarantine.csv") as f:
        assert list(csv.reader(f)) == [list(QUARANTINE_COLUMNS)]
    assert sorted(os.listdir(fx.out)) == ["r16.h5", "r16.quarantine.csv"]


def test_two_resolutions_store_the_resized_decode(tmp_path: Path) -> None:
    fx = make_dataset(tmp_path)
    for res in (8, 24):
        fx.run(res)
        table = read_table(fx.out / f"r{res}.h5")
        assert table["image_id"].tolist() == _expected(fx)["image_id"].tolist()
        got = read_images(fx.out / f"r{res}.h5", range(len(table)))
        assert got.shape == (len(table), res, res)
        ref = np.stack([load_resized(fx.file(i), res) for i in table["image_id"]])
        np.testing.assert_array_equal(got, ref)


def test_draft_decode_matches_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(_image(np.random.default_rng(1), 520, 480)).save(path, quality=92)
    fast = load_resized(path, 32).astype(float)
    with Image.open(path) as im:
        im.load()
        assert im.size == (480, 520)
        full = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS)).astype(float)
    assert np.abs(fast - full).mean() < 1.0 and np.abs(fast - full).max() <= 6


def test_resize_is_antialiased(tmp_path: Path) -> None:
    fx = make_dataset(tmp_path, n_patients=3)
    board = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    for image_id in fx.meta["image_id"]:
        Image.fromarray(board).save(fx.file(image_id), quality=100)
    fx.run(16)
    got = read_images(fx.out / "r16.h5", [0, 1]).astype(float)
    assert np.abs(got - 127.5).max() < 12, got  # mid-grey, not aliased stripes
    aliased = np.asarray(Image.fromarray(board).resize((16, 16), Image.Resampling.NEAREST))
    assert np.abs(aliased.astype(float) - 127.5).min() > 100  # what aliasing would look like


def _break(fx: Fixture, kind: str, image_id: str) -> Path:
    path = fx.file(image_id)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(b"this is not a jpeg" * 10)
    else:
        path.unlink()
    return path


@pytest.mark.parametrize(("kind", "workers"), [("truncated", 1), ("garbage", 2), ("missing", 1)])
def test_bad_image_error_names_file_and_leaves_nothing(
    tmp_path: Path, kind: str, workers: int
) -> None:
    fx = make_dataset(tmp_path)
    bad = _break(fx, kind, "patient00003/study1/view1_frontal")
    line = int(np.flatnonzero(fx.meta["image_id"] == "patient00003/study1/view1_frontal")[0]) + 2
    with pytest.raises(DataFormatError) as err:
        fx.run(16, workers=workers)
    assert str(bad) in str(err.value) and f"line {line}" in str(err.value)
    assert err.value.row == line and err.value.file == str(fx.metadata_csv)
    assert not fx.out.exists() or os.listdir(fx.out) == []


def test_error_lists_every_bad_image_of_the_pass(tmp_path: Path) -> None:
    """Two bad images, one error naming both (before the fix: only the first)."""
    fx = make_dataset(tmp_path)
    a = _break(fx, "truncated", "patient00001/study1/view1_frontal")
    b = _break(fx, "missing", "patient00004/study1/view1_frontal")
    with pytest.raises(DataFormatError) as err:
        fx.run(16, workers=2)
    msg = str(err.value)
    assert "2 unreadable images" in msg and str(a) in msg and str(b) in msg
    assert "did the file change since" in msg
    assert not fx.out.exists() or os.listdir(fx.out) == []


def test_pipeline_has_one_quarantine_file() -> None:
    """The workflow declares one quarantine (data/quarantine.csv); preprocess writes none.

    Before the fix rule preprocess also wrote prep/r{res}.quarantine.csv, and the README and
    the config comment each named a different one.
    """
    repo = Path(__file__).resolve().parents[1]
    rules = "".join(p.read_text() for p in (repo / "rules").glob("*.smk"))
    lines = [ln.strip() for ln in rules.splitlines() if "quarantine" in ln]
    assert lines == ['quarantine="results/data/quarantine.csv",']
    readme = (repo / "README.md").read_text()
    config = (repo / "config" / "config.yaml").read_text()
    assert "r{res}.quarantine.csv" not in readme + config
    assert "results/data/quarantine.csv" in readme and "results/data/quarantine.csv" in config


def test_skip_quarantines_bad_images(tmp_path: Path) -> None:
    fx = make_dataset(tmp_path)
    _break(fx, "truncated", "patient00001/study1/view1_frontal")
    _break(fx, "missing", "patient00004/study1/view1_frontal")
    stats = fx.run(16, on_bad_image="skip", workers=2)
    assert stats["n_quarantined"] == 2 and stats["n_written"] == 3
    table = read_table(fx.out / "r16.h5")
    assert table["image_id"].tolist() == [
        "patient00000/study1/view1_frontal",
        "patient00002/study1/view1_frontal",
        "patient00003/study1/view1_frontal",
    ]
    with h5py.File(fx.out / "r16.h5", "r") as f:
        assert f["images"].shape == (3, 16, 16) and f["labels"].shape == (3, 14)
    q = pd.read_csv(fx.out / "r16.quarantine.csv")
    assert list(q.columns) == list(QUARANTINE_COLUMNS)
    assert q["image_id"].tolist() == [
        "patient00001/study1/view1_frontal",
        "patient00004/study1/view1_frontal",
    ]
    assert q["path"].tolist() == [f"{PREFIX}/{i}.jpg" for i in q["image_id"]]
    assert q["reason"].iloc[1] == "missing file" and "truncated" in q["reason"].iloc[0]


@pytest.mark.parametrize(
    "bad_path", ["../outside.jpg", "{abs}", "CheXpert-v1.0-small/../../outside.jpg"]
)
def test_path_escaping_root_is_rejected(tmp_path: Path, bad_path: str) -> None:
    fx = make_dataset(tmp_path)
    outside = tmp_path / "outside.jpg"
    Image.fromarray(_image(np.random.default_rng(2), 40, 40)).save(outside)
    fx.meta.loc[2, "path"] = bad_path.format(abs=outside)
    fx.save()
    assert fx.meta.loc[2, "view"] == "Frontal"
    with pytest.raises(DataFormatError, match="line 4, field 'path'"):
        fx.run(16)
    assert not fx.out.exists()


@pytest.mark.parametrize(
    ("table", "row", "column", "value", "match"),
    [
        ("meta", 0, "Edema", "2.0", r"line 2, field 'Edema'"),
        ("meta", 1, "view", "Oblique", r"line 3, field 'view'"),
        ("splits", 1, "patient", "patient09999", r"splits.csv, line 3, field 'patient'"),
        ("splits", 0, "image_id", "patient09999/study1/view1_frontal", r"line 2, field 'image_id'"),
    ],
)
def test_bad_tables_are_rejected(
    tmp_path: Path, table: str, row: int, column: str, value: str, match: str
) -> None:
    fx = make_dataset(tmp_path)
    getattr(fx, table).loc[row, column] = value
    fx.save()
    with pytest.raises(DataFormatError, match=match):
        fx.run(16)
    assert not fx.out.exists()


def test_missing_provenance_is_rejected(tmp_path: Path) -> None:
    fx = make_dataset(tmp_path, n_patients=2)
    with pytest.raises(ValueError, match="config_hash"):
        fx.run(16, provenance={"source_sha256": "x", "created_by": "y"})


def _peak_bytes(tmp_path: Path, n: int) -> tuple[int, int]:
    fx = make_dataset(tmp_path / str(n), n_patients=n, size=24, seed=n)
    tracemalloc.start()
    try:
        stats = fx.run(128, workers=2, compression_level=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, stats["n_written"]


def test_peak_memory_does_not_grow_with_n(tmp_path: Path) -> None:
    # Both sizes saturate the decode batch (16) and the writer block (64), so a streaming
    # pipeline has the same pixel buffers for both; keeping every image would add holding_all.
    peak_small, n_small = _peak_bytes(tmp_path, 150)
    peak_large, n_large = _peak_bytes(tmp_path, 600)
    holding_all = (n_large - n_small) * 128 * 128
    assert peak_large - peak_small < 0.25 * holding_all, (peak_small, peak_large, holding_all)
