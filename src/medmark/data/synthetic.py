"""Embedded synthetic chest-radiograph generator in the CheXpert-v1.0-small on-disk format.

Implements ``docs/methods/data.md`` ("The embedded default"): a deterministic, seeded, procedural
generator of chest-radiograph-like images so that a run needs nothing downloaded. It writes
exactly the CheXpert layout (``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/
viewN_{frontal,lateral}.jpg``, ``train.csv``, ``valid.csv``), so the real ingest path is the
path every run takes, plus true lesion boxes in the NIH ``BBox_List_2017.csv`` layout
(``BBox_List_synthetic.csv``, frontal views only).

The images are SYNTHETIC: anatomy (body outline, soft tissue, lung fields, heart and
mediastinum, spine, ribs, clavicles, diaphragm domes) and findings (cardiomegaly as a
heart/thorax ratio, pleural effusion as a basal opacity with a lateral meniscus that blunts the
costophrenic angle, lung opacities and nodules as blobs, edema, plate atelectasis, support
devices) are drawn from simple vectorised shapes. Numbers measured on it are never CheXpert
results.

Determinism: the dataset plan (labels, geometry, findings, boxes) comes from one numpy
``Generator`` per patient and the pixels from one per image, both seeded by
``SeedSequence([seed, ...])``; JPEGs are written by Pillow with fixed settings and no metadata,
so the same seed gives byte-identical CSVs and image files (with the same Pillow/libjpeg).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medmark.data.labels import OBSERVATIONS
from medmark.io import write_json_atomic

log = logging.getLogger(__name__)

DATASET_DIR = "CheXpert-v1.0-small"
BOX_CSV = "BBox_List_synthetic.csv"
STAMP_FILE = "synthetic.json"  # written beside DATASET_DIR: preset, seed, counts
GENERATOR_VERSION = 1  # bump when the pixels or labels change for a given seed
JPEG_QUALITY = 90
RENDER_MAX = 320  # shapes are rendered at most at this size, then resized to the source size
CSV_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


@dataclass(frozen=True)
class Preset:
    """Size preset of the synthetic dataset."""

    n_patients: int
    size_min: int  # source image side range in pixels (height and width drawn separately)
    size_max: int
    lateral_prob: float  # probability that a study also has a lateral view
    valid_fraction: float  # patients written to valid/ (no uncertain labels there)
    max_studies: int
    more_study_prob: float  # geometric number of studies per patient


PRESETS: dict[str, Preset] = {
    "tiny": Preset(40, 96, 200, 0.3, 0.15, 2, 0.3),
    "demo": Preset(900, 320, 1024, 0.18, 0.06, 4, 0.25),
    "bench": Preset(1700, 960, 1024, 0.03, 0.05, 3, 0.22),
}

# Observations whose value follows a finding drawn in the pixels.
_DRAWN = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pleural Effusion",
    "Support Devices",
)


# --------------------------------------------------------------------------------------------
# Plan: everything that ends up in the CSVs, drawn per patient.
# --------------------------------------------------------------------------------------------
@dataclass
class Anatomy:
    """Per-patient anatomy in normalised units (1.0 = the shorter image side at zoom 1)."""

    thorax: float  # inner thoracic half-width (lateral lung edge)
    medial: float  # medial lung edge
    apex: float  # lung apex (b coordinate, negative = up)
    dia_right: float  # image-left (patient right) diaphragm, lowest point
    dia_left: float
    dome: float  # dome height
    ctr: float  # heart width / thoracic width
    tissue: float  # soft-tissue density factor (habitus)
    rib_spacing: float
    rib_offset: float
    clavicle: float  # clavicle height
    medi_width: float
    bubble: float  # stomach gas bubble radius (0 = none)


@dataclass
class Blob:
    """Round opacity: centre (a, b), size, fill amplitude; sharp edge for nodules."""

    side: int
    a: float
    b: float
    size: float
    amp: float
    sharp: bool


@dataclass
class Findings:
    """Per-study findings (ground truth drawn in the pixels)."""

    effusion: dict[int, float] = field(default_factory=dict)  # side (-1 image-left, +1) -> sev
    cardiomegaly: bool = False
    ctr: float = 0.45
    enlarged_medi: bool = False
    opacities: list[Blob] = field(default_factory=list)
    nodules: list[Blob] = field(default_factory=list)
    edema: float = 0.0
    atelectasis: tuple[float, float, float, float] | None = None  # a0, b0, a1, b1
    devices: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)
    consolidation: bool = False
    pneumonia: bool = False


@dataclass
class ImageSpec:
    """One image: where it goes, its source size, geometry and exposure."""

    path: str  # CheXpert Path (relative to the dataset root)
    split: str
    patient_idx: int
    study: int
    view_idx: int
    frontal: bool
    ap_pa: str
    width: int
    height: int
    theta: float  # rotation (radians)
    tx: float
    ty: float
    zoom: float
    k: float  # attenuation scale
    gain: float
    gamma: float
    offset: float
    noise: float
    marker: int  # -1 none, else corner index


@dataclass
class StudyPlan:
    """One study: labels are per study (as in CheXpert), shared by its views."""

    findings: Findings
    images: list[ImageSpec]
    sex: str
    age: int
    labels: dict[str, str]  # observation -> "1.0" | "0.0" | "-1.0" | ""


@dataclass
class PatientPlan:
    """A patient's anatomy and studies."""

    index: int
    split: str
    anatomy: Anatomy
    studies: list[StudyPlan]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _sample_anatomy(rng: np.random.Generator) -> Anatomy:
    cardiomegaly_prone = rng.random() < 0.2
    ctr = (
        float(rng.uniform(0.55, 0.68))
        if cardiomegaly_prone
        else float(np.clip(rng.normal(0.45, 0.035), 0.36, 0.52))
    )
    dia = float(rng.uniform(0.17, 0.27))
    dia_r = dia - float(rng.uniform(0.0, 0.035))
    if rng.random() < 0.12:  # elevated hemidiaphragm: a basal confounder for effusion
        side = rng.integers(2)
        dia_r, dia = (dia_r - 0.06, dia) if side == 0 else (dia_r, dia - 0.06)
    return Anatomy(
        thorax=float(rng.uniform(0.33, 0.40)),
        medial=float(rng.uniform(0.02, 0.04)),
        apex=float(rng.uniform(-0.37, -0.31)),
        dia_right=dia_r,
        dia_left=dia,
        dome=float(rng.uniform(0.04, 0.09)),
        ctr=ctr,
        tissue=float(rng.uniform(0.85, 1.2)),
        rib_spacing=float(rng.uniform(0.075, 0.095)),
        rib_offset=float(rng.uniform(0.0, 1.0)),
        clavicle=float(rng.uniform(-0.39, -0.33)),
        medi_width=float(rng.uniform(0.05, 0.07)),
        bubble=float(rng.uniform(0.03, 0.06)) if rng.random() < 0.6 else 0.0,
    )


def _lung_point(
    rng: np.random.Generator, an: Anatomy, side: int, basal: bool = False
) -> tuple[float, float]:
    """A random point inside a lung field (anatomical coordinates)."""
    ca = side * (an.medial + an.thorax) / 2
    hw = (an.thorax - an.medial) / 2
    dia = an.dia_right if side < 0 else an.dia_left
    a = ca + side * hw * float(rng.uniform(-0.55, 0.75))
    lo = an.apex + 0.08 if not basal else dia - an.dome - 0.12
    b = float(rng.uniform(lo, dia - an.dome - 0.02))
    return float(a), b


def _sample_findings(rng: np.random.Generator, an: Anatomy, nodule: Blob | None) -> Findings:
    f = Findings()
    f.cardiomegaly = an.ctr >= 0.55
    f.ctr = float(np.clip(an.ctr + rng.normal(0, 0.01), 0.34, 0.72))
    if f.cardiomegaly:
        f.ctr = max(f.ctr, 0.55)
    else:
        f.ctr = min(f.ctr, 0.53)
    if rng.random() < (0.55 if f.cardiomegaly else 0.30):
        sev = float(rng.beta(1.3, 2.0))
        r = rng.random()
        sides = [-1, 1] if r < 0.35 else ([-1] if r < 0.7 else [1])
        for s in sides:
            f.effusion[s] = float(np.clip(sev * rng.uniform(0.7, 1.2), 0.03, 1.0))
    f.enlarged_medi = rng.random() < 0.05
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.choice([-1, 1]))
            a, b = _lung_point(rng, an, side, basal=rng.random() < 0.4)
            f.opacities.append(
                Blob(side, a, b, size=float(rng.uniform(0.025, 0.085)),
                     amp=float(rng.uniform(0.3, 0.8)), sharp=False)
            )  # fmt: skip
        big = max(o.size * o.amp for o in f.opacities)
        f.consolidation = big > 0.035 and rng.random() < 0.6
        f.pneumonia = rng.random() < 0.35
    if nodule is not None:
        f.nodules.append(nodule)
    if rng.random() < (0.4 if f.cardiomegaly else 0.05):
        f.edema = float(rng.uniform(0.2, 0.45))
    if rng.random() < 0.12:
        side = int(rng.choice([-1, 1]))
        a, b = _lung_point(rng, an, side, basal=True)
        ln = float(rng.uniform(0.05, 0.1))
        tilt = float(rng.uniform(-0.25, 0.25))
        f.atelectasis = (a - ln / 2, b - tilt * ln / 2, a + ln / 2, b + tilt * ln / 2)
    return f


def _sample_devices(rng: np.random.Generator, ap: bool) -> list:
    devices: list[tuple[str, tuple[float, ...]]] = []
    if rng.random() >= (0.3 if ap else 0.05):
        return devices
    if rng.random() < 0.6:  # endotracheal tube down the midline
        x = float(rng.normal(0.005, 0.006))
        devices.append(("line", (x, -0.75, x + 0.004, float(rng.uniform(-0.26, -0.16)))))
    if rng.random() < 0.6:  # central line from a shoulder towards the SVC
        s = int(rng.choice([-1, 1]))
        devices.append(
            ("line", (s * 0.32, -0.46, s * 0.12, -0.36, s * 0.03, float(rng.uniform(-0.2, -0.1))))
        )
    for _ in range(int(rng.integers(0 if devices else 1, 4))):  # ECG leads
        s = int(rng.choice([-1, 1]))
        devices.append(
            ("disk", (s * float(rng.uniform(0.05, 0.35)), float(rng.uniform(-0.35, 0.15)), 0.012))
        )
    return devices


def _write_label(truth: bool, rng: np.random.Generator, valid: bool) -> str:
    if valid:
        return "1.0" if truth else "0.0"
    if truth:
        return "1.0" if rng.random() < 0.88 else "-1.0"
    r = rng.random()
    return "-1.0" if r < 0.03 else ("0.0" if r < 0.33 else "")


def _labels(f: Findings, rng: np.random.Generator, valid: bool) -> dict[str, str]:
    truth = {
        "Enlarged Cardiomediastinum": f.enlarged_medi,
        "Cardiomegaly": f.cardiomegaly,
        "Lung Opacity": bool(f.opacities),
        "Lung Lesion": bool(f.nodules),
        "Edema": f.edema > 0,
        "Consolidation": f.consolidation,
        "Pneumonia": f.pneumonia,
        "Atelectasis": f.atelectasis is not None,
        "Pleural Effusion": bool(f.effusion),
        "Support Devices": bool(f.devices),
    }
    out = {name: _write_label(truth[name], rng, valid) for name in _DRAWN}
    for name in ("Pneumothorax", "Pleural Other", "Fracture"):  # never drawn: negative/blank
        out[name] = "0.0" if valid or rng.random() < 0.15 else ""
    any_finding = any(v for k, v in truth.items() if k != "Support Devices")
    out["No Finding"] = "1.0" if not any_finding else ("0.0" if valid else "")
    return out


def _image_spec(
    rng: np.random.Generator, pre: Preset, path: str, split: str, pidx: int, study: int,
    view_idx: int, frontal: bool, ap_pa: str,
) -> ImageSpec:  # fmt: skip
    h = int(rng.integers(pre.size_min, pre.size_max + 1))
    aspect = float(rng.uniform(0.78, 1.05))  # width / height: mostly portrait, some landscape
    w = int(np.clip(round(h * aspect), pre.size_min, pre.size_max))
    return ImageSpec(
        path=path, split=split, patient_idx=pidx, study=study, view_idx=view_idx,
        frontal=frontal, ap_pa=ap_pa, width=w, height=h,
        theta=float(rng.normal(0, math.radians(2.5))),
        tx=float(rng.normal(0, 0.02)), ty=float(rng.normal(0, 0.025)),
        zoom=float(rng.uniform(0.88, 1.08)) * (1.06 if ap_pa == "AP" else 1.0),
        k=float(rng.uniform(2.2, 3.2)), gain=float(rng.uniform(0.8, 1.0)),
        gamma=float(rng.uniform(0.8, 1.25)), offset=float(rng.uniform(-0.04, 0.06)),
        noise=float(rng.uniform(0.008, 0.03)),
        marker=int(rng.integers(4)) if rng.random() < 0.5 else -1,
    )  # fmt: skip


def plan_dataset(
    preset: str = "demo", seed: int = 0, n_patients: int | None = None
) -> list[PatientPlan]:
    """Draw the whole dataset plan (labels, geometry, findings) without rendering pixels."""
    pre = _preset(preset)
    n = pre.n_patients if n_patients is None else int(n_patients)
    if n < 2:
        raise ValueError(f"n_patients must be >= 2 (one train and one valid patient), got {n}")
    n_valid = min(n - 1, max(1, round(n * pre.valid_fraction)))
    patients = []
    for i in range(1, n + 1):
        rng = _rng(seed, 0, i)
        split = "train" if i <= n - n_valid else "valid"
        an = _sample_anatomy(rng)
        sex = "Male" if rng.random() < 0.55 else "Female"
        age = int(rng.integers(18, 88))
        nodule = None
        if rng.random() < 0.08:  # a persistent nodule, same place in every study
            side = int(rng.choice([-1, 1]))
            a, b = _lung_point(rng, an, side)
            nodule = Blob(
                side, a, b, float(rng.uniform(0.012, 0.03)), float(rng.uniform(0.6, 0.9)), True
            )
        n_studies = 1
        while n_studies < pre.max_studies and rng.random() < pre.more_study_prob:
            n_studies += 1
        if split == "valid":
            n_studies = 1
        studies = []
        for s in range(1, n_studies + 1):
            findings = _sample_findings(rng, an, nodule)
            ap = rng.random() < 0.65
            findings.devices = _sample_devices(rng, ap)
            base = f"{DATASET_DIR}/{split}/patient{i:05d}/study{s}"
            images = [
                _image_spec(
                    rng,
                    pre,
                    f"{base}/view1_frontal.jpg",
                    split,
                    i,
                    s,
                    1,
                    True,
                    "AP" if ap else "PA",
                )
            ]
            if rng.random() < pre.lateral_prob:
                lat_code = "" if rng.random() < 0.85 else "LL"
                images.append(
                    _image_spec(
                        rng, pre, f"{base}/view2_lateral.jpg", split, i, s, 2, False, lat_code
                    )
                )
            labels = _labels(findings, rng, valid=split == "valid")
            studies.append(StudyPlan(findings, images, sex, min(90, age + (s - 1)), labels))
        patients.append(PatientPlan(i, split, an, studies))
    return patients


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------
# Geometry helpers (anatomical coordinates a, b <-> source pixels).
# --------------------------------------------------------------------------------------------
def _to_pixels(spec: ImageSpec, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical -> source pixel coordinates (continuous, edge-based)."""
    s = min(spec.width, spec.height)
    c, si = math.cos(spec.theta), math.sin(spec.theta)
    u = spec.zoom * (c * a - si * b) + spec.tx
    v = spec.zoom * (si * a + c * b) + spec.ty
    return u * s + spec.width / 2, v * s + spec.height / 2


def _box(spec: ImageSpec, a0: float, b0: float, a1: float, b1: float) -> tuple[float, ...] | None:
    """Pixel box ``(x, y, w, h)`` of an anatomical box, clipped to the image."""
    x, y = _to_pixels(spec, np.array([a0, a1, a0, a1]), np.array([b0, b0, b1, b1]))
    x0, x1 = max(0.0, float(x.min())), min(float(spec.width), float(x.max()))
    y0, y1 = max(0.0, float(y.min())), min(float(spec.height), float(y.max()))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1 - x0, y1 - y0


def _heart_axes(an: Anatomy, ctr: float) -> tuple[float, float, float, float, float]:
    """Heart ellipse centre and axes such that its horizontal extent is ``ctr`` x thorax."""
    half = ctr * an.thorax
    phi = math.radians(22)
    ratio = 0.74
    rw = half / math.sqrt(math.cos(phi) ** 2 + (ratio * math.sin(phi)) ** 2)
    rh = ratio * rw
    vext = math.sqrt((rw * math.sin(phi)) ** 2 + (rh * math.cos(phi)) ** 2)
    base = (an.dia_right + an.dia_left) / 2 - an.dome * 0.6
    return 0.3 * half, base - 0.55 * vext, rw, rh, phi


def _heart_half_extent(an: Anatomy, ctr: float) -> tuple[float, float]:
    _, _, rw, rh, phi = _heart_axes(an, ctr)
    return ctr * an.thorax, math.sqrt((rw * math.sin(phi)) ** 2 + (rh * math.cos(phi)) ** 2)


def _effusion_height(sev: float) -> float:
    return 0.02 + 0.2 * sev


def study_boxes(an: Anatomy, f: Findings, spec: ImageSpec) -> list[tuple[str, tuple[float, ...]]]:
    """Lesion boxes (finding name, pixel box) of one frontal image."""
    out: list[tuple[str, tuple[float, ...] | None]] = []
    for side, sev in sorted(f.effusion.items()):
        dia = an.dia_right if side < 0 else an.dia_left
        top = dia - an.dome - 1.35 * _effusion_height(sev)
        lat = side * an.thorax
        med = side * (an.medial + 0.15 * (an.thorax - an.medial))
        out.append(("Pleural Effusion", _box(spec, min(lat, med), top, max(lat, med), dia + 0.01)))
    if f.cardiomegaly:
        hx, hy, *_ = _heart_axes(an, f.ctr)
        half_w, half_h = _heart_half_extent(an, f.ctr)
        out.append(("Cardiomegaly", _box(spec, hx - half_w, hy - half_h, hx + half_w, hy + half_h)))
    for o in f.opacities:
        r = 2.0 * o.size
        out.append(("Lung Opacity", _box(spec, o.a - r, o.b - r, o.a + r, o.b + r)))
    for o in f.nodules:
        r = 1.2 * o.size
        out.append(("Lung Lesion", _box(spec, o.a - r, o.b - r, o.a + r, o.b + r)))
    if f.atelectasis is not None:
        a0, b0, a1, b1 = f.atelectasis
        out.append(
            (
                "Atelectasis",
                _box(spec, min(a0, a1), min(b0, b1) - 0.012, max(a0, a1), max(b0, b1) + 0.012),
            )
        )
    return [(name, box) for name, box in out if box is not None]


# --------------------------------------------------------------------------------------------
# Rendering (vectorised numpy on a grid of at most RENDER_MAX px, then resized).
# --------------------------------------------------------------------------------------------
def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator: 0 for x << 0, 1 for x >> 0, linear over ``width``."""
    return np.clip(x * (1.0 / width) + 0.5, 0.0, 1.0)


def _texture(rng: np.random.Generator, cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth zero-mean, unit-ish random field (bicubic upsampled white noise)."""
    h, w = shape
    g = rng.standard_normal((cells, max(2, round(cells * w / h)))).astype(np.float32)
    return np.asarray(Image.fromarray(g, "F").resize((w, h), Image.Resampling.BICUBIC))


def _seg_dist(a: np.ndarray, b: np.ndarray, p0: tuple, p1: tuple) -> np.ndarray:
    da, db = p1[0] - p0[0], p1[1] - p0[1]
    ll = da * da + db * db
    t = np.clip(((a - p0[0]) * da + (b - p0[1]) * db) / ll, 0.0, 1.0)
    return np.hypot(a - p0[0] - t * da, b - p0[1] - t * db)


def _grid(spec: ImageSpec, hr: int, wr: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical coordinates of the render grid's pixel centres."""
    s = min(spec.width, spec.height)
    u = ((np.arange(wr, dtype=np.float32) + 0.5) * (spec.width / wr) - spec.width / 2) / s
    v = ((np.arange(hr, dtype=np.float32) + 0.5) * (spec.height / hr) - spec.height / 2) / s
    u = u[None, :] - spec.tx
    v = v[:, None] - spec.ty
    c, si = math.cos(spec.theta), math.sin(spec.theta)
    a = (c * u + si * v) / spec.zoom
    b = (-si * u + c * v) / spec.zoom
    return a.astype(np.float32), b.astype(np.float32)


def _blob_fill(a: np.ndarray, b: np.ndarray, o: Blob, tex: np.ndarray) -> np.ndarray:
    d2 = (a - o.a) ** 2 + (b - o.b) ** 2
    if o.sharp:
        return o.amp * _ramp(o.size - np.sqrt(d2), 0.006)
    return o.amp * np.exp(d2 * (-0.5 / o.size**2)) * np.clip(0.75 + 0.35 * tex, 0, 1)


def _device_density(a: np.ndarray, b: np.ndarray, devices: list) -> np.ndarray:
    out = np.zeros(a.shape, np.float32)
    for kind, pts in devices:
        if kind == "line":
            for i in range(0, len(pts) - 2, 2):
                d = _seg_dist(a, b, pts[i : i + 2], pts[i + 2 : i + 4])
                out = np.maximum(out, 0.35 * _ramp(0.005 - d, 0.004))
        else:
            d = np.hypot(a - pts[0], b - pts[1])
            out = np.maximum(out, 0.5 * _ramp(pts[2] - d, 0.004))
    return out


def _frontal_density(an: Anatomy, f: Findings, a: np.ndarray, b: np.ndarray, rng) -> np.ndarray:
    """Density map of a frontal (PA/AP) view: soft tissue + bone - lung air."""
    shape = a.shape
    aa = np.abs(a)
    tex = _texture(rng, 10, shape)
    fine = _texture(rng, 28, shape)
    vessel_tex = _texture(rng, 48, shape)
    # body outline: neck widening into shoulders, rounded soft-tissue edges
    body_w = an.thorax + 0.09
    prog = np.clip((b + 0.5) / 0.14, 0.0, 1.0)
    width = 0.075 + (body_w - 0.075) * np.sqrt(prog)
    body = _ramp(width - aa, 0.025)
    tissue = body * (0.82 + 0.18 * np.sqrt(np.clip(1 - (a / body_w) ** 2, 0, 1)))
    tissue *= an.tissue * (1 + 0.03 * tex)
    # lungs (side -1 = image left = patient right)
    air = np.zeros(shape, np.float32)
    hw = (an.thorax - an.medial) / 2
    for side in (-1, 1):
        ca = side * (an.medial + an.thorax) / 2
        dia = an.dia_right if side < 0 else an.dia_left
        x = (a - ca) / hw
        ax = np.abs(x)
        bc = an.apex + 0.3
        y = (b - bc) / 0.3
        sup = np.where(y < 0, ax**2.4 + y * y, ax**5)
        shape_in = _ramp(1.0 - sup, 0.12)
        vd = dia - an.dome * (1 - np.minimum(ax, 1.2) ** 3)
        lung = shape_in * _ramp(vd - b, 0.012)
        sev = f.effusion.get(side)
        if sev is not None:  # fluid with a lateral meniscus blunting the costophrenic angle
            lat = np.clip(side * x * 0.5 + 0.5, 0, 1)
            vfl = vd - _effusion_height(sev) * (0.45 + 0.9 * lat**1.5)
            fill = _ramp(b - vfl, 0.015 + 0.03 * sev) * (0.8 + 0.2 * sev)
            lung = lung * (1 - fill)
        air += lung
    # heart, mediastinum, trachea
    hx, hy, rw, rh, phi = _heart_axes(an, f.ctr)
    dx, dy = a - hx, b - hy
    c, s = math.cos(phi), math.sin(phi)
    q = ((c * dx + s * dy) / rw) ** 2 + ((-s * dx + c * dy) / rh) ** 2
    heart = _ramp(1 - q, 0.15)
    mw = an.medi_width * (1.5 if f.enlarged_medi else 1.0)
    knob = 0.025 * np.exp(-((a - 0.06) ** 2 + (b + 0.2) ** 2) / (2 * 0.03**2))
    medi = _ramp(mw + knob - np.abs(a - 0.005), 0.02) * _ramp(hy - b + 0.05, 0.08)
    opaque = np.maximum(heart, medi)
    for o in f.opacities + f.nodules:
        opaque = 1 - (1 - opaque) * (1 - _blob_fill(a, b, o, fine))
    if f.edema > 0:
        hb = an.apex + 0.3
        haze = np.exp(-((aa - 0.1) ** 2) / (2 * 0.09**2) - (b - hb) ** 2 / (2 * 0.12**2))
        opaque = 1 - (1 - opaque) * (1 - f.edema * haze * np.clip(0.7 + 0.4 * fine, 0, 1))
    if f.atelectasis is not None:
        a0, b0, a1, b1 = f.atelectasis
        d = _seg_dist(a, b, (a0, b0), (a1, b1))
        opaque = np.maximum(opaque, 0.6 * _ramp(0.007 - d, 0.006))
    vessels = np.clip(0.1 * vessel_tex + 0.12 * np.exp(-((aa - 0.1) ** 2) / 0.01), 0, 0.4)
    air = air * (1 - opaque) * (1 - vessels)
    # bones: spine, ribs, clavicles
    spine = _ramp(0.03 - aa, 0.008) * (0.7 + 0.3 * np.cos(b * (2 * np.pi / 0.045)) ** 2)
    thorax = (
        _ramp(an.thorax + 0.015 - aa, 0.02)
        * _ramp(b - an.apex + 0.04, 0.03)
        * _ramp(max(an.dia_left, an.dia_right) + 0.04 - b, 0.04)
    )
    post = (b + 0.55 * aa - 0.9 * a * a) / an.rib_spacing + an.rib_offset
    ant = (b - 0.35 * aa + 0.5 * a * a) / (an.rib_spacing * 1.15) + an.rib_offset * 0.7
    ribs = 0.09 * np.clip((np.cos(2 * np.pi * post) - 0.55) / 0.45, 0, 1)
    ribs += 0.045 * np.clip((np.cos(2 * np.pi * ant) - 0.6) / 0.4, 0, 1) * _ramp(aa - 0.06, 0.02)
    bone = 0.14 * spine + ribs * thorax
    for side in (-1, 1):
        p0 = (side * 0.035, an.clavicle)
        p1 = (side * (an.thorax + 0.05), an.clavicle - 0.07)
        bone += 0.16 * _ramp(0.014 - _seg_dist(a, b, p0, p1), 0.006)
    dens = 0.5 * tissue - 0.36 * air * body + bone * body
    if an.bubble > 0:
        bx = (an.medial + an.thorax) / 2 + 0.02
        by = an.dia_left + an.bubble + 0.015
        dens -= 0.12 * _ramp(an.bubble - np.hypot(a - bx, (b - by) * 1.3), 0.01) * body
    if f.devices:
        dens += _device_density(a, b, f.devices)
    return dens


def _lateral_density(an: Anatomy, f: Findings, a: np.ndarray, b: np.ndarray, rng) -> np.ndarray:
    """Density map of a lateral view (anterior = image left): a plausible, simpler rendering."""
    shape = a.shape
    fine = _texture(rng, 24, shape)
    depth = 0.29 + 0.3 * (an.thorax - 0.36)
    prog = np.clip((b + 0.5) / 0.16, 0.0, 1.0)
    half = 0.09 + (depth - 0.09) * np.sqrt(prog)
    body = _ramp(half - np.abs(a - 0.01), 0.03)
    tissue = body * an.tissue * (0.85 + 0.15 * np.sqrt(np.clip(1 - (a / depth) ** 2, 0, 1)))
    tissue *= 1.15  # both sides superimposed
    dia = max(an.dia_left, an.dia_right)
    hw = depth - 0.05
    x = (a - 0.02) / hw
    ax = np.abs(x)
    y = (b - (an.apex + 0.3)) / 0.3
    sup = np.where(y < 0, ax**2.2 + y * y, ax**4)
    vd = dia - an.dome * (1 - np.minimum(ax, 1.2) ** 2) + 0.04 * np.clip(x, 0, 1)
    lung = _ramp(1 - sup, 0.12) * _ramp(vd - b, 0.015)
    if f.effusion:  # posterior costophrenic sulcus fills first
        sev = max(f.effusion.values())
        post = np.clip(x * 0.5 + 0.5, 0, 1)
        vfl = vd - _effusion_height(sev) * (0.3 + 1.0 * post**1.5)
        lung = lung * (1 - _ramp(b - vfl, 0.02) * 0.9)
    heart_w = 0.12 * f.ctr / 0.45
    hb = dia - 0.13
    heart = _ramp(1 - ((a + 0.08) / heart_w) ** 2 - ((b - hb) / 0.13) ** 2, 0.15)
    opaque = 0.8 * heart
    for o in f.opacities + f.nodules:
        o2 = Blob(o.side, 0.05 + (o.a - o.side * 0.2) * 0.5, o.b, o.size, o.amp * 0.8, o.sharp)
        opaque = 1 - (1 - opaque) * (1 - _blob_fill(a, b, o2, fine))
    air = lung * (1 - opaque) * (1 - np.clip(0.2 * fine, 0, 0.4))
    spine_x = depth - 0.07
    spine = _ramp(0.045 - np.abs(a - spine_x), 0.01) * (
        0.6 + 0.4 * np.clip(np.cos(b * (2 * np.pi / 0.05)) * 3, 0, 1)
    )
    sternum = _ramp(0.012 - np.abs(a + depth - 0.03), 0.006) * _ramp(0.05 - b, 0.05)
    ribs = 0.05 * np.clip((np.cos(2 * np.pi * ((b - 0.3 * a) / an.rib_spacing)) - 0.6) / 0.4, 0, 1)
    dens = 0.5 * tissue - 0.4 * air * body + (0.2 * spine + 0.15 * sternum + ribs * lung) * body
    if f.devices:
        dens += _device_density(a * 0.4, b, [d for d in f.devices if d[0] == "line"])
    return dens


def render_image(an: Anatomy, f: Findings, spec: ImageSpec, seed: int) -> np.ndarray:
    """Render one image as ``uint8 (height, width)``."""
    rng = _rng(seed, 1, spec.patient_idx, spec.study, spec.view_idx)
    scale = min(1.0, RENDER_MAX / max(spec.width, spec.height))
    wr, hr = max(8, round(spec.width * scale)), max(8, round(spec.height * scale))
    a, b = _grid(spec, hr, wr)
    if spec.frontal:
        dens = _frontal_density(an, f, a, b, rng)
    else:
        dens = _lateral_density(an, f, a, b, rng)
    img = (1 - np.exp(-spec.k * np.maximum(dens, 0))) / (1 - math.exp(-spec.k * 0.85))
    ramp_dir = rng.uniform(0, 2 * np.pi)  # heel effect / uneven exposure
    img *= 1 + 0.06 * (math.cos(ramp_dir) * a + math.sin(ramp_dir) * b)
    img = spec.offset + spec.gain * np.clip(img, 0, 1.2) ** spec.gamma
    img += 0.012 * _texture(rng, 40, img.shape)  # mottle
    if spec.marker >= 0:  # a burned-in side marker in a corner
        mh, mw = max(2, hr // 14), max(2, wr // 18)
        r0 = hr // 20 if spec.marker < 2 else hr - hr // 20 - mh
        c0 = wr // 20 if spec.marker % 2 == 0 else wr - wr // 20 - mw
        img[r0 : r0 + mh, c0 : c0 + mw] = 0.97
    img = img.astype(np.float32)
    if (wr, hr) != (spec.width, spec.height):
        img = np.asarray(
            Image.fromarray(img, "F").resize((spec.width, spec.height), Image.Resampling.BILINEAR)
        )
    out = img + spec.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writing the dataset.
# --------------------------------------------------------------------------------------------
def _render_to_file(job: tuple[Anatomy, Findings, ImageSpec, int, str]) -> None:
    an, f, spec, seed, root = job
    pix = render_image(an, f, spec, seed)
    dest = Path(root) / spec.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pix, "L").save(dest, "JPEG", quality=JPEG_QUALITY, optimize=False)


def _csv_rows(patients: Iterable[PatientPlan], split: str) -> list[str]:
    lines = [",".join(CSV_HEADER)]
    for p in patients:
        if p.split != split:
            continue
        for st in p.studies:
            for im in st.images:
                cells = [
                    im.path,
                    st.sex,
                    str(st.age),
                    "Frontal" if im.frontal else "Lateral",
                    im.ap_pa,
                ]
                cells += [st.labels[o] for o in OBSERVATIONS]
                lines.append(",".join(cells))
    return lines


def _box_rows(patients: Iterable[PatientPlan]) -> list[str]:
    lines = [BOX_HEADER]
    for p in patients:
        for st in p.studies:
            for im in st.images:
                if not im.frontal:
                    continue
                for name, (x, y, w, h) in study_boxes(p.anatomy, st.findings, im):
                    lines.append(f"{im.path},{name},{x:.2f},{y:.2f},{w:.2f},{h:.2f},,,")
    return lines


def generate_dataset(
    out_dir: Path,
    preset: str = "demo",
    seed: int = 0,
    n_patients: int | None = None,
    workers: int = 1,
) -> Path:
    """Write the synthetic dataset under ``out_dir/CheXpert-v1.0-small`` and return ``out_dir``.

    The dataset folder is built beside its final place and swapped in at the end, so a killed
    run never leaves a half-written dataset under the final name. ``workers > 1`` renders in
    processes; the bytes do not depend on it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    patients = plan_dataset(preset, seed, n_patients)
    (out_dir / STAMP_FILE).unlink(missing_ok=True)  # re-written only once the dataset is whole
    staging = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIR}.", dir=out_dir))
    try:
        jobs = [
            (p.anatomy, st.findings, im, seed, str(staging))
            for p in patients
            for st in p.studies
            for im in st.images
        ]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                list(ex.map(_render_to_file, jobs, chunksize=16))
        else:
            for job in jobs:
                _render_to_file(job)
        ds = staging / DATASET_DIR
        for split in ("train", "valid"):
            (ds / f"{split}.csv").write_text("\n".join(_csv_rows(patients, split)) + "\n")
        (ds / BOX_CSV).write_text("\n".join(_box_rows(patients)) + "\n")
        final = out_dir / DATASET_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(ds, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    n_images = len(jobs)
    n_frontal = sum(1 for j in jobs if j[2].frontal)
    secs = time.perf_counter() - t0
    write_json_atomic(
        out_dir / STAMP_FILE,
        {
            "generator_version": GENERATOR_VERSION,
            "preset": preset,
            "seed": seed,
            "n_patients": len(patients),
            "n_images": n_images,
            "n_frontal": n_frontal,
            "preset_params": asdict(_preset(preset)),
        },
    )
    log.info(
        "synthetic %s seed=%d: %d patients, %d images (%d frontal) in %.1f s -> %s",
        preset, seed, len(patients), n_images, n_frontal, secs, out_dir,
    )  # fmt: skip
    return out_dir


def read_stamp(out_dir: Path) -> dict | None:
    """The generation stamp written beside the dataset, or None when absent."""
    p = Path(out_dir) / STAMP_FILE
    return json.loads(p.read_text()) if p.exists() else None
