"""Frontal images -> ``prep/r{res}.h5`` (docs/architecture.md; docs/methods/data.md, streaming).

Selection: rows of ``metadata.csv`` with ``view == Frontal`` that have an entry in
``splits.csv``, in metadata order. Decoding: 8-bit grayscale with PIL (``LOAD_TRUNCATED_IMAGES``
off, pixels forced with ``load()``); JPEGs are first reduced in the DCT domain with
``Image.draft`` to the smallest 1/2/4/8 scale that keeps both sides >= ``2 * res``; the result
is resized to ``res x res`` (aspect not kept, as is usual for CheXpert) with PIL's antialiased
LANCZOS filter (the sharpest of PIL's filters, all of which low-pass when shrinking). Measured
on the synthetic ``bench`` JPEGs (960-1024 px) at res 224: draft-then-LANCZOS takes ~4 ms per
image against ~7.5 ms for full-decode-then-LANCZOS and differs from it by 0.43 grey levels on
average (BOX: 1.0, drafting to >= res only: 1.0); the largest differences (up to ~50 levels, a
few dozen pixels) sit on the sharp edges of burned-in markers. Stored value
``u8 = round(255 * x)`` with ``x`` the resampled decoded image in ``[0, 1]``; no per-image
standardisation (models normalise internally). 16-bit grayscale images (common in radiograph
sets exported from DICOM, often holding 10-14 significant bits) are read, not rejected: their
own range ``[min, max]`` is stretched linearly to ``[0, 1]`` (a constant image gives 0) before
the same LANCZOS resize and 8-bit rounding.

Images were decoded and validated at ingest (``medmark.data.chexpert.probe_image``), which owns
the pipeline's one quarantine; a file that fails here changed after ingest. Bad images of a
pass are collected and reported together.

Decoding runs in worker processes over bounded, ordered batches and streams into
:class:`medmark.data.h5.H5ImageWriter`, so peak memory does not grow with N.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

import medmark
from medmark.data.chexpert import ErrorList
from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError
from medmark.io import write_text_atomic

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
METADATA_COLUMNS = ("image_id", "path", "patient", "view", *OBSERVATIONS)
SPLITS_COLUMNS = ("image_id", "patient", "split")
QUARANTINE_COLUMNS = ("image_id", "path", "reason")
PROVENANCE_KEYS = ("source_sha256", "config_hash", "created_by")
VIEWS = ("Frontal", "Lateral")
LABEL_VALUES = (1.0, 0.0, -1.0)
RESAMPLING = Image.Resampling.LANCZOS
DRAFT_FACTOR = 2
MODES = ("L", "LA", "RGB", "RGBA", "P", "1")  # converted to L (ITU-R 601 luma)
MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale: min-max to 8 bits
BATCH = 16  # images per worker task
NORMALIZATION = (
    "u8 = round(255 * x), x in [0, 1] = the decoded 8-bit grayscale source image, JPEG "
    f"DCT-domain draft to >= {DRAFT_FACTOR}*res per side, then PIL LANCZOS antialiased resize "
    "to res x res (aspect not preserved); 16-bit grayscale sources: the image's [min, max] "
    "stretched to [0, 1] first; no other per-image standardisation; read x = u8 / 255; "
    "models normalise internally"
)
# Decoder failures that mean "this file is not a readable image" (UnidentifiedImageError is an
# OSError). Anything else is a bug and propagates.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class _Item:
    line: int  # 1-based metadata.csv line (header = 1)
    image_id: str
    rel_path: str
    abs_path: str
    patient: str
    split: str
    labels: np.ndarray


def load_resized(path: str | os.PathLike[str], resolution: int) -> np.ndarray:
    """Decode one image to 8-bit grayscale and resize it: uint8 ``(resolution, resolution)``.

    Raises ``OSError``/``SyntaxError``/``ValueError`` (see module doc) for unreadable files.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("L", (DRAFT_FACTOR * resolution, DRAFT_FACTOR * resolution))
        im.load()
        if im.mode in MODES_16:
            return _load_16bit(im, resolution)
        if im.mode not in MODES:
            raise ValueError(
                f"unsupported image mode {im.mode!r} (expected 8-bit or 16-bit grayscale, RGB)"
            )
        gray = im if im.mode == "L" else im.convert("L")
        out = gray.resize((resolution, resolution), RESAMPLING)
    return np.array(out, dtype=np.uint8)  # writable copy


def _load_16bit(im: Image.Image, resolution: int) -> np.ndarray:
    """16-bit grayscale: ``[min, max]`` of the image -> ``[0, 1]``, LANCZOS, ``round(255 x)``."""
    arr = np.asarray(im).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    x = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    small = Image.fromarray(x.astype(np.float32)).resize((resolution, resolution), RESAMPLING)
    return np.rint(255.0 * np.clip(np.asarray(small), 0.0, 1.0)).astype(np.uint8)


def _init_worker() -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def _decode_batch(
    paths: Sequence[str], resolution: int
) -> list[tuple[np.ndarray | None, str | None]]:
    """Worker task: ``(image, None)`` or ``(None, reason)`` per path, in order."""
    out: list[tuple[np.ndarray | None, str | None]] = []
    for path in paths:
        try:
            out.append((load_resized(path, resolution), None))
        except FileNotFoundError:
            out.append((None, "missing file"))
        except _DECODE_ERRORS as exc:
            out.append((None, f"{type(exc).__name__}: {exc}"))
    return out


@contextlib.contextmanager
def _truncated_images_rejected() -> Iterator[None]:
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


class _Decoder:
    """Ordered, bounded parallel decoding: at most ``2 * workers`` batches are in flight.

    Worker processes are started in ``__enter__`` (``fork`` on Linux, so a Snakemake script
    needs no ``__main__`` guard; ``spawn`` elsewhere), before the caller opens its HDF5 output,
    so no child inherits an open HDF5 handle. ``workers == 1`` decodes in this process.
    """

    def __init__(self, resolution: int, workers: int) -> None:
        self.resolution, self.workers = resolution, workers
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Decoder:
        if self.workers > 1:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._ex = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context(method),
                initializer=_init_worker,
            )
            self._ex.submit(_init_worker).result()  # start the workers now
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

    def decode(self, paths: Sequence[str]) -> Iterator[tuple[np.ndarray | None, str | None]]:
        """``(image, None)`` or ``(None, reason)`` per path, in order."""
        n_batches = 4 * self.workers
        batch = max(1, min(BATCH, math.ceil(len(paths) / n_batches)))
        batches = (paths[i : i + batch] for i in range(0, len(paths), batch))
        if self._ex is None:
            with _truncated_images_rejected():
                for b in batches:
                    yield from _decode_batch(b, self.resolution)
            return
        pending: deque[Future[list[tuple[np.ndarray | None, str | None]]]] = deque()
        for b in batches:
            pending.append(self._ex.submit(_decode_batch, b, self.resolution))
            if len(pending) >= 2 * self.workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataFormatError("file not found", file=str(path))
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    for col in columns:
        if col not in df.columns:
            raise DataFormatError("missing column", file=str(path), row=1, field=col)
    dup = df["image_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataFormatError(
            f"duplicate image_id {df['image_id'].iat[i]!r}",
            file=str(path),
            row=i + 2,
            field="image_id",
        )
    return df


def _labels(df: pd.DataFrame, path: Path) -> np.ndarray:
    """``(len(df), 14)`` float32 labels; blank -> NaN; anything but 1/0/-1/blank is an error."""
    out = np.empty((len(df), len(OBSERVATIONS)), dtype=np.float32)
    for j, name in enumerate(OBSERVATIONS):
        text = df[name].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = (text != "").to_numpy() & ~values.isin(LABEL_VALUES).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataFormatError(
                f"label {df[name].iat[i]!r} not in 1.0/0.0/-1.0/blank",
                file=str(path),
                row=int(df.index[i]) + 2,
                field=name,
            )
        out[:, j] = values.to_numpy(dtype=np.float32, na_value=np.nan)
    return out


def _inside(root: Path, rel: str, metadata_csv: Path, line: int) -> str:
    """Absolute path of ``rel`` under ``root``; ``..``/absolute escapes are a DataFormatError.

    The check is on the normalised path string (symlinks inside ``root`` are followed, so a
    pre-staged tree may link to another disk).
    """
    if not rel or os.path.isabs(rel):
        raise DataFormatError(
            f"path {rel!r} must be relative to the dataset root",
            file=str(metadata_csv),
            row=line,
            field="path",
        )
    full = os.path.normpath(os.path.join(root, rel))
    if os.path.commonpath([root, full]) != str(root):
        raise DataFormatError(
            f"path {rel!r} escapes the dataset root {root}",
            file=str(metadata_csv),
            row=line,
            field="path",
        )
    return full


def _select(metadata_csv: Path, splits_csv: Path, root: Path) -> tuple[list[_Item], dict[str, int]]:
    """Frontal rows with a split, in metadata order, validated (ids, labels, paths, patients)."""
    meta = _read_csv(metadata_csv, METADATA_COLUMNS)
    splits = _read_csv(splits_csv, SPLITS_COLUMNS)
    bad_view = ~meta["view"].isin(VIEWS).to_numpy()
    if bad_view.any():
        i = int(np.flatnonzero(bad_view)[0])
        raise DataFormatError(
            f"view {meta['view'].iat[i]!r} not in {VIEWS}",
            file=str(metadata_csv),
            row=i + 2,
            field="view",
        )
    empty = (splits["split"].str.strip() == "").to_numpy()
    if empty.any():
        raise DataFormatError(
            "empty split",
            file=str(splits_csv),
            row=int(np.flatnonzero(empty)[0]) + 2,
            field="split",
        )
    unknown = ~splits["image_id"].isin(meta["image_id"]).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise DataFormatError(
            f"image_id {splits['image_id'].iat[i]!r} is not in {metadata_csv}",
            file=str(splits_csv),
            row=i + 2,
            field="image_id",
        )
    meta_patient = splits["image_id"].map(dict(zip(meta["image_id"], meta["patient"], strict=True)))
    mismatch = (splits["patient"] != meta_patient).to_numpy()
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise DataFormatError(
            f"patient {splits['patient'].iat[i]!r} of {splits['image_id'].iat[i]!r} differs from "
            f"{meta_patient.iat[i]!r} in {metadata_csv}",
            file=str(splits_csv),
            row=i + 2,
            field="patient",
        )
    split_of = dict(zip(splits["image_id"], splits["split"], strict=True))

    frontal = meta[meta["view"] == "Frontal"]
    chosen = frontal[frontal["image_id"].isin(list(split_of))]
    labels = _labels(chosen, metadata_csv)
    items: list[_Item] = []
    columns = zip(
        (chosen.index.to_numpy() + 2).tolist(),
        chosen["image_id"].tolist(),
        chosen["path"].tolist(),
        chosen["patient"].tolist(),
        strict=True,
    )
    for k, (line, image_id, rel, patient) in enumerate(columns):
        items.append(
            _Item(
                line=line,
                image_id=image_id,
                rel_path=rel,
                abs_path=_inside(root, rel, metadata_csv, line),
                patient=patient,
                split=split_of[image_id],
                labels=labels[k],
            )
        )
    counts = {
        "n_metadata_rows": len(meta),
        "n_frontal": len(frontal),
        "n_lateral": len(meta) - len(frontal),
        "n_frontal_without_split": len(frontal) - len(chosen),
        "n_selected": len(items),
    }
    return items, counts


def _attrs(provenance: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in PROVENANCE_KEYS if k not in provenance]
    if missing:
        raise ValueError(f"provenance is missing {missing}")
    attrs: dict[str, Any] = {"normalization": NORMALIZATION, "medmark_version": medmark.__version__}
    for key, value in provenance.items():
        if key in ("resolution", "observations", *attrs):
            raise ValueError(f"provenance key {key!r} is set by preprocess itself")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(
                f"provenance[{key!r}] must be str/int/float/bool, got {type(value).__name__}"
            )
        attrs[key] = value
    return attrs


def _write_quarantine(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(QUARANTINE_COLUMNS)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def preprocess_to_h5(
    metadata_csv: str | os.PathLike[str],
    splits_csv: str | os.PathLike[str],
    root: str | os.PathLike[str],
    resolution: int,
    out_h5: str | os.PathLike[str],
    quarantine_csv: str | os.PathLike[str] | None = None,
    on_bad_image: str = "error",
    provenance: Mapping[str, Any] | None = None,
    compression_level: int = 4,
    workers: int = 2,
) -> dict[str, Any]:
    """Write frontal images with a split to ``out_h5`` (layout in :mod:`medmark.data.h5`).

    ``root`` is the dataset root the metadata ``path`` column is relative to; ``provenance``
    must hold ``source_sha256``, ``config_hash`` and ``created_by`` (stored as attrs with
    ``resolution``, ``observations``, ``normalization``, ``medmark_version``). Bad images
    (missing, unreadable, truncated): ``on_bad_image="error"`` raises one DataFormatError
    listing every bad image of the pass (file and metadata line; capped, with the count),
    leaving no ``out_h5`` (nor temp file) behind; ``"skip"`` leaves them out and lists them in
    ``quarantine_csv`` (``image_id, path, reason``), written on success (header only if none).
    The pipeline validates images at ingest and calls this with ``"error"`` and no
    ``quarantine_csv``: its one quarantine is ``data/quarantine.csv``.
    ``workers == 1`` decodes in this process. Returns counts and timing.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    attrs = _attrs(provenance or {})
    metadata_csv, splits_csv, out_h5 = Path(metadata_csv), Path(splits_csv), Path(out_h5)
    if on_bad_image == "skip" and quarantine_csv is None:
        raise ValueError('on_bad_image="skip" needs a quarantine_csv')
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DataFormatError(f"dataset root {root} is not a directory", file=str(metadata_csv))
    items, counts = _select(metadata_csv, splits_csv, root)
    if not items:
        raise DataFormatError("no frontal image has a split", file=str(splits_csv))

    t0 = time.perf_counter()
    quarantined: list[tuple[str, str, str]] = []
    errors = ErrorList(f"unreadable images listed in {metadata_csv}")
    step = max(1, len(items) // 10)
    with _Decoder(resolution, workers) as decoder:
        # Imported after the workers started: they need neither torch nor h5py.
        from medmark.data.h5 import H5ImageWriter

        with (
            H5ImageWriter(out_h5, len(items), resolution, attrs, compression_level) as writer,
            contextlib.closing(decoder.decode([it.abs_path for it in items])) as images,
        ):
            for k, (item, (image, reason)) in enumerate(zip(items, images, strict=True), start=1):
                if image is None:
                    if on_bad_image == "error":
                        errors.add(
                            DataFormatError(
                                f"cannot read image {item.abs_path} (image_id {item.image_id}): "
                                f"{reason} (ingest validated it: did the file change since?)",
                                file=str(metadata_csv),
                                row=item.line,
                                field="path",
                            )
                        )
                        continue
                    log.warning(
                        "quarantined %s (%s line %d): %s",
                        item.abs_path,
                        metadata_csv,
                        item.line,
                        reason,
                    )
                    quarantined.append((item.image_id, item.rel_path, str(reason)))
                else:
                    writer.append(image, item.image_id, item.patient, item.split, item.labels)
                if k % step == 0:
                    log.info("r%d: %d/%d images", resolution, k, len(items))
            errors.raise_if_any()
            if writer.count == 0:
                raise DataFormatError(
                    f"all {len(items)} selected images are unreadable", file=str(metadata_csv)
                )
            if quarantine_csv is not None:
                _write_quarantine(Path(quarantine_csv), quarantined)
    seconds = time.perf_counter() - t0
    stats: dict[str, Any] = {
        **counts,
        "n_written": writer.count,
        "n_quarantined": len(quarantined),
        "resolution": resolution,
        "workers": workers,
        "seconds": seconds,
        "images_per_s": len(items) / seconds if seconds > 0 else float("inf"),
        "out_h5": str(out_h5),
        "quarantine_csv": None if quarantine_csv is None else str(quarantine_csv),
    }
    log.info(
        "wrote %s: %d images at %dx%d, %d quarantined, %.1f images/s",
        out_h5,
        writer.count,
        resolution,
        resolution,
        len(quarantined),
        stats["images_per_s"],
    )
    return stats
