"""The ``prep/r{res}.h5`` layout (docs/architecture.md): a streaming writer and lazy readers.

Layout: ``images`` uint8 ``(N, R, R)`` chunked ``(1, R, R)`` with gzip + shuffle, ``ids`` /
``patients`` / ``splits`` utf-8 strings ``(N,)``, ``labels`` float32 ``(N, 14)`` (NaN blank,
-1 uncertain) in :data:`medmark.data.labels.OBSERVATIONS` order; attrs ``resolution``,
``observations`` and the provenance written by :mod:`medmark.data.preprocess`.

Readers never keep an HDF5 handle across a pickle or a fork: :class:`H5Images` opens the file
lazily in the process that reads (DataLoader workers included): the dataset may be too large
to hold in memory (docs/methods/data.md, CheXpert: every stage streams).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError
from medmark.io import atomic_path

IMAGES, IDS, PATIENTS, SPLITS, LABELS = "images", "ids", "patients", "splits", "labels"
DATASETS = (IMAGES, IDS, PATIENTS, SPLITS, LABELS)
STR_DTYPE = h5py.string_dtype("utf-8")
N_OBS = len(OBSERVATIONS)


class _Aborted(Exception):
    """Raised into :func:`atomic_path` to make it delete the temporary file."""


class H5ImageWriter:
    """Stream rows into a new ``prep/r{res}.h5`` file, atomically.

    The file is written under a temporary name beside ``path`` (via
    :func:`medmark.io.atomic_path`) and renamed onto ``path`` only by :meth:`close`; :meth:`abort`
    (or leaving the ``with`` block by an exception) deletes the temporary file and leaves
    ``path`` untouched. ``capacity`` rows are preallocated; writing fewer (skipped images)
    shrinks every dataset to the rows written at close. Rows are buffered in blocks of
    ``block`` so memory stays ``O(block * R * R)`` whatever N is.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        capacity: int,
        resolution: int,
        attrs: Mapping[str, Any] | None = None,
        compression_level: int = 4,
        block: int = 64,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if not 0 <= compression_level <= 9:
            raise ValueError(f"compression_level must be in 0..9, got {compression_level}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.path = Path(path)
        self.capacity, self.resolution, self.count = int(capacity), int(resolution), 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, suffix=".tmp.h5"))
        self._closed = False
        try:
            self._file = h5py.File(self._tmp, "w")
            self._create(compression_level, dict(attrs or {}))
        except BaseException as exc:
            self.abort(exc)
            raise
        r, b = self.resolution, min(block, max(self.capacity, 1))
        self._buf_images = np.empty((b, r, r), dtype=np.uint8)
        self._buf_labels = np.empty((b, N_OBS), dtype=np.float32)
        self._buf_str: dict[str, list[str]] = {IDS: [], PATIENTS: [], SPLITS: []}
        self._buffered = 0

    @property
    def temp_path(self) -> Path:
        """The temporary file being written (renamed onto :attr:`path` by :meth:`close`)."""
        return self._tmp

    def _create(self, level: int, attrs: dict[str, Any]) -> None:
        f, n, r = self._file, self.capacity, self.resolution
        f.create_dataset(
            IMAGES,
            shape=(n, r, r),
            maxshape=(None, r, r),
            dtype=np.uint8,
            chunks=(1, r, r),
            compression="gzip",
            compression_opts=level,
            shuffle=True,
        )
        str_chunks = (max(1, min(n, 4096)),)
        for name in (IDS, PATIENTS, SPLITS):
            f.create_dataset(name, shape=(n,), maxshape=(None,), dtype=STR_DTYPE, chunks=str_chunks)
        f.create_dataset(
            LABELS,
            shape=(n, N_OBS),
            maxshape=(None, N_OBS),
            dtype=np.float32,
            chunks=(max(1, min(n, 4096)), N_OBS),
        )
        f.attrs["resolution"] = r
        f.attrs["observations"] = list(OBSERVATIONS)
        for key, value in attrs.items():
            if key in ("resolution", "observations"):
                raise ValueError(f"attr {key!r} is set by the writer itself")
            f.attrs[key] = value

    def append(
        self, image: np.ndarray, image_id: str, patient: str, split: str, labels: np.ndarray
    ) -> None:
        """Add one row: ``image`` uint8 ``(R, R)``, ``labels`` ``(14,)`` (NaN blank)."""
        if self._closed:
            raise RuntimeError("append() on a closed H5ImageWriter")
        if self.count >= self.capacity:
            raise ValueError(f"writer capacity {self.capacity} exceeded")
        r = self.resolution
        if image.dtype != np.uint8 or image.shape != (r, r):
            raise ValueError(f"image must be uint8 {(r, r)}, got {image.dtype} {image.shape}")
        labels = np.asarray(labels, dtype=np.float32)
        if labels.shape != (N_OBS,):
            raise ValueError(f"labels must have shape ({N_OBS},), got {labels.shape}")
        i = self._buffered
        self._buf_images[i] = image
        self._buf_labels[i] = labels
        self._buf_str[IDS].append(image_id)
        self._buf_str[PATIENTS].append(patient)
        self._buf_str[SPLITS].append(split)
        self._buffered += 1
        self.count += 1
        if self._buffered == len(self._buf_images):
            self._flush()

    def _flush(self) -> None:
        k = self._buffered
        if k == 0:
            return
        start = self.count - k
        f = self._file
        f[IMAGES][start : self.count] = self._buf_images[:k]
        f[LABELS][start : self.count] = self._buf_labels[:k]
        for name, values in self._buf_str.items():
            f[name][start : self.count] = np.array(values, dtype=object)
            values.clear()
        self._buffered = 0

    def close(self) -> Path:
        """Flush, shrink to the rows written, close and rename onto :attr:`path`."""
        if self._closed:
            return self.path
        try:
            self._flush()
            if self.count < self.capacity:
                for name in DATASETS:
                    ds = self._file[name]
                    ds.resize((self.count, *ds.shape[1:]))
            self._file.close()
        except BaseException as exc:
            self.abort(exc)
            raise
        self._closed = True
        self._stack.close()
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        """Close and delete the temporary file; :attr:`path` is left untouched."""
        if self._closed:
            return
        self._closed = True
        file = getattr(self, "_file", None)
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        err = exc if exc is not None else _Aborted("H5ImageWriter aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> H5ImageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def _check_layout(f: h5py.File, path: str | os.PathLike[str]) -> int:
    """Validate the datasets of the layout; return N."""
    for name in DATASETS:
        if name not in f:
            raise DataFormatError(
                "missing dataset (not a prep/r{res}.h5 file?)", file=str(path), field=name
            )
    images = f[IMAGES]
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise DataFormatError(
            f"expected uint8 (N, R, R), got {images.dtype} {images.shape}",
            file=str(path),
            field=IMAGES,
        )
    n = images.shape[0]
    for name in (IDS, PATIENTS, SPLITS, LABELS):
        if f[name].shape[0] != n:
            raise DataFormatError(
                f"has {f[name].shape[0]} rows but images has {n}", file=str(path), field=name
            )
    if f[LABELS].shape[1:] != (N_OBS,):
        raise DataFormatError(
            f"expected (N, {N_OBS}), got {f[LABELS].shape}", file=str(path), field=LABELS
        )
    return n


def _as_rows(rows: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    out = np.asarray(rows, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= n):
        bad = out[(out < 0) | (out >= n)][0]
        raise IndexError(f"row {bad} out of range for {n} rows")
    return out


def read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read ``ds[rows]`` (any order, repeats allowed) with one sorted pass over the file.

    Sorted unique rows are grouped into contiguous runs, each read with one hyperslab
    (``read_direct``) straight into the output buffer, then scattered back to request order.
    """
    uniq, inverse = np.unique(rows, return_inverse=True)
    out = np.empty((uniq.size, *ds.shape[1:]), dtype=ds.dtype)
    if uniq.size:
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [uniq.size]))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            lo = int(uniq[a])
            ds.read_direct(out, source_sel=np.s_[lo : lo + (b - a)], dest_sel=np.s_[a:b])
    if uniq.size == rows.size and np.array_equal(uniq, rows):
        return out
    return out[inverse.reshape(-1)]


def read_images(path: str | os.PathLike[str], rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 ``(len(rows), R, R)`` pixels of HDF5 ``rows``, in the order given (one sorted read)."""
    with h5py.File(path, "r") as f:
        n = _check_layout(f, path)
        return read_rows(f[IMAGES], _as_rows(rows, n))


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Row index without pixels: columns ``row, image_id, patient, split`` + the 14 labels.

    ``row`` is the HDF5 row (0-based, = the DataFrame index); labels are float32, NaN blank.
    """
    with h5py.File(path, "r") as f:
        _check_layout(f, path)
        table = pd.DataFrame(
            {
                "image_id": f[IDS].asstr()[:],
                "patient": f[PATIENTS].asstr()[:],
                "split": f[SPLITS].asstr()[:],
            }
        )
        labels = f[LABELS][:]
    table.insert(0, "row", np.arange(len(table), dtype=np.int64))
    for j, name in enumerate(OBSERVATIONS):
        table[name] = labels[:, j]
    return table


class H5Images(Dataset[tuple[torch.Tensor, int]]):
    """Torch dataset over ``prep/r{res}.h5``: item ``i`` is ``(x, row)``.

    - ``x``: ``float32`` tensor ``(1, R, R)`` equal to ``images[row] / 255`` in ``[0, 1]``
      (the architecture's image convention), then passed through ``transform`` if given
      (a callable ``Tensor -> Tensor``).
    - ``row``: ``int``, the HDF5 row (index into ``ids``/``labels``/:func:`read_table`).

    Rows: ``indices`` (HDF5 rows, in the order given; default all rows), then kept only where
    ``splits == split`` if ``split`` is given (an unknown split name is an error). The selected
    rows are :attr:`rows`. The file is opened lazily on first read in each process (so every
    DataLoader worker has its own handle) and the handle is dropped when the dataset is
    pickled. ``__getitems__`` reads a whole DataLoader batch with one sorted pass.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        indices: Sequence[int] | np.ndarray | None = None,
        split: str | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.path = Path(path)
        self.transform = transform
        with h5py.File(self.path, "r") as f:
            n = _check_layout(f, self.path)
            self.resolution = int(f[IMAGES].shape[1])
            rows = np.arange(n, dtype=np.int64) if indices is None else _as_rows(indices, n)
            if split is not None:
                splits = f[SPLITS].asstr()[:]
                if split not in set(splits.tolist()):
                    raise ValueError(
                        f"split {split!r} not in {self.path} (has {sorted(set(splits))})"
                    )
                rows = rows[splits[rows] == split]
        self.rows: np.ndarray = rows
        self._file: h5py.File | None = None
        self._images: h5py.Dataset | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def _dataset(self) -> h5py.Dataset:
        if self._images is None or self._pid != os.getpid():
            # A handle inherited through fork belongs to the parent: open our own.
            self._file = h5py.File(self.path, "r")
            self._images = self._file[IMAGES]
            self._pid = os.getpid()
        return self._images

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32).div_(255.0).unsqueeze(0)
        return self.transform(x) if self.transform is not None else x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.rows[i])
        return self._to_tensor(self._dataset()[row]), row

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        images = read_rows(self._dataset(), rows)
        return [
            (self._to_tensor(img), int(r)) for img, r in zip(images, rows.tolist(), strict=True)
        ]

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._images = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = state["_images"] = state["_pid"] = None
        return state
