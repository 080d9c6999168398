"""CheXpert parser on hand-written CSVs: labels, laterals, and every kind of bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from medmark.data.chexpert import (
    CHEXPERT_COLUMNS,
    METADATA_COLUMNS,
    QUARANTINE_COLUMNS,
    parse_chexpert_boxes,
    parse_chexpert_csv,
)
from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError

HEADER = ",".join(CHEXPERT_COLUMNS)
# 14 observation cells: No Finding .. Support Devices
ROWS = [
    # patient 1, study 1: frontal AP with an uncertain effusion, blanks elsewhere
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
    ",,1.0,,,,,,,0.0,-1.0,,,1.0",
    # same study, lateral with empty AP/PA
    "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,"
    ",,1.0,,,,,,,0.0,-1.0,,,1.0",
    # patient 2: no finding, PA
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,41,Frontal,PA,"
    "1.0,,0.0,,,,,,,,0.0,,,",
]
SIZES = {
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg": (40, 52),
    "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg": (44, 38),
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg": (33, 61),
}


def _write_images(root: Path) -> None:
    for rel, (w, h) in SIZES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (w, h), 90).save(p, "JPEG", quality=90)


def _write_csv(root: Path, rows: list[str], header: str = HEADER) -> Path:
    p = root / "CheXpert-v1.0-small" / "train.csv"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _write_images(tmp_path)
    return tmp_path


def test_parses_hand_written_csv(root: Path) -> None:
    csv_path = _write_csv(root, ROWS)
    res = parse_chexpert_csv(csv_path, root, "train")
    m = res.metadata
    assert tuple(m.columns) == METADATA_COLUMNS
    assert tuple(res.quarantine.columns) == QUARANTINE_COLUMNS and res.quarantine.empty
    assert list(m["image_id"]) == [
        "patient00001/study1/view1_frontal",
        "patient00001/study1/view2_lateral",
        "patient00002/study2/view1_frontal",
    ]
    assert list(m["patient"]) == ["patient00001", "patient00001", "patient00002"]
    assert list(m["study"]) == ["study1", "study1", "study2"]
    assert list(m["view"]) == ["Frontal", "Lateral", "Frontal"]
    assert list(m["ap_pa"]) == ["AP", "", "PA"]
    assert list(m["sex"]) == ["Female", "Female", "Male"]
    assert list(m["age"]) == [68, 68, 41]
    assert list(zip(m["width"], m["height"], strict=True)) == list(SIZES.values())
    assert set(m["source_split"]) == {"train"}
    assert list(m["path"]) == list(SIZES)
    r0 = m.iloc[0]
    assert r0["Pleural Effusion"] == -1.0 and r0["Cardiomegaly"] == 1.0
    assert r0["Pneumothorax"] == 0.0 and r0["Support Devices"] == 1.0
    assert math.isnan(r0["No Finding"]) and math.isnan(r0["Edema"])
    assert m.iloc[2]["No Finding"] == 1.0
    assert all(m[o].dtype == "float64" for o in OBSERVATIONS)


def test_columns_in_other_order_are_accepted(root: Path) -> None:
    cols = list(CHEXPERT_COLUMNS)
    perm = [cols.index(c) for c in [*cols[5:], *cols[:5]]]
    rows = [",".join(r.split(",")[i] for i in perm) for r in ROWS]
    m = parse_chexpert_csv(
        _write_csv(root, rows, ",".join(cols[i] for i in perm)), root, "train"
    ).metadata
    assert m.iloc[0]["Pleural Effusion"] == -1.0 and m.iloc[1]["view"] == "Lateral"


def test_unknown_label_value_names_line_column_value(root: Path) -> None:
    rows = list(ROWS)
    rows[1] = rows[1].replace(",0.0,-1.0,", ",0.0,2.0,")
    with pytest.raises(DataFormatError) as e:
        parse_chexpert_csv(_write_csv(root, rows), root, "train")
    msg = str(e.value)
    assert "line 3" in msg and "'Pleural Effusion'" in msg and "'2.0'" in msg and "train.csv" in msg
    rows[1] = ROWS[1].replace(",0.0,-1.0,", ",0.0,yes,")
    with pytest.raises(DataFormatError, match=r"line 3.*'Pleural Effusion'.*'yes'"):
        parse_chexpert_csv(_write_csv(root, rows), root, "train")


def test_wrong_column_set_lists_missing_and_unexpected(root: Path) -> None:
    header = HEADER.replace("Pleural Effusion", "Effusion")
    with pytest.raises(DataFormatError) as e:
        parse_chexpert_csv(_write_csv(root, ROWS, header), root, "train")
    msg = str(e.value)
    assert (
        "line 1" in msg
        and "missing ['Pleural Effusion']" in msg
        and "unexpected ['Effusion']" in msg
    )


def test_row_with_wrong_field_count(root: Path) -> None:
    with pytest.raises(DataFormatError, match="line 4.*fields"):
        parse_chexpert_csv(_write_csv(root, [*ROWS[:2], ROWS[2] + ",1.0"]), root, "train")


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("CheXpert-v1.0-small/train/../../../etc/passwd", "escapes the dataset root"),
        (
            "../CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "escapes the dataset root",
        ),
        ("/etc/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "absolute path"),
        (
            "C:/data/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "absolute path",
        ),
        ("CheXpert-v1.0-small/train/p1/s1/view1_frontal.jpg", "does not match"),
    ],
)
def test_bad_paths_name_the_line(root: Path, path: str, what: str) -> None:
    rows = list(ROWS)
    rows[2] = path + "," + ROWS[2].split(",", 1)[1]
    with pytest.raises(DataFormatError) as e:
        parse_chexpert_csv(_write_csv(root, rows), root, "train")
    assert "line 4" in str(e.value) and "'Path'" in str(e.value) and what in str(e.value)


def test_bad_view_and_ap_pa(root: Path) -> None:
    bad = [ROWS[0].replace(",Frontal,", ",Front,")]
    with pytest.raises(DataFormatError, match="line 2.*'Frontal/Lateral'"):
        parse_chexpert_csv(_write_csv(root, bad), root, "train")
    bad = [ROWS[0].replace(",AP,", ",XP,")]
    with pytest.raises(DataFormatError, match="line 2.*'AP/PA'"):
        parse_chexpert_csv(_write_csv(root, bad), root, "train")
    ok = [ROWS[0].replace(",Frontal,", ", Frontal ,")]
    assert (
        parse_chexpert_csv(_write_csv(root, ok), root, "train").metadata.iloc[0]["view"]
        == "Frontal"
    )


def test_duplicate_path(root: Path) -> None:
    with pytest.raises(DataFormatError, match=r"line 3.*duplicate.*first on line 2"):
        parse_chexpert_csv(_write_csv(root, [ROWS[0], ROWS[0]]), root, "train")


def test_missing_image_error_or_quarantine(root: Path) -> None:
    (root / list(SIZES)[1]).unlink()
    csv_path = _write_csv(root, ROWS)
    with pytest.raises(DataFormatError) as e:
        parse_chexpert_csv(csv_path, root, "train")
    assert (
        "line 3" in str(e.value)
        and "missing image file" in str(e.value)
        and "view2_lateral.jpg" in str(e.value)
    )
    res = parse_chexpert_csv(csv_path, root, "train", on_bad_image="skip")
    assert len(res.metadata) == 2
    q = res.quarantine
    assert list(q["line"]) == [3] and q.iloc[0]["path"] == list(SIZES)[1]
    assert "missing image file" in q.iloc[0]["reason"] and q.iloc[0]["csv"] == str(csv_path)


@pytest.mark.parametrize("keep", [0, 12, 60])
def test_truncated_or_corrupt_header(root: Path, keep: int) -> None:
    p = root / list(SIZES)[2]
    p.write_bytes(p.read_bytes()[:keep] if keep else b"not a jpeg at all")
    csv_path = _write_csv(root, ROWS)
    with pytest.raises(DataFormatError, match="line 4.*unreadable image"):
        parse_chexpert_csv(csv_path, root, "train")
    res = parse_chexpert_csv(csv_path, root, "train", on_bad_image="skip")
    assert list(res.metadata["image_id"]) == [
        "patient00001/study1/view1_frontal",
        "patient00001/study1/view2_lateral",
    ]
    assert list(res.quarantine["line"]) == [4]


def test_on_bad_image_value_is_checked(root: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_image"):
        parse_chexpert_csv(_write_csv(root, ROWS), root, "train", on_bad_image="ignore")


def test_bad_age_and_sex(root: Path) -> None:
    with pytest.raises(DataFormatError, match="line 2.*'Age'"):
        parse_chexpert_csv(_write_csv(root, [ROWS[0].replace(",68,", ",old,")]), root, "train")
    with pytest.raises(DataFormatError, match="line 2.*'Sex'"):
        parse_chexpert_csv(_write_csv(root, [ROWS[0].replace("Female", "F")]), root, "train")


def test_box_csv(tmp_path: Path) -> None:
    p = tmp_path / "BBox_List_synthetic.csv"
    p.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Pleural Effusion,1.5,2,10,12.25,,,\n"
        "CheXpert-v1.0-small/valid/patient00009/study1/view1_frontal.jpg,Cardiomegaly,0,0,5,5\n"
    )
    b = parse_chexpert_boxes(p)
    assert list(b.columns) == ["image_id", "finding", "x", "y", "w", "h"]
    assert list(b["image_id"]) == [
        "patient00001/study1/view1_frontal",
        "patient00009/study1/view1_frontal",
    ]
    assert b.iloc[0][["x", "y", "w", "h"]].tolist() == [1.5, 2.0, 10.0, 12.25]
    p.write_text(p.read_text().replace("10,12.25", "-3,12.25"))
    with pytest.raises(DataFormatError, match="line 2.*non-positive"):
        parse_chexpert_boxes(p)
    p.write_text(p.read_text().replace("-3,12.25", "abc,12.25"))
    with pytest.raises(DataFormatError, match="line 2.*'w'"):
        parse_chexpert_boxes(p)
    p.write_text("Image Index,Finding,Box\n")
    with pytest.raises(DataFormatError, match="line 1.*header"):
        parse_chexpert_boxes(p)
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n../x.jpg,Mass,1,1,1,1,,,\n")
    with pytest.raises(DataFormatError, match="line 2.*'Image Index'.*escapes"):
        parse_chexpert_boxes(p)


# --------------------------------------------------------------------------- hardening


def test_skip_quarantines_a_path_escaping_the_root(root: Path) -> None:
    """Under ``skip`` a ``Path`` escaping the root is quarantined and the parse goes on.

    Before the fix it aborted the whole ingest (raised before the skip branch); this test
    failed on the first ``parse_chexpert_csv(..., on_bad_image="skip")``.
    """
    bad = ROWS[2].replace("CheXpert-v1.0-small/train/patient00002", "../../etc/patient00002")
    weird = ROWS[0].replace("view1_frontal.jpg", "view1_frontal.gif").replace("study1", "study9")
    csv_path = _write_csv(root, [ROWS[0], bad, weird, ROWS[1]])
    res = parse_chexpert_csv(csv_path, root, "train", on_bad_image="skip")
    assert len(res.metadata) == 2
    q = res.quarantine
    assert list(q["line"]) == [3, 4]
    assert "escapes the dataset root" in q.iloc[0]["reason"]
    assert "does not match" in q.iloc[1]["reason"]
    with pytest.raises(DataFormatError, match="2 bad entries"):
        parse_chexpert_csv(csv_path, root, "train")


def test_error_mode_lists_every_bad_entry_at_once(root: Path) -> None:
    """Four bad rows, one run: the error lists all four (lines and reasons).

    Before the fix only the first bad entry was named; this test failed on "4 bad entries".
    """
    (root / list(SIZES)[1]).unlink()  # line 3: missing file
    (root / list(SIZES)[2]).write_bytes(b"garbage")  # line 4: unreadable
    bad_label = ROWS[0].replace(",1.0", ",2.0", 1).replace("study1", "study5")  # line 5
    bad_path = ROWS[0].replace("CheXpert-v1.0-small/train/", "/abs/")  # line 6
    csv_path = _write_csv(root, [*ROWS, bad_label, bad_path])
    with pytest.raises(DataFormatError) as e:
        parse_chexpert_csv(csv_path, root, "train")
    msg = str(e.value)
    assert msg.count("\n  - ") == 4 and "4 bad entries" in msg and "all listed" in msg
    for needle in ("line 3", "missing image file", "line 4", "unreadable image", "line 5",
                   "'2.0'", "line 6", "absolute path"):  # fmt: skip
        assert needle in msg, needle


def test_error_list_is_capped_with_the_count(root: Path) -> None:
    rows = [ROWS[0].replace("study1", f"study{k}").replace(",1.0", ",7.0", 1) for k in range(30)]
    with pytest.raises(DataFormatError) as e:
        parse_chexpert_csv(_write_csv(root, rows), root, "train")
    msg = str(e.value)
    assert "30 bad entries" in msg and "first 20 listed" in msg and "... and 10 more" in msg
    assert msg.count("\n  - ") == 20


def test_truncated_jpeg_and_unsupported_mode_are_caught_at_ingest(root: Path) -> None:
    """A JPEG cut after its header passes a header read but not a decode: ingest rejects it.

    Before the fix ingest read only headers: the truncated file and a CMYK image were counted as
    usable frontals and failed later in preprocess.
    """
    p = root / list(SIZES)[2]
    Image.effect_noise((33, 61), 60).save(p, "JPEG", quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    q = root / list(SIZES)[0]
    Image.new("CMYK", (40, 52), (10, 20, 30, 40)).save(q, "JPEG")
    csv_path = _write_csv(root, ROWS)
    res = parse_chexpert_csv(csv_path, root, "train", on_bad_image="skip")
    assert list(res.metadata["image_id"]) == ["patient00001/study1/view2_lateral"]
    reasons = dict(zip(res.quarantine["line"], res.quarantine["reason"], strict=True))
    assert "truncated" in reasons[4] and "unsupported image mode 'CMYK'" in reasons[2]


def test_16bit_png_is_read_and_scaled(tmp_path: Path) -> None:
    """16-bit grayscale PNGs pass ingest and are stretched [min, max] -> [0, 255] by preprocess.

    Before the fix a 16-bit PNG passed the header read, then preprocess refused its mode.
    """
    import numpy as np

    from medmark.data.chexpert import probe_image
    from medmark.data.preprocess import load_resized

    ramp = np.tile(np.linspace(1000, 4000, 32), (32, 1)).astype(np.uint16)  # 12-bit data
    path = tmp_path / "x.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    assert probe_image(path) == (32, 32)
    out = load_resized(path, 32)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    np.testing.assert_allclose(out[0], np.linspace(0, 255, 32), atol=1.0)
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((8, 8), 777, np.uint16)).save(flat)
    assert load_resized(flat, 4).max() == 0
