"""prep/r{res}.h5 writer and readers (docs/architecture.md layout; medmark.data.h5)."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medmark.data.h5 import H5Images, H5ImageWriter, read_images, read_table
from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError

torch.set_num_threads(1)
R = 16
SPLITS = ("release", "test", "verification")


def _rows(n: int, seed: int = 0) -> list[tuple[np.ndarray, str, str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (R, R), dtype=np.uint8)
        labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=len(OBSERVATIONS)).astype(np.float32)
        out.append(
            (
                image,
                f"patient{i // 2:05d}/study1/view1_frontal_{i}",
                f"patient{i // 2:05d}",
                SPLITS[i % 3],
                labels,
            )
        )
    return out


def _write(path: Path, rows, capacity: int | None = None, **kw) -> Path:
    with H5ImageWriter(path, len(rows) if capacity is None else capacity, R, **kw) as w:
        for row in rows:
            w.append(*row)
    return path


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_writer_layout_and_attrs(tmp_path: Path) -> None:
    rows = _rows(7)
    path = _write(
        tmp_path / "r16.h5",
        rows,
        capacity=9,
        attrs={"created_by": "test"},
        compression_level=6,
        block=3,
    )
    assert _leftovers(tmp_path) == ["r16.h5"]
    with h5py.File(path, "r") as f:
        images = f["images"]
        assert images.shape == (7, R, R) and images.dtype == np.uint8
        assert images.chunks == (1, R, R)
        assert images.compression == "gzip" and images.compression_opts == 6 and images.shuffle
        for name in ("ids", "patients", "splits"):
            assert f[name].shape == (7,)
            assert h5py.check_string_dtype(f[name].dtype).encoding == "utf-8"
        assert f["labels"].shape == (7, 14) and f["labels"].dtype == np.float32
        assert f.attrs["resolution"] == R
        assert list(f.attrs["observations"]) == list(OBSERVATIONS)
        assert f.attrs["created_by"] == "test"
        np.testing.assert_array_equal(images[:], np.stack([r[0] for r in rows]))
        assert list(f["ids"].asstr()[:]) == [r[1] for r in rows]
        assert list(f["patients"].asstr()[:]) == [r[2] for r in rows]
        assert list(f["splits"].asstr()[:]) == [r[3] for r in rows]
        np.testing.assert_array_equal(
            f["labels"][:], np.stack([r[4] for r in rows])
        )  # NaN == NaN here


def test_writer_is_atomic_and_aborts_on_error(tmp_path: Path) -> None:
    path = tmp_path / "r16.h5"
    rows = _rows(3)
    with pytest.raises(RuntimeError, match="boom"), H5ImageWriter(path, 3, R) as w:
        w.append(*rows[0])
        assert not path.exists() and w.temp_path.exists() and w.temp_path.parent == tmp_path
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_writer_rejects_bad_rows(tmp_path: Path) -> None:
    image, iid, patient, split, labels = _rows(1)[0]
    with H5ImageWriter(tmp_path / "a.h5", 1, R) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.append(image.astype(np.float32), iid, patient, split, labels)
        with pytest.raises(ValueError, match="labels"):
            w.append(image, iid, patient, split, labels[:5])
        w.append(image, iid, patient, split, labels)
        with pytest.raises(ValueError, match="capacity"):
            w.append(image, iid, patient, split, labels)
    with pytest.raises(ValueError, match="set by the writer"):
        H5ImageWriter(tmp_path / "b.h5", 1, R, attrs={"resolution": 3})
    assert _leftovers(tmp_path) == ["a.h5"]


def test_read_table_and_read_images(tmp_path: Path) -> None:
    rows = _rows(10)
    path = _write(tmp_path / "r.h5", rows)
    table = read_table(path)
    assert list(table.columns) == ["row", "image_id", "patient", "split", *OBSERVATIONS]
    assert table["row"].tolist() == list(range(10))
    assert table["image_id"].tolist() == [r[1] for r in rows]
    assert table["split"].tolist() == [r[3] for r in rows]
    np.testing.assert_array_equal(
        table[list(OBSERVATIONS)].to_numpy(), np.stack([r[4] for r in rows])
    )
    want = [7, 2, 3, 3, 9, 0, 4, 5]  # unsorted, repeated, contiguous runs
    got = read_images(path, want)
    assert got.dtype == np.uint8 and got.shape == (len(want), R, R)
    np.testing.assert_array_equal(got, np.stack([rows[i][0] for i in want]))
    assert read_images(path, []).shape == (0, R, R)
    with pytest.raises(IndexError):
        read_images(path, [10])
    with pytest.raises(IndexError):
        read_images(path, [-1])


def test_readers_reject_wrong_layout(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, R, R), np.uint8)
    with pytest.raises(DataFormatError, match="'ids'"):
        read_table(path)
    with pytest.raises(DataFormatError, match="bad.h5"):
        H5Images(path)


def test_h5images_items_selection_and_transform(tmp_path: Path) -> None:
    rows = _rows(9)
    path = _write(tmp_path / "r.h5", rows)
    ds = H5Images(path)
    assert len(ds) == 9 and ds.resolution == R
    x, row = ds[4]
    assert x.dtype == torch.float32 and x.shape == (1, R, R) and row == 4
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    torch.testing.assert_close(x[0], torch.from_numpy(rows[4][0]).float() / 255)

    test = H5Images(path, split="test")
    assert test.rows.tolist() == [1, 4, 7]
    sub = H5Images(path, indices=[8, 1, 2, 4], split="test")
    assert sub.rows.tolist() == [1, 4]
    assert [r for _, r in sub.__getitems__([1, 0])] == [4, 1]
    with pytest.raises(ValueError, match="no-such-split"):
        H5Images(path, split="no-such-split")
    with pytest.raises(IndexError):
        H5Images(path, indices=[9])

    flipped = H5Images(path, indices=[3], transform=lambda t: 1.0 - t)
    torch.testing.assert_close(flipped[0][0], 1.0 - ds[3][0])


def test_h5images_pickles_without_handle(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.h5", _rows(4))
    ds = H5Images(path)
    x0, _ = ds[0]  # opens the handle
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and ds._file is not None
    torch.testing.assert_close(clone[0][0], x0)
    ds.close()
    torch.testing.assert_close(ds[0][0], x0)  # reopens


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_h5images_in_dataloader_workers(tmp_path: Path, context: str) -> None:
    rows = _rows(24)
    path = _write(tmp_path / "r.h5", rows)
    ds = H5Images(path, indices=np.arange(24)[::-1])
    ds[0]  # the parent holds an open handle: workers must open their own
    loader = DataLoader(
        ds, batch_size=5, shuffle=False, num_workers=2, multiprocessing_context=context
    )
    xs, rs = zip(*loader, strict=True)
    x, r = torch.cat(xs), torch.cat(rs)
    assert r.tolist() == list(range(23, -1, -1))
    want = (
        torch.from_numpy(np.stack([rows[i][0] for i in r.tolist()])).float().div(255).unsqueeze(1)
    )
    torch.testing.assert_close(x, want)
