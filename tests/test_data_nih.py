"""NIH ChestX-ray14 adapter on a hand-written fixture (labels mapped to CheXpert columns)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from medmark.data.chexpert import METADATA_COLUMNS
from medmark.data.labels import OBSERVATIONS
from medmark.data.nih import parse_nih, parse_nih_boxes
from medmark.errors import DataFormatError

ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
ENTRIES = [
    "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,",
    "00000001_001.png,No Finding,1,1,59,M,AP,2894,2729,0.143,0.143,",
    "00000002_000.png,Mass|Nodule|Infiltration,0,2,081Y,F,PA,2500,2048,0.168,0.168,",
    "00000003_000.png,Hernia,0,3,45,F,AP,2048,2500,0.168,0.168,",
]
IMAGES = {
    "images_001/images/00000001_000.png": (48, 48),
    "images_001/images/00000001_001.png": (50, 40),
    "images_002/images/00000002_000.png": (32, 36),
    "images_002/00000003_000.png": (20, 24),
}


@pytest.fixture
def nih(tmp_path: Path) -> Path:
    for rel, size in IMAGES.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, 100).save(p)
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join([ENTRY_HEADER, *ENTRIES]) + "\n")
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Effusion,10.5,20,8,6.25,,,\n"
        "00000002_000.png,Nodule,3,4,5,6,,,\n"
        "00000002_000.png,Infiltrate,1,1,2,2,,,\n"
    )
    (tmp_path / "train_val_list.txt").write_text(
        "00000001_000.png\n00000001_001.png\n00000002_000.png\n"
    )
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    return tmp_path


def test_nih_metadata_and_label_mapping(nih: Path) -> None:
    res = parse_nih(nih)
    m = res.metadata.set_index("image_id")
    assert tuple(res.metadata.columns) == METADATA_COLUMNS and res.quarantine.empty
    assert list(m.index) == ["00000001_000", "00000001_001", "00000002_000", "00000003_000"]
    a = m.loc["00000001_000"]
    assert a["path"] == "images_001/images/00000001_000.png"
    assert (a["patient"], a["study"], a["view"], a["ap_pa"], a["sex"], a["age"]) == (
        "patient00001", "study0", "Frontal", "PA", "Male", 58,
    )  # fmt: skip
    assert (a["width"], a["height"], a["source_split"]) == (48, 48, "train_val")
    assert a["Cardiomegaly"] == 1.0 and a["Pleural Effusion"] == 1.0 and a["No Finding"] == 0.0
    assert a["Atelectasis"] == 0.0 and a["Lung Lesion"] == 0.0  # exhaustive: unmentioned = 0
    assert math.isnan(a["Lung Opacity"]) and math.isnan(a["Support Devices"])  # no NIH source
    b = m.loc["00000001_001"]
    assert b["No Finding"] == 1.0 and b["Pleural Effusion"] == 0.0 and b["study"] == "study1"
    c = m.loc["00000002_000"]
    assert c["Lung Lesion"] == 1.0 and math.isnan(c["Lung Opacity"]) and c["age"] == 81
    assert c["sex"] == "Female"
    d = m.loc["00000003_000"]  # Hernia is ignored: no mapped positive, but not "No Finding"
    assert (
        d["No Finding"] == 0.0
        and d["source_split"] == "test"
        and d["path"] == "images_002/00000003_000.png"
    )
    assert all((d[o] == 0.0) or math.isnan(d[o]) for o in OBSERVATIONS)


def test_nih_boxes(nih: Path) -> None:
    b = parse_nih_boxes(nih)
    assert list(b["image_id"]) == ["00000001_000", "00000002_000", "00000002_000"]
    assert list(b["finding"]) == ["Pleural Effusion", "Lung Lesion", "Infiltrate"]
    assert b.iloc[0][["x", "y", "w", "h"]].tolist() == [10.5, 20.0, 8.0, 6.25]


def test_nih_unknown_finding(nih: Path) -> None:
    (nih / "Data_Entry_2017.csv").write_text(
        "\n".join([ENTRY_HEADER, *ENTRIES[:2], ENTRIES[2].replace("Mass", "Flu")])
    )
    with pytest.raises(DataFormatError, match=r"line 4.*'Finding Labels'.*'Flu'"):
        parse_nih(nih)


def test_nih_bad_view_and_columns(nih: Path) -> None:
    (nih / "Data_Entry_2017.csv").write_text(
        "\n".join([ENTRY_HEADER, ENTRIES[0].replace(",PA,", ",LL,")])
    )
    with pytest.raises(DataFormatError, match=r"line 2.*'View Position'"):
        parse_nih(nih)
    (nih / "Data_Entry_2017.csv").write_text(
        "\n".join([ENTRY_HEADER.replace("Patient ID", "PID"), ENTRIES[0]])
    )
    with pytest.raises(DataFormatError, match=r"missing \['Patient ID'\], unexpected \['PID'\]"):
        parse_nih(nih)


def test_nih_missing_image(nih: Path) -> None:
    (nih / "images_002/images/00000002_000.png").unlink()
    with pytest.raises(DataFormatError, match="line 4.*missing image file"):
        parse_nih(nih)
    res = parse_nih(nih, on_bad_image="skip")
    assert len(res.metadata) == 3 and list(res.quarantine["line"]) == [4]


def test_nih_path_in_image_index_rejected(nih: Path) -> None:
    (nih / "Data_Entry_2017.csv").write_text("\n".join([ENTRY_HEADER, "../" + ENTRIES[0]]))
    with pytest.raises(DataFormatError, match="line 2.*'Image Index'"):
        parse_nih(nih)
