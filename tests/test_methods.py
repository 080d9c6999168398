"""The method interface, the registry and the baselines through the generic release writer.

Per method: marks inside the stated budget; one key gives the same marks and another key other
marks (Ind-W is meaningful); a poison-label release changes exactly the labels it records and a
clean-label one none; the secret never lands in release/; one key gives byte-identical releases.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medmark.data.h5 import read_images, read_table
from medmark.data.labels import OBSERVATIONS, task_labels
from medmark.methods.base import WatermarkMethod
from medmark.methods.registry import BASELINES, GENERIC, METHODS, method_class
from medmark.models import build_classifier, save_classifier
from medmark.stages.release import release_stage
from tests.release_data import release_dataset

R = 32
OBS = "Pleural Effusion"
TASK = {"target_observation": OBS, "uncertainty": "u_zeros", "target_class": 1}
SCHEMA = Path(__file__).parents[1] / "config" / "schema.yaml"


def schema_cfg(method: str) -> dict:
    """The method's config section as the workflow passes it: the schema's defaults."""
    props = yaml.safe_load(SCHEMA.read_text())["properties"]["baselines"]["properties"][method]
    return {k: v["default"] for k, v in props["properties"].items()}


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean classifier checkpoint (random weights: enough for a gradient to follow)."""
    path = tmp_path_factory.mktemp("surrogate") / "model.pt"
    save_classifier(build_classifier("resnet18", seed=0), path)
    return path


#: A small X-Mark section for the generator-based baselines (one epoch on the tiny fixture).
TINY_XMARK = {
    "resolution": R,
    "base_channels": 4,
    "depth": 2,
    "epochs": 4,
    "batch_size": 8,
    "lr": 0.05,
}


def method_cfg(method: str) -> dict:
    """As the release rule passes it: the schema's defaults (+ the surrogate's resolution and
    the xmark section where the registry entry asks for them)."""
    entry = METHODS[method]
    extra = {"surrogate_resolution": R} if entry.surrogate else {}
    return schema_cfg(method) | extra | ({"xmark": TINY_XMARK} if entry.xmark_section else {})


def build(method: str, surrogate: Path, key: int = 1) -> WatermarkMethod:
    """The method through its interface: built, prepared with the rule's inputs, fitted."""
    wm = method_class(method)(key, 1, method_cfg(method))
    wm.prepare({"surrogate": str(surrogate)}, "cpu")
    rng = np.random.default_rng(0)
    wm.fit(rng.integers(0, 256, (16, R, R), dtype=np.uint8), np.arange(16) % 2, "cpu")
    return wm


def test_registry_entries_match_their_classes() -> None:
    for name, entry in METHODS.items():
        cls = method_class(name)
        assert issubclass(cls, WatermarkMethod) and cls.name == name
        assert (cls.label_mode, cls.verification) == (entry.label_mode, entry.verification)
    for name in GENERIC:
        assert not method_class(name).needs_saliency  # the generic rule has no saliency input
    with pytest.raises(ValueError, match="unknown watermark method"):
        method_class("nonesuch")


def test_lock_registry_entries_match_their_classes() -> None:
    """Inference-time locks are a registry family of their own (methods/lock.py): each entry's
    class is an InferenceLock, not a WatermarkMethod, with the entry's name and verification,
    and its settings are keys of the entry's config section in config/schema.yaml."""
    from medmark.methods.lock import InferenceLock
    from medmark.methods.registry import LOCKS, family, lock_class

    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert LOCKS and not set(LOCKS) & set(METHODS)
    for name, entry in LOCKS.items():
        cls = lock_class(name)
        assert issubclass(cls, InferenceLock) and not issubclass(cls, WatermarkMethod)
        assert cls.name == name and cls.verification == entry.verification
        assert set(cls.settings) <= set(props[entry.config]["properties"]), name
        assert family(name) == "lock"
        with pytest.raises(ValueError, match="inference-time lock"):
            method_class(name)
    assert {family(m) for m in METHODS} == {"watermark"}
    with pytest.raises(ValueError, match="unknown inference-time lock"):
        lock_class("xmark")


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("res", [32, 64])
def test_marks_stay_inside_the_stated_budget(method: str, res: int, surrogate: Path) -> None:
    wm = build(method, surrogate)
    rng = np.random.default_rng(res)
    x = rng.integers(0, 256, size=(6, res, res), dtype=np.uint8)
    if "max_shift_px" in wm.budget():  # a warp: on a ramp, |x' - x| <= slope * shift
        ramp = np.linspace(0, 255, res)
        x = np.round(
            np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp])
        ).astype(np.uint8)
    out = wm.mark(x)
    assert out.dtype == np.uint8 and out.shape == x.shape
    diff = np.abs(out.astype(int) - x.astype(int))
    assert (diff.reshape(len(x), -1).max(axis=1) > 0).all()  # every image carries the mark
    budget = wm.budget()
    assert budget, f"{method} states no budget"
    inside = np.zeros((res, res), bool)  # the corner patch (BadNets-style triggers)
    if "patch_frac" in budget:
        side = max(wm.cfg["cells"], round(budget["patch_frac"] * res))
        inside[-side:, -side:] = True
    outside = diff[:, ~inside]
    if "linf" in budget:
        assert outside.max() <= budget["linf"] * 255 + 0.5
    elif "patch_frac" in budget:
        assert not outside.any()
    if "max_shift_px" in budget:
        slope = 255 / (res - 1)
        assert diff.max() <= budget["max_shift_px"] * slope + 1


@pytest.mark.parametrize("method", BASELINES)
def test_one_key_one_mark_and_other_keys_other_marks(method: str, surrogate: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(4, R, R), dtype=np.uint8)
    a, b, c = (build(method, surrogate, k).mark(x) for k in (11, 11, 12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _release(ds: dict[str, Path], method: str, out: str, key: int, surrogate: Path) -> dict:
    return release_stage(
        method=method, method_cfg=method_cfg(method), key=key,
        inputs={"surrogate": str(surrogate)}, saliency=None,
        prep={R: str(ds["prep"])},
        metadata_csv=ds["metadata"], release_dir=ds["root"] / out / "release",
        owner_dir=ds["root"] / out / "owner", working_resolution=R, task=TASK,
        release_cfg={"poison_rate": 0.25, "seed": 0, "image_tree": True},
        verify_cfg={"n_images": 4, "seed": 0},
        device="cpu", threads=1, quality_csv=ds["root"] / out / "owner" / "quality.csv",
    )  # fmt: skip


def _tree_bytes(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("method", BASELINES)
def test_release_changes_exactly_what_it_records(
    tmp_path: Path, method: str, surrogate: Path
) -> None:
    ds = release_dataset(tmp_path, R, OBS)
    key = 1234567
    owner = _release(ds, method, "a", key, surrogate)
    src, rel_h5 = read_table(ds["prep"]), ds["root"] / "a" / "release" / f"r{R}.h5"
    rel = read_table(rel_h5)
    src = src[src["split"] == "release"].reset_index(drop=True)
    assert rel["image_id"].tolist() == src["image_id"].tolist()
    y0 = task_labels(src[list(OBSERVATIONS)].to_numpy(np.float32), OBS, "u_zeros")
    y1 = task_labels(rel[list(OBSERVATIONS)].to_numpy(np.float32), OBS, "u_zeros")
    ids = rel["image_id"].to_numpy()
    changed_labels = {str(i): {"from": int(a), "to": int(b)} for i, a, b in zip(ids, y0, y1, strict=True) if a != b}  # fmt: skip
    assert changed_labels == owner["label_changed"]
    other = [c for c in OBSERVATIONS if c != OBS]  # only the target observation may change
    np.testing.assert_array_equal(rel[other].to_numpy(), src[other].to_numpy())
    raw0, raw1 = src[OBS].to_numpy(), rel[OBS].to_numpy()
    raw_changed = ids[~((raw0 == raw1) | (np.isnan(raw0) & np.isnan(raw1)))]
    assert set(raw_changed.tolist()) == set(changed_labels)  # raw values change only there
    img0 = read_images(ds["prep"], src["row"].to_numpy())
    img1 = read_images(rel_h5, rel["row"].to_numpy())
    changed_images = set(ids[(img0 != img1).any(axis=(1, 2))].tolist())
    groups = [owner["poisoned_ids"], *owner["marked_groups"].values()]
    assert changed_images == set(owner["image_changed_ids"]) == set().union(*groups)
    cls = method_class(method)
    if cls.label_mode == "clean":
        assert changed_labels == {}
    elif cls.verification == "targeted":  # every marked row relabelled to the target
        assert set(changed_labels) == set(owner["poisoned_ids"]) and len(changed_labels) == 6
        assert all(v["to"] == 1 for v in changed_labels.values())
    else:  # untargeted: random labels, some rows keep theirs
        assert 0 < len(changed_labels) <= len(owner["poisoned_ids"]) == 6
        assert set(changed_labels) <= set(owner["poisoned_ids"])
    # the CheXpert tree carries the released labels
    tree_csv = ds["root"] / "a" / "release" / f"CheXpert-v1.0-small-{method}" / "train.csv"
    rows = {r.split(",")[0]: r for r in tree_csv.read_text().splitlines()[1:]}
    assert len(rows) == len(ids)

    # the secret never lands in release/
    owner_dir = ds["root"] / "a" / "owner"
    secret_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in owner_dir.iterdir()}
    needles = [str(key).encode(), json.dumps(owner["poisoned_ids"]).encode()]
    needles += [h.encode() for h in secret_hashes]  # no owner file named by its hash
    for p in (ds["root"] / "a" / "release").rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert hashlib.sha256(blob).hexdigest() not in secret_hashes, p
            assert not any(n in blob for n in needles), p

    # the same key gives a byte-identical release (and owner secret)
    _release(ds, method, "b", key, surrogate)
    assert _tree_bytes(ds["root"] / "a" / "release") == _tree_bytes(ds["root"] / "b" / "release")
    assert _tree_bytes(owner_dir) == _tree_bytes(ds["root"] / "b" / "owner")
