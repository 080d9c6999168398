"""Synthetic CheXpert-format generator: determinism, exact on-disk format, findings in pixels."""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmark.data import synthetic as S
from medmark.data.chexpert import CHEXPERT_COLUMNS
from medmark.data.labels import OBSERVATIONS

DS = "CheXpert-v1.0-small"
FILE_RE = re.compile(
    r"^CheXpert-v1\.0-small/(train|valid)/patient\d{5}/study\d+/view\d+_(frontal|lateral)\.jpg$"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out[name] = S.generate_dataset(tmp_path_factory.mktemp(f"syn_{name}"), "tiny", seed)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / DS).rglob("*"))
        if p.is_file()
    }


def _rows(root: Path, split: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / DS / f"{split}.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, r, strict=True)) for r in reader]


def test_returns_root_containing_dataset(tiny: dict[str, Path]) -> None:
    for root in tiny.values():
        assert (root / DS / "train.csv").is_file()
        assert (root / DS / "valid.csv").is_file()
        assert (root / DS / S.BOX_CSV).is_file()


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny: dict[str, Path]) -> None:
    a, b, c = _files(tiny["a"]), _files(tiny["b"]), _files(tiny["c"])
    assert len(a) > 50
    assert a == b
    assert a[f"{DS}/train.csv"] != c[f"{DS}/train.csv"]
    shared = sorted(set(a) & set(c) - {f"{DS}/train.csv", f"{DS}/valid.csv", f"{DS}/{S.BOX_CSV}"})
    assert shared and any(a[k] != c[k] for k in shared)


def test_exact_chexpert_format(tiny: dict[str, Path]) -> None:
    root = tiny["a"]
    all_rows = []
    for split in ("train", "valid"):
        header, rows = _rows(root, split)
        assert tuple(header) == CHEXPERT_COLUMNS
        assert rows
        for r in rows:
            assert FILE_RE.match(r["Path"]), r["Path"]
            assert r["Path"].split("/")[1] == split
            assert r["Sex"] in ("Male", "Female")
            assert r["Age"].isdigit()
            assert r["Frontal/Lateral"] in ("Frontal", "Lateral")
            assert (r["Frontal/Lateral"] == "Frontal") == r["Path"].endswith("_frontal.jpg")
            assert r["AP/PA"] in (("AP", "PA") if r["Frontal/Lateral"] == "Frontal" else ("", "LL"))
            for o in OBSERVATIONS:
                assert r[o] in ("1.0", "0.0", "-1.0", ""), (o, r[o])
            if split == "valid":
                assert all(r[o] in ("1.0", "0.0") for o in OBSERVATIONS)
        all_rows += rows
    train = _rows(root, "train")[1]
    values = [r[o] for r in train for o in OBSERVATIONS]
    assert "-1.0" in values and "" in values and "1.0" in values
    assert any(r["Frontal/Lateral"] == "Lateral" for r in all_rows)
    # the tree holds exactly the listed images
    listed = {r["Path"] for r in all_rows}
    on_disk = {p.relative_to(root).as_posix() for p in (root / DS).rglob("*.jpg")}
    assert listed == on_disk
    sizes = set()
    for p in sorted(listed):
        with Image.open(root / p) as im:
            assert im.format == "JPEG" and im.mode == "L"
            sizes.add(im.size)
    assert len(sizes) > 10
    assert any(w != h for w, h in sizes)
    lo, hi = S.PRESETS["tiny"].size_min, S.PRESETS["tiny"].size_max
    assert all(lo <= w <= hi and lo <= h <= hi for w, h in sizes)


def test_no_finding_consistent_with_findings(tiny: dict[str, Path]) -> None:
    for split in ("train", "valid"):
        for r in _rows(tiny["a"], split)[1]:
            if r["No Finding"] == "1.0":
                drawn = [o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices")]
                assert all(r[o] != "1.0" for o in drawn)


def test_box_csv_nih_layout(tiny: dict[str, Path]) -> None:
    root = tiny["a"]
    lines = (root / DS / S.BOX_CSV).read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    frontal = {
        r["Path"]: r
        for s in ("train", "valid")
        for r in _rows(root, s)[1]
        if r["Frontal/Lateral"] == "Frontal"
    }
    findings = set()
    for line in lines[1:]:
        cells = line.split(",")
        assert len(cells) == 9 and cells[6:] == ["", "", ""]
        path, finding = cells[0], cells[1]
        x, y, w, h = map(float, cells[2:6])
        assert path in frontal
        assert frontal[path][finding] in ("1.0", "-1.0")  # a box only where the finding is drawn
        with Image.open(root / path) as im:
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= im.width + 1e-6 and y + h <= im.height + 1e-6
        findings.add(finding)
    assert {"Pleural Effusion", "Cardiomegaly", "Lung Opacity"} <= findings


def _box_mean_ratio(img: np.ndarray, box: tuple[float, ...]) -> float:
    x, y, w, h = box
    region = img[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
    return float(region.mean() / img.mean())


def test_effusion_brighter_in_positive_boxes_than_same_region_in_negatives(
    tiny: dict[str, Path],
) -> None:
    root = tiny["a"]
    pos, rel, negs = [], [], []
    for p in S.plan_dataset("tiny", 0):
        for st in p.studies:
            for im in st.images:
                if not im.frontal:
                    continue
                pix = np.asarray(Image.open(root / im.path), dtype=np.float64)
                if st.findings.effusion:
                    for name, (x, y, w, h) in S.study_boxes(p.anatomy, st.findings, im):
                        if name == "Pleural Effusion":
                            pos.append(_box_mean_ratio(pix, (x, y, w, h)))
                            rel.append((x / im.width, y / im.height, w / im.width, h / im.height))
                else:
                    negs.append(pix)
    assert len(pos) >= 10 and len(negs) >= 10
    neg = [
        _box_mean_ratio(a, (x * a.shape[1], y * a.shape[0], w * a.shape[1], h * a.shape[0]))
        for a in negs
        for x, y, w, h in rel
    ]
    assert np.mean(pos) > np.mean(neg) + 0.03


@pytest.mark.parametrize("finding", ["Pleural Effusion", "Lung Opacity", "Cardiomegaly"])
def test_finding_adds_density_in_its_box(finding: str) -> None:
    """Counterfactual: the same image rendered without the finding is darker inside its box."""
    diffs = []
    for p in S.plan_dataset("tiny", 0):
        for st in p.studies:
            for im in st.images[:1]:
                boxes = [b for n, b in S.study_boxes(p.anatomy, st.findings, im) if n == finding]
                if not boxes:
                    continue
                without = copy.deepcopy(st.findings)
                if finding == "Pleural Effusion":
                    without.effusion = {}
                elif finding == "Lung Opacity":
                    without.opacities = []
                else:
                    without.cardiomegaly, without.ctr = False, 0.45
                with_pix = S.render_image(p.anatomy, st.findings, im, 0).astype(np.float64)
                wo_pix = S.render_image(p.anatomy, without, im, 0).astype(np.float64)
                for x, y, w, h in boxes:
                    sl = np.s_[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
                    diffs.append(with_pix[sl].mean() - wo_pix[sl].mean())
    assert len(diffs) >= 3
    assert np.mean(diffs) > 3.0 and np.mean(np.array(diffs) > 0) >= 0.8


def test_render_is_deterministic_and_sized() -> None:
    p = S.plan_dataset("tiny", 3, n_patients=3)[0]
    st = p.studies[0]
    im = st.images[0]
    a = S.render_image(p.anatomy, st.findings, im, 3)
    b = S.render_image(p.anatomy, st.findings, im, 3)
    assert a.dtype == np.uint8 and a.shape == (im.height, im.width)
    assert np.array_equal(a, b)
    assert a.std() > 10  # structured, not flat


def test_presets_sizes_and_prevalence() -> None:
    demo = S.plan_dataset("demo", 0)
    images = [im for p in demo for st in p.studies for im in st.images]
    frontal = [im for im in images if im.frontal]
    assert 820 <= len(demo) <= 1000 and 1200 <= len(images) <= 1600
    assert len(frontal) / len(images) > 0.75
    assert all(320 <= im.width <= 1024 and 320 <= im.height <= 1024 for im in images)
    studies = [st for p in demo for st in p.studies]
    prev = np.mean([bool(st.findings.effusion) for st in studies])
    assert 0.28 <= prev <= 0.42
    bench = S.plan_dataset("bench", 0)
    bench_frontal = [im for p in bench for st in p.studies for im in st.images if im.frontal]
    assert len(bench_frontal) >= 2000
    assert all(im.height >= 960 for im in bench_frontal)


def test_n_patients_override_and_errors(tmp_path: Path) -> None:
    root = S.generate_dataset(tmp_path, "tiny", 0, n_patients=8)
    pats = {r["Path"].split("/")[2] for s in ("train", "valid") for r in _rows(root, s)[1]}
    assert len(pats) == 8
    # regenerating smaller replaces the folder: no stale images left behind
    S.generate_dataset(tmp_path, "tiny", 0, n_patients=4)
    left = {p.name for p in (tmp_path / DS).glob("*/patient*")}
    assert len(left) == 4
    assert S.read_stamp(tmp_path)["n_patients"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        S.generate_dataset(tmp_path, "huge", 0)
    with pytest.raises(ValueError, match="n_patients"):
        S.plan_dataset("tiny", 0, n_patients=1)


def test_workers_do_not_change_bytes(tmp_path: Path) -> None:
    one = S.generate_dataset(tmp_path / "one", "tiny", 5, n_patients=5, workers=1)
    two = S.generate_dataset(tmp_path / "two", "tiny", 5, n_patients=5, workers=2)
    assert _files(one) == _files(two)
