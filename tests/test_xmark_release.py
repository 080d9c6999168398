"""X-Mark release and owner secret (paper §3.4, docs/methods/xmark.md "Release"; docs/methods/verification.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medmark.data.chexpert import CHEXPERT_COLUMNS
from medmark.data.h5 import read_images, read_table
from medmark.data.labels import OBSERVATIONS, task_labels
from medmark.errors import DataFormatError
from medmark.io import sha256_file
from medmark.methods.base import poison_budget
from medmark.methods.release import check_separate, tree_name, write_owner_dir, write_release
from medmark.methods.xmark import XMark, XMarkGenerator, apply_generator, choose_poisoned
from tests.release_data import release_dataset

TREE_NAME = tree_name("xmark")

torch.set_num_threads(1)
CPU = torch.device("cpu")
R = 16
OBS = "Pleural Effusion"
TASK = {"target_observation": OBS, "uncertainty": "u_zeros", "target_class": 1}


def _generator() -> XMarkGenerator:
    gen = XMarkGenerator(base_channels=4, depth=2, epsilon=0.05, mask_kind="soft", key=1, seed=0)
    torch.manual_seed(7)
    with torch.no_grad():
        nn.init.normal_(gen.out.weight, std=2.0)
        nn.init.normal_(gen.out.bias, std=2.0)
    return gen.eval()


@pytest.fixture()
def dataset(tmp_path: Path) -> dict[str, Path]:
    return release_dataset(tmp_path, R, OBS)


def _xmark(gen: XMarkGenerator, key: int = 1, decoy_rate: float = 0.0, n_decoys: int = 0) -> XMark:
    return XMark(
        key, 1, {}, generator=gen, device=CPU, batch_size=4, decoy_rate=decoy_rate,
        n_verify_decoys=n_decoys,
    )  # fmt: skip


def _release(ds: dict[str, Path], image_tree: bool = True) -> dict:
    return write_release(
        ds["prep"],
        ds["root"] / "out" / "release",
        owner_dir=ds["root"] / "out" / "owner",
        method=_xmark(_generator()),
        saliency_h5=ds["saliency"],
        target_observation=OBS,
        uncertainty="u_zeros",
        poison_rate=0.25,
        seed=0,
        image_tree=image_tree,
        metadata_csv=ds["metadata"],
    )


def test_choose_poisoned_only_target_rows_seeded_and_capped() -> None:
    y = np.array([1, 0, 1, 1, 0, -1, 1, 0, 0, 0])
    rows = choose_poisoned(y, 1, 0.3, seed=0)
    assert len(rows) == 3 and np.all(y[rows] == 1) and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, choose_poisoned(y, 1, 0.3, seed=0))
    capped = choose_poisoned(y, 1, 0.9, seed=0)
    assert np.array_equal(capped, np.flatnonzero(y == 1))
    b = poison_budget(10, 4, 0.9)
    assert b["requested"] == 9 and b["chosen"] == 4 and b["capped"]
    assert not poison_budget(10, 4, 0.2)["capped"]
    assert poison_budget(10, 4, 0.01)["chosen"] == 1  # at least one image when gamma > 0
    with pytest.raises(ValueError):
        poison_budget(10, 4, 0.0)


def test_apply_generator_quantises_to_uint8() -> None:
    gen = _generator()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, R, R), dtype=np.uint8)
    sal = rng.random((5, R, R)).astype(np.float32)
    out = apply_generator(gen, images, sal, batch_size=2, device=CPU)
    assert out.dtype == np.uint8 and out.shape == images.shape
    with torch.no_grad():
        x_wm, _ = gen(
            torch.from_numpy(images).float().div(255).unsqueeze(1),
            torch.from_numpy(sal).unsqueeze(1),
        )
    want = np.clip(np.round(x_wm.squeeze(1).numpy() * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(out, want)
    assert np.abs(out.astype(int) - images.astype(int)).max() <= round(0.05 * 255) + 1
    assert not np.array_equal(out, images)


def test_release_keeps_labels_and_marks_only_target_rows(dataset: dict[str, Path]) -> None:
    info = _release(dataset)
    src, rel_h5 = read_table(dataset["prep"]), Path(info["release_h5"])
    rel = read_table(rel_h5)
    src_rel = src[src["split"] == "release"].reset_index(drop=True)
    assert rel["image_id"].tolist() == src_rel["image_id"].tolist()
    assert rel["patient"].tolist() == src_rel["patient"].tolist()
    assert (rel["split"] == "release").all()
    a, b = rel[list(OBSERVATIONS)].to_numpy(), src_rel[list(OBSERVATIONS)].to_numpy()
    np.testing.assert_array_equal(a, b)  # NaN (blank) positions included
    clean = read_images(dataset["prep"], src_rel["row"].to_numpy())
    released = read_images(rel_h5, rel["row"].to_numpy())
    changed = np.any(clean != released, axis=(1, 2))
    y = task_labels(b, OBS, "u_zeros")
    poisoned = set(info["poisoned_ids"])
    assert len(poisoned) == info["budget"]["chosen"] == 6  # 0.25 * 24, 9 target rows
    assert set(rel["image_id"][changed]) == poisoned
    assert np.all(y[changed] == 1)
    with h5py.File(rel_h5, "r") as f, h5py.File(dataset["prep"], "r") as g:
        assert set(f) == set(g)
        assert f.attrs["method"] == "xmark"
        assert set(f.attrs) == set(g.attrs) | {"method"}


def test_image_tree_is_chexpert_layout_png(dataset: dict[str, Path]) -> None:
    info = _release(dataset)
    tree = Path(info["image_tree"])
    assert tree.name == TREE_NAME
    with open(tree / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == CHEXPERT_COLUMNS
    rel = read_table(info["release_h5"])
    released = read_images(info["release_h5"], rel["row"].to_numpy())
    assert [r["Path"] for r in rows] == [
        f"{TREE_NAME}/train/{i}.png" for i in rel["image_id"].tolist()
    ]
    for k, r in enumerate(rows):
        png = tree.parent / r["Path"]
        assert np.array_equal(np.asarray(Image.open(png)), released[k])  # lossless
        assert r["Frontal/Lateral"] == "Frontal" and r["Sex"] in ("Male", "Female")
        pe = rel[OBS].iloc[k]
        assert r[OBS] == ("" if np.isnan(pe) else f"{pe:.1f}")


def test_metadata_disagreeing_with_prep_is_an_error(dataset: dict[str, Path]) -> None:
    text = dataset["metadata"].read_text().splitlines()
    fields = text[1].split(",")
    col = text[0].split(",").index(OBS)
    fields[col] = "0.0" if fields[col] == "1.0" else "1.0"
    text[1] = ",".join(fields)
    dataset["metadata"].write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError, match="line 2"):
        _release(dataset)
    assert not (dataset["root"] / "out" / "release" / f"r{R}.h5").exists()


def test_release_without_target_rows_is_an_error(dataset: dict[str, Path]) -> None:
    with pytest.raises(DataFormatError, match="nothing to watermark"):
        write_release(
            dataset["prep"],
            dataset["root"] / "out" / "release",
            owner_dir=dataset["root"] / "out" / "owner",
            method=_xmark(_generator()),
            saliency_h5=dataset["saliency"],
            target_observation="Fracture",  # all blank in the fixture
            uncertainty="u_zeros",
            poison_rate=0.1,
            seed=0,
            image_tree=False,
        )


def test_saliency_ids_must_match(dataset: dict[str, Path]) -> None:
    with h5py.File(dataset["saliency"], "r+") as f:
        ids = f["ids"].asstr()[:]
        ids[3] = "someone/else"
        del f["ids"]
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(DataFormatError, match="ids"):
        _release(dataset, image_tree=False)


def test_owner_and_release_dirs_must_be_disjoint(tmp_path: Path) -> None:
    for owner, release in (("r/owner", "r"), ("o", "o/release"), ("same", "same")):
        with pytest.raises(ValueError, match="disjoint"):
            check_separate(tmp_path / owner, tmp_path / release)
    check_separate(tmp_path / "owner", tmp_path / "release")


def _owner_dir(dataset, info, gen, owner_dir, release_dir, key):
    """``write_owner_dir`` with the fixture's sources and fixed verification settings."""
    return write_owner_dir(
        owner_dir,
        release_dir=release_dir,
        method=_xmark(gen, key=key),
        sources={R: (dataset["prep"], dataset["saliency"])},
        release_info=info,
        target_observation=OBS,
        uncertainty="u_zeros",
        resolution=R,
        n_verify=4,
        verify_seed=0,
    )


def test_owner_dir_holds_the_secret_and_release_holds_none(dataset: dict[str, Path]) -> None:
    info = _release(dataset)
    out = dataset["root"] / "out"
    gen = _generator()
    owner = _owner_dir(dataset, info, gen, out / "owner", out / "release", key=1234567)
    files = {p.name for p in (out / "owner").iterdir()}
    assert files == {"generator.pt", "owner.json", f"verification_r{R}.h5"}
    meta = json.loads((out / "owner" / "owner.json").read_text())
    assert meta == json.loads(json.dumps(owner))
    assert meta["poisoned_ids"] == info["poisoned_ids"] and meta["key"] == 1234567
    assert meta["generator"]["sha256"] == sha256_file(out / "owner" / "generator.pt")
    for key in ("method", "target_class", "verify_seed", "resolution", "epsilon"):
        assert key in meta
    assert not {"tau", "key_tau", "alpha"} & set(meta)  # chosen at verification, not release

    # verification images: m seeded non-target images of the verification split
    table = read_table(dataset["prep"])
    y = task_labels(table[list(OBSERVATIONS)].to_numpy(), OBS, "u_zeros")
    with h5py.File(out / "owner" / f"verification_r{R}.h5", "r") as f:
        ids = f["ids"].asstr()[:].tolist()
        clean, wm = f["clean"][:], f["watermarked"][:]
        test_images, test_labels = f["test_images"][:], f["test_labels"][:]
    rows = table.set_index("image_id").loc[ids, "row"].to_numpy()
    assert len(ids) == 4 and ids == meta["verification_ids"]
    assert (table["split"].to_numpy()[rows] == "verification").all() and (y[rows] == 0).all()
    assert np.array_equal(clean, read_images(dataset["prep"], rows))
    with h5py.File(dataset["saliency"], "r") as f:
        sal = f["maps"][np.sort(rows)].astype(np.float32)
    assert np.array_equal(wm, apply_generator(gen, clean, sal, 4, CPU))
    test_rows = np.flatnonzero(table["split"].to_numpy() == "test")
    assert test_labels.dtype == np.int64 and np.array_equal(test_labels, y[test_rows])
    assert np.array_equal(test_images, read_images(dataset["prep"], test_rows))

    # nothing of the owner directory is in the release
    owner_hashes = {sha256_file(p) for p in (out / "owner").iterdir()}
    release_files = [p for p in (out / "release").rglob("*") if p.is_file()]
    assert len(release_files) > 10
    secrets = [
        b"1234567",
        meta["generator"]["sha256"].encode(),
        json.dumps(meta["poisoned_ids"]).encode(),
        b"poisoned",
        b"owner_key",
    ]
    for p in release_files:
        assert p.name not in files
        assert sha256_file(p) not in owner_hashes
        blob = p.read_bytes()
        assert not any(s in blob for s in secrets), p
    with h5py.File(info["release_h5"], "r") as f:
        attr_text = " ".join(f"{k}={v}" for k, v in f.attrs.items())
    assert not any(pid in attr_text for pid in info["poisoned_ids"])

    with pytest.raises(ValueError, match="disjoint"):
        _owner_dir(dataset, info, gen, out / "release" / "owner", out / "release", key=1)


def test_decoys_mark_non_target_rows_with_other_keys_and_verification_holds_them(
    dataset: dict[str, Path],
) -> None:
    """Decoy negatives: non-target release rows marked with fresh keys, labels unchanged; the
    owner's verification file holds K decoy-marked copies of the verification images.

    Breakage guarded: decoys marked with the owner's own carrier (their marks would then equal
    the owner's on the same image), decoys drawn from target rows, or decoys left unmarked.
    """
    gen = _generator()
    rel_dir = dataset["root"] / "out" / "release"
    info = write_release(
        dataset["prep"], rel_dir, owner_dir=dataset["root"] / "out" / "owner",
        method=_xmark(gen, decoy_rate=1.0), saliency_h5=dataset["saliency"],
        target_observation=OBS, uncertainty="u_zeros", poison_rate=0.25, seed=0, image_tree=False,
    )  # fmt: skip
    decoy_ids = info["groups"]["decoys"]
    assert len(decoy_ids) == len(info["poisoned_ids"]) > 0
    src, rel = read_table(dataset["prep"]), read_table(rel_dir / f"r{R}.h5")
    src = src.set_index("image_id").loc[rel["image_id"]]
    clean = read_images(dataset["prep"], src["row"].to_numpy())
    marked = read_images(rel_dir / f"r{R}.h5", rel["row"].to_numpy())
    changed = set(rel["image_id"][(clean != marked).any(axis=(1, 2))])
    assert changed == set(info["poisoned_ids"]) | set(decoy_ids) == set(info["image_changed_ids"])
    assert info["label_changed"] == {}  # clean-label
    y = task_labels(rel[list(OBSERVATIONS)].to_numpy(np.float32), OBS, "u_zeros")
    is_decoy = rel["image_id"].isin(decoy_ids).to_numpy()
    assert (y[is_decoy] == 0).all()
    with h5py.File(dataset["saliency"]) as f:
        maps = f["maps"][()].astype(np.float32)[src["row"].to_numpy()[is_decoy]]
    owner_mark = apply_generator(gen, clean[is_decoy], maps, 4, CPU)
    assert not np.array_equal(owner_mark, marked[is_decoy])
    out = dataset["root"] / "out"
    owner = write_owner_dir(
        out / "owner", release_dir=rel_dir, method=_xmark(gen, decoy_rate=1.0, n_decoys=3),
        sources={R: (dataset["prep"], dataset["saliency"])}, release_info=info,
        target_observation=OBS, uncertainty="u_zeros", resolution=R,
        n_verify=4, verify_seed=0,
    )  # fmt: skip
    assert owner["marked_groups"]["decoys"] == decoy_ids and owner["n_verify_decoys"] == 3
    with h5py.File(out / "owner" / f"verification_r{R}.h5") as f:
        dec, wm, cl = f["decoys"][()], f["watermarked"][()], f["clean"][()]
    assert dec.shape == (3, *wm.shape) and dec.dtype == np.uint8
    for k in range(3):
        assert (dec[k] != cl).any() and (dec[k] != wm).any()


class _Constant(nn.Module):
    """A 'classifier' that always answers ``logits`` (a degenerate surrogate when one-sided)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class _Brightness(nn.Module):
    """Predicts class 1 for bright images: both classes on the fixture's test split."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 10


def test_degenerate_surrogate_is_refused(dataset: dict[str, Path]) -> None:
    """Guard: a surrogate answering one class on the whole test split stops the generator stage
    (breakage guarded: the check skipped, or run on a split where both classes come out)."""
    from medmark.stages.xmark import check_surrogate

    with pytest.raises(ValueError, match="degenerate surrogate: it predicts class 0 for all 8"):
        check_surrogate(_Constant([2.0, -2.0]), dataset["prep"], TASK, R, CPU, where="s.pt")
    counts = check_surrogate(
        _Constant([2.0, -2.0]), dataset["prep"], TASK, R, CPU, where="s.pt", on_degenerate="warn"
    )
    assert counts == {0: 8}
    assert len(check_surrogate(_Brightness(), dataset["prep"], TASK, R, CPU, where="s.pt")) == 2
