"""NIH ChestX-ray14 adapter to the normalised metadata table (``docs/methods/data.md``, second adapter).

Label mapping (``NIH_TO_CHEXPERT``): NIH findings that have a CheXpert observation map to it —
Atelectasis, Cardiomegaly, Consolidation, Edema, Pneumonia, Pneumothorax unchanged;
Effusion -> Pleural Effusion; Mass and Nodule -> Lung Lesion; Pleural_Thickening -> Pleural
Other. Infiltration, Emphysema, Fibrosis and Hernia have no CheXpert column and are ignored.
NIH labels are exhaustive over its 14 findings, so a mapped column that is not mentioned is
0.0 (negative), and ``No Finding`` is 1.0 for NIH "No Finding" and 0.0 otherwise. Columns with
no NIH source (Enlarged Cardiomediastinum, Lung Opacity, Fracture, Support Devices) stay blank.
NIH has frontal views only (``View Position`` PA/AP); sizes are read from the PNG headers.

Identifiers: ``image_id`` = the ``Image Index`` stem, ``patient`` = ``patient{Patient ID:05d}``,
``study`` = ``study{Follow-up #}``; ``source_split`` = ``train_val``/``test`` when
``train_val_list.txt``/``test_list.txt`` are present, else ``all``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd

from medmark.data.chexpert import (
    ON_BAD_IMAGE,
    ErrorList,
    ParseResult,
    finalize_metadata,
    finalize_quarantine,
    image_size,
    iter_csv,
    parse_age,
    parse_box_csv,
)
from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError

DATA_ENTRY = "Data_Entry_2017.csv"
BBOX_LIST = "BBox_List_2017.csv"
NIH_REQUIRED = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
# Columns of the release that carry no information used here; any other column is an error.
NIH_OPTIONAL = (
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "",
    "Unnamed: 11",
)
NIH_TO_CHEXPERT: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
NIH_IGNORED = ("Infiltration", "Emphysema", "Fibrosis", "Hernia")
# BBox_List_2017 spells Infiltration "Infiltrate"; unmapped box findings keep their NIH name.
NIH_BOX_TO_CHEXPERT = {**NIH_TO_CHEXPERT, "Infiltrate": "Infiltrate"}
MAPPED_COLUMNS = ("No Finding", *sorted(set(NIH_TO_CHEXPERT.values())))
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\.png$")
_SEX = {"M": "Male", "F": "Female"}


def index_images(root: Path) -> dict[str, str]:
    """``{file name: path relative to root}`` of every PNG under ``root/images*/`` (recursive)."""
    root = Path(root)
    found: dict[str, str] = {}
    for top in sorted(p for p in root.glob("images*") if p.is_dir()):
        for dirpath, dirnames, files in os.walk(top):
            dirnames.sort()
            for fn in sorted(files):
                if not fn.lower().endswith(".png"):
                    continue
                rel = Path(dirpath, fn).relative_to(root).as_posix()
                if fn in found:
                    raise DataFormatError(
                        f"image {fn} found twice: {found[fn]} and {rel}", file=str(root)
                    )
                found[fn] = rel
    return found


def _split_lists(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for fname, split in (("train_val_list.txt", "train_val"), ("test_list.txt", "test")):
        p = root / fname
        if p.exists():
            for name in p.read_text().split():
                out[name] = split
    return out


def nih_labels(findings: str, *, file: str, row: int) -> dict[str, float]:
    """NIH ``Finding Labels`` (pipe-separated or ``No Finding``) -> the 14 CheXpert columns."""
    names = [n.strip() for n in findings.split("|")]
    if not findings.strip() or any(not n for n in names):
        raise DataFormatError(
            f"empty finding in {findings!r}", file=file, row=row, field="Finding Labels"
        )
    out = {o: math.nan for o in OBSERVATIONS}
    out.update({o: 0.0 for o in MAPPED_COLUMNS})
    if names == ["No Finding"]:
        out["No Finding"] = 1.0
        return out
    for n in names:
        if n in NIH_TO_CHEXPERT:
            out[NIH_TO_CHEXPERT[n]] = 1.0
        elif n not in NIH_IGNORED:
            raise DataFormatError(
                f"unknown NIH finding {n!r} (known: No Finding, {', '.join(sorted([*NIH_TO_CHEXPERT, *NIH_IGNORED]))})",
                file=file, row=row, field="Finding Labels",
            )  # fmt: skip
    return out


def _int_field(value: str, *, file: str, row: int, field: str) -> int:
    if not value.strip().isdigit():
        raise DataFormatError(
            f"{value!r} is not a non-negative integer", file=file, row=row, field=field
        )
    return int(value)


def _nih_age(value: str, *, file: str, row: int) -> int | None:
    v = value.strip()
    m = re.fullmatch(r"(\d+)Y", v)  # the first NIH release wrote ages as e.g. "058Y"
    return parse_age(m.group(1) if m else v, file=file, row=row, field="Patient Age")


def parse_nih(root: Path, on_bad_image: str = "error") -> ParseResult:
    """Parse ``root/Data_Entry_2017.csv`` with images under ``root/images*/`` (any depth)."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    root = Path(root)
    csv_path = root / DATA_ENTRY
    if not csv_path.is_file():
        raise DataFormatError(
            f"NIH ChestX-ray14 metadata not found: {csv_path}", file=str(csv_path)
        )
    file = str(csv_path)
    images = index_images(root)
    splits = _split_lists(root)
    records: list[dict] = []
    quarantine: list[dict] = []
    bad_images = ErrorList(f"bad images in {file}")
    seen: dict[str, int] = {}
    col: dict[str, int] = {}
    for line, header, row in iter_csv(csv_path):
        if header is None:
            missing = [c for c in NIH_REQUIRED if c not in row]
            unexpected = [c for c in row if c not in NIH_REQUIRED and c not in NIH_OPTIONAL]
            if missing or unexpected:
                raise DataFormatError(
                    f"wrong columns: missing {missing}, unexpected {unexpected}", file=file, row=1
                )
            col = {c: row.index(c) for c in NIH_REQUIRED}
            continue
        if len(row) > len(header) or len(row) < len(NIH_REQUIRED):
            raise DataFormatError(
                f"{len(row)} fields, the header has {len(header)}", file=file, row=line
            )
        name = row[col["Image Index"]].strip()
        if not _NAME_RE.match(name):
            raise DataFormatError(
                f"bad image name {name!r} (expected a .png file name)",
                file=file,
                row=line,
                field="Image Index",
            )
        if name in seen:
            raise DataFormatError(
                f"duplicate image {name!r} (first on line {seen[name]})",
                file=file,
                row=line,
                field="Image Index",
            )
        seen[name] = line
        labels = nih_labels(row[col["Finding Labels"]], file=file, row=line)
        pid = _int_field(row[col["Patient ID"]], file=file, row=line, field="Patient ID")
        follow = _int_field(row[col["Follow-up #"]], file=file, row=line, field="Follow-up #")
        sex = row[col["Patient Gender"]].strip()
        if sex not in _SEX:
            raise DataFormatError(
                f"value {sex!r} not in ('M', 'F')", file=file, row=line, field="Patient Gender"
            )
        view = row[col["View Position"]].strip()
        if view not in ("PA", "AP"):
            raise DataFormatError(
                f"value {view!r} not in ('PA', 'AP')", file=file, row=line, field="View Position"
            )
        age = _nih_age(row[col["Patient Age"]], file=file, row=line)
        rel = images.get(name)
        size = (
            image_size(root / rel)
            if rel is not None
            else f"missing image file (no {name} under images*/)"
        )
        if isinstance(size, str):
            if on_bad_image == "error":
                bad_images.add(
                    DataFormatError(
                        f"{size}: {root / (rel or name)}", file=file, row=line, field="Image Index"
                    )
                )
                continue
            quarantine.append({"path": rel or name, "csv": file, "line": line, "reason": size})
            continue
        records.append(
            {
                "image_id": name[: -len(".png")], "path": rel, "patient": f"patient{pid:05d}",
                "study": f"study{follow}", "view": "Frontal", "ap_pa": view, "sex": _SEX[sex],
                "age": age, "width": size[0], "height": size[1],
                "source_split": splits.get(name, "all"), **labels,
            }
        )  # fmt: skip
    bad_images.raise_if_any()
    return ParseResult(finalize_metadata(records), finalize_quarantine(quarantine))


def parse_nih_boxes(root: Path) -> pd.DataFrame:
    """``root/BBox_List_2017.csv`` as ``boxes`` rows (findings mapped to CheXpert names)."""
    csv_path = Path(root) / BBOX_LIST
    file = str(csv_path)

    def image_id(index: str, line: int) -> str:
        if not _NAME_RE.match(index):
            raise DataFormatError(
                f"bad image name {index!r}", file=file, row=line, field="Image Index"
            )
        return index[: -len(".png")]

    return parse_box_csv(csv_path, image_id, NIH_BOX_TO_CHEXPERT)
