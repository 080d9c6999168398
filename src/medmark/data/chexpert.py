"""CheXpert CSV parser to the normalised metadata table, and the NIH-layout box CSV loader.

Implements the CheXpert format of ``docs/methods/data.md`` and the ``data/metadata.csv``
contract of ``docs/architecture.md``. Rows are streamed with :mod:`csv` (224k rows in the real
set), every field is validated and errors name the file, the 1-based line (header = 1) and the
column; a pass collects every bad entry and fails once, listing them (:class:`ErrorList`).
Images are validated here, at ingest, by decoding them (:func:`probe_image`): what ingest
counts is what preprocess can read. Under ``on_bad_image="skip"`` every row with a bad path, a
missing file or an unreadable or unsupported image goes to the one quarantine table.
"""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image, ImageFile

from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError

CHEXPERT_COLUMNS: tuple[str, ...] = (
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    *OBSERVATIONS,
)
METADATA_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "patient", "study", "view", "ap_pa", "sex", "age", "width", "height",
    "source_split", *OBSERVATIONS,
)  # fmt: skip
QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "csv", "line", "reason")
BOX_COLUMNS: tuple[str, ...] = ("image_id", "finding", "x", "y", "w", "h")
BOX_HEADER: tuple[str, ...] = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
ON_BAD_IMAGE = ("error", "skip")
VIEWS = ("Frontal", "Lateral")
AP_PA = ("AP", "PA", "LL", "RL", "")
SEXES = ("Male", "Female", "Unknown", "")

# Readable image modes: 8-bit (converted to L) and 16-bit grayscale (scaled to 8 bits in
# medmark.data.preprocess.load_resized). Anything else (CMYK, float, ...) is unsupported.
IMAGE_MODES = ("L", "LA", "RGB", "RGBA", "P", "1", "I;16", "I;16B", "I;16L", "I;16N", "I")
MAX_LISTED = 20  # bad entries listed in one error message (the count is always given)
# Decoder failures that mean "this file is not a readable image".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

PATH_RE = re.compile(
    r"^(?P<dataset>CheXpert-v1\.0(?:-small)?(?:-xmark)?)/(?P<split>train|valid|test)/"
    r"(?P<patient>patient\d+)/(?P<study>study\d+)/(?P<view>view\d+_(?:frontal|lateral))"
    r"\.(?:jpg|jpeg|png)$"
)


@dataclass
class ParseResult:
    """Metadata rows (``METADATA_COLUMNS``) and the images left out under ``on_bad_image=skip``."""

    metadata: pd.DataFrame
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS


def parse_label(value: str, *, file: str, row: int, field: str) -> float:
    """CheXpert label cell -> 1.0 / 0.0 / -1.0 / NaN (blank); anything else is an error."""
    v = value.strip()
    if v == "":
        return math.nan
    try:
        x = float(v)
    except ValueError:
        x = math.nan
    if x not in (1.0, 0.0, -1.0):
        raise DataFormatError(
            f"label value {value!r} is not one of 1.0, 0.0, -1.0 or blank",
            file=file,
            row=row,
            field=field,
        )
    return x


def check_relative_path(p: str, *, file: str, row: int, field: str) -> PurePosixPath:
    """A dataset-relative POSIX path that cannot leave the dataset root (no '..', not absolute)."""
    if p == "":
        raise DataFormatError("empty path", file=file, row=row, field=field)
    if "\\" in p:
        raise DataFormatError(
            f"path {p!r} uses '\\'; expected '/' separators", file=file, row=row, field=field
        )
    pp = PurePosixPath(p)
    if pp.is_absolute() or re.match(r"^[A-Za-z]:", p):
        raise DataFormatError(
            f"absolute path {p!r}; paths must be relative to the dataset root",
            file=file,
            row=row,
            field=field,
        )
    if ".." in pp.parts:
        raise DataFormatError(
            f"path {p!r} escapes the dataset root ('..')", file=file, row=row, field=field
        )
    return pp


class ErrorList:
    """Bad entries of one pass, raised together as one DataFormatError (capped, with the count).

    A single entry is re-raised as it is (its ``file``/``row``/``field`` intact).
    """

    def __init__(self, what: str = "bad entries") -> None:
        self.what = what
        self.errors: list[DataFormatError] = []

    def add(self, error: DataFormatError | str) -> None:
        self.errors.append(error if isinstance(error, DataFormatError) else DataFormatError(error))

    def __len__(self) -> int:
        return len(self.errors)

    def raise_if_any(self) -> None:
        n = len(self.errors)
        if n == 0:
            return
        if n == 1:
            raise self.errors[0]
        listed = "\n".join(f"  - {e}" for e in self.errors[:MAX_LISTED])
        more = f"\n  ... and {n - MAX_LISTED} more" if n > MAX_LISTED else ""
        shown = f"first {MAX_LISTED} listed" if n > MAX_LISTED else "all listed"
        raise DataFormatError(f"{n} {self.what} ({shown}):\n{listed}{more}")


def probe_image(path: str | Path) -> tuple[int, int] | str:
    """``(width, height)`` of an image that decodes completely, or why it cannot be used.

    The pixels are decoded (JPEGs at 1/8 scale in the DCT domain, so it is cheap) with
    truncated files refused, and the mode must be one of :data:`IMAGE_MODES`: a file that
    passes is a file preprocess can read.
    """
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()
    except FileNotFoundError:
        return "missing image file"
    except IsADirectoryError:
        return "is a directory, not an image file"
    except _DECODE_ERRORS as e:
        return f"unreadable image ({type(e).__name__}: {e})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    if mode not in IMAGE_MODES:
        return f"unsupported image mode {mode!r} (8-bit or 16-bit grayscale, RGB, palette)"
    if w < 1 or h < 1:
        return f"image size {w}x{h}"
    return int(w), int(h)


image_size = probe_image  # the name the parsers used before images were decoded at ingest


def probe_images(paths: Sequence[str | Path], workers: int = 1) -> list[tuple[int, int] | str]:
    """:func:`probe_image` for every path, in order; ``workers > 1`` decodes in processes."""
    if workers <= 1 or len(paths) < 64:
        return [probe_image(p) for p in paths]
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as ex:
        return list(ex.map(probe_image, [str(p) for p in paths], chunksize=64))


def chexpert_image_id(path: str, *, file: str, row: int, field: str = "Path") -> re.Match[str]:
    """Validate a CheXpert ``Path`` and return its pattern match (patient, study, view)."""
    check_relative_path(path, file=file, row=row, field=field)
    m = PATH_RE.match(path)
    if m is None:
        raise DataFormatError(
            f"path {path!r} does not match CheXpert-v1.0[-small]/<split>/patientN/studyN/viewN_<frontal|lateral>.jpg",
            file=file, row=row, field=field,
        )  # fmt: skip
    return m


def iter_csv(csv_path: Path) -> Iterator[tuple[int, list[str] | None, list[str]]]:
    """Yield ``(line, header, row)``; the first item is ``(1, None, header)``. Skips blank rows."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataFormatError("empty CSV (no header)", file=str(csv_path), row=1)
        yield 1, None, header
        for row in reader:
            if not row or all(c.strip() == "" for c in row):
                continue
            yield reader.line_num, header, row


def check_columns(header: list[str], expected: tuple[str, ...], file: str) -> dict[str, int]:
    """Exact column set (any order); the error lists missing and unexpected columns."""
    missing = [c for c in expected if c not in header]
    unexpected = [c for c in header if c not in expected]
    dup = sorted({c for c in header if header.count(c) > 1})
    if missing or unexpected or dup:
        raise DataFormatError(
            f"wrong columns: missing {missing}, unexpected {unexpected}, duplicated {dup}",
            file=file, row=1,
        )  # fmt: skip
    return {c: header.index(c) for c in expected}


def finalize_metadata(data: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Records (or a frame) -> metadata DataFrame with the contract's columns and dtypes."""
    df = pd.DataFrame(data) if not isinstance(data, list) else pd.DataFrame.from_records(data)
    df = df.reindex(columns=list(METADATA_COLUMNS))
    for c in ("image_id", "path", "patient", "study", "view", "ap_pa", "sex", "source_split"):
        df[c] = df[c].astype(str)
    df["age"] = pd.to_numeric(df["age"]).astype("Int64")
    for c in ("width", "height"):
        df[c] = pd.to_numeric(df[c]).astype("int64")
    for c in OBSERVATIONS:
        df[c] = pd.to_numeric(df[c]).astype("float64")
    return df


def finalize_quarantine(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(QUARANTINE_COLUMNS))
    df["line"] = df["line"].astype("int64")
    return df


def parse_age(value: str, *, file: str, row: int, field: str) -> int | None:
    v = value.strip()
    if v == "":
        return None
    try:
        age = float(v)
    except ValueError:
        age = math.nan
    if not (0 <= age <= 130) or age != int(age):
        raise DataFormatError(
            f"age {value!r} is not an integer in 0..130", file=file, row=row, field=field
        )
    return int(age)


def parse_chexpert_csv(
    csv_path: Path,
    root: Path,
    source_split: str,
    on_bad_image: str = "error",
    workers: int = 1,
) -> ParseResult:
    """Parse a CheXpert ``train.csv``/``valid.csv`` into the metadata table.

    ``root`` is the directory that contains ``CheXpert-v1.0[-small]/`` (``Path`` is relative to
    it). Every image is decoded (:func:`probe_image`, ``workers`` processes). A bad ``Path``
    (escaping the root, not the CheXpert pattern), a missing file or an unreadable/unsupported
    image is an error naming file and line, or with ``on_bad_image="skip"`` goes to
    ``ParseResult.quarantine`` with its reason. Errors are collected over the whole file and
    raised once (:class:`ErrorList`).
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    csv_path, root = Path(csv_path), Path(root)
    file = str(csv_path)
    records: list[dict] = []
    quarantine: list[dict] = []
    errors = ErrorList(f"bad entries in {file}")
    seen: dict[str, int] = {}
    col: dict[str, int] = {}
    for line, header, row in iter_csv(csv_path):
        if header is None:
            col = check_columns(row, CHEXPERT_COLUMNS, file)
            continue
        if len(row) != len(header):
            errors.add(
                DataFormatError(
                    f"{len(row)} fields, the header has {len(header)}", file=file, row=line
                )
            )
            continue
        path = row[col["Path"]].strip()
        try:
            m = chexpert_image_id(path, file=file, row=line)
        except DataFormatError as e:
            if on_bad_image == "skip":
                reason = str(e).split(": ", 1)[-1]
                quarantine.append({"path": path, "csv": file, "line": line, "reason": reason})
            else:
                errors.add(e)
            continue
        try:
            records.append(_chexpert_record(row, col, m, path, source_split, file, line, seen))
        except DataFormatError as e:
            errors.add(e)
    sizes = probe_images([root / r["path"] for r in records], workers)
    kept: list[dict] = []
    for rec, size in zip(records, sizes, strict=True):
        line = rec.pop("_line")
        if isinstance(size, str):
            if on_bad_image == "error":
                errors.add(
                    DataFormatError(
                        f"{size}: {root / rec['path']}", file=file, row=line, field="Path"
                    )
                )
            else:
                quarantine.append({"path": rec["path"], "csv": file, "line": line, "reason": size})
            continue
        rec["width"], rec["height"] = size
        kept.append(rec)
    errors.raise_if_any()
    return ParseResult(finalize_metadata(kept), finalize_quarantine(quarantine))


def _chexpert_record(
    row: list[str],
    col: dict[str, int],
    m: re.Match[str],
    path: str,
    source_split: str,
    file: str,
    line: int,
    seen: dict[str, int],
) -> dict:
    """One metadata record (without the image size) from a row whose ``Path`` is valid."""
    image_id = f"{m['patient']}/{m['study']}/{m['view']}"
    if image_id in seen:
        raise DataFormatError(
            f"duplicate image {image_id!r} (first on line {seen[image_id]})",
            file=file,
            row=line,
            field="Path",
        )
    seen[image_id] = line
    view = row[col["Frontal/Lateral"]].strip()
    if view not in VIEWS:
        raise DataFormatError(
            f"value {view!r} not in {VIEWS}", file=file, row=line, field="Frontal/Lateral"
        )
    ap_pa = row[col["AP/PA"]].strip()
    if ap_pa not in AP_PA:
        raise DataFormatError(f"value {ap_pa!r} not in {AP_PA}", file=file, row=line, field="AP/PA")
    sex = row[col["Sex"]].strip()
    if sex not in SEXES:
        raise DataFormatError(f"value {sex!r} not in {SEXES}", file=file, row=line, field="Sex")
    age = parse_age(row[col["Age"]], file=file, row=line, field="Age")
    labels = {o: parse_label(row[col[o]], file=file, row=line, field=o) for o in OBSERVATIONS}
    return {
        "image_id": image_id, "path": path, "patient": m["patient"], "study": m["study"],
        "view": view, "ap_pa": ap_pa, "sex": sex, "age": age, "width": 0, "height": 0,
        "source_split": source_split, **labels, "_line": line,
    }  # fmt: skip


def parse_box_csv(
    csv_path: Path,
    image_id_of: Callable[[str, int], str],
    finding_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Load a box CSV in the NIH ``BBox_List_2017.csv`` layout into ``BOX_COLUMNS`` rows.

    Header ``Image Index,Finding Label,Bbox [x,y,w,h]`` (+ NIH's trailing empty columns); boxes
    in source pixels. ``image_id_of(image_index, line)`` maps ``Image Index`` to the metadata
    ``image_id`` (and validates it); ``finding_map`` renames findings (e.g. NIH -> CheXpert).
    """
    csv_path = Path(csv_path)
    file = str(csv_path)
    records: list[dict] = []
    for line, header, row in iter_csv(csv_path):
        if header is None:
            if tuple(c.strip() for c in row[:6]) != BOX_HEADER or any(c.strip() for c in row[6:]):
                raise DataFormatError(
                    f"box CSV header must be {','.join(BOX_HEADER)} (NIH BBox_List_2017 layout), got {','.join(row)}",
                    file=file, row=1,
                )  # fmt: skip
            continue
        if len(row) < 6 or any(c.strip() for c in row[6:]):
            raise DataFormatError("expected 6 fields (+ empty trailing ones)", file=file, row=line)
        index, finding = row[0].strip(), row[1].strip()
        if not finding:
            raise DataFormatError("empty finding", file=file, row=line, field="Finding Label")
        values = []
        for name, cell in zip(("x", "y", "w", "h"), row[2:6], strict=True):
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise DataFormatError(
                    f"box {name} {cell!r} is not a finite number", file=file, row=line, field=name
                )
            values.append(v)
        if values[2] <= 0 or values[3] <= 0:
            raise DataFormatError(
                f"box has non-positive size w={values[2]} h={values[3]}", file=file, row=line
            )
        name = finding_map.get(finding, finding) if finding_map else finding
        records.append(
            dict(zip(BOX_COLUMNS, (image_id_of(index, line), name, *values), strict=True))
        )
    return pd.DataFrame.from_records(records, columns=list(BOX_COLUMNS))


def parse_chexpert_boxes(csv_path: Path) -> pd.DataFrame:
    """Boxes whose ``Image Index`` is a CheXpert ``Path`` (the synthetic generator's side CSV)."""
    file = str(csv_path)

    def image_id(index: str, line: int) -> str:
        m = chexpert_image_id(index, file=file, row=line, field="Image Index")
        return f"{m['patient']}/{m['study']}/{m['view']}"

    return parse_box_csv(Path(csv_path), image_id)
