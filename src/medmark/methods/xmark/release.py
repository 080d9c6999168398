"""The owner's release and secret (paper §3.4; docs/methods/xmark.md, "Release").

- :func:`choose_poisoned`: clean-label poisoning, only target-class rows of the release split,
  ``k = max(1, round(poison_rate * N_release))`` capped by the number of target-class rows
  (:func:`poison_budget` records the cap).
- :func:`choose_decoys`: decoy negatives (our extension): ``round(decoys.rate * k)`` non-target
  rows of the release split, each marked with a *fresh* decoy key's carrier by the same
  generator. Labels never change (still clean-label). A model trained on the release then sees
  the carrier family on both classes and can only tie ``y_t`` to the owner's carrier, so a model
  trained on another key's release does not answer the owner's key (Ind-W), nor the owner's
  model another key (Ind-Wp). Ablation ``no_decoys`` (rate 0).
- :func:`apply_generator`: watermark uint8 images and quantise back to the stored bit depth
  (``round(255 * clip(x + delta, 0, 1))``), so every efficacy number downstream is measured on the
  quantised mark. :func:`check_marked` refuses a release whose marks quantised to nothing.
- :func:`write_release`: stream the release split of ``prep/r{res}.h5`` into ``release/r{res}.h5``
  (same layout, attr ``method``; marked rows replaced by their watermarked version, every other
  field row for row as in the source) and optionally a CheXpert-layout tree
  ``CheXpert-v1.0-small-xmark/{train.csv, train/<image_id>.png}``. The tree is PNG (lossless):
  JPEG's quantisation of high-frequency DCT coefficients would partly erase a mark whose
  amplitude is a few grey levels. No secret goes into the release: no poisoned ids, no key.
- :func:`write_owner_dir`: the owner's secret, ``owner/generator.pt``, ``owner/owner.json`` and
  ``owner/verification_r{res}.h5`` per resolution (clean, watermarked and ``decoys``: the same
  images marked with verification-only decoy keys, for the key-specific test). The owner
  directory may never be inside the release directory nor the reverse (:func:`check_separate`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image

from medmark.data.chexpert import CHEXPERT_COLUMNS
from medmark.data.h5 import H5ImageWriter, read_images, read_table
from medmark.data.labels import IGNORE, OBSERVATIONS, task_labels
from medmark.errors import DataFormatError
from medmark.io import sha256_file, write_json_atomic
from medmark.methods.xmark.carrier import decoy_keys
from medmark.methods.xmark.generator import XMarkGenerator, save_generator
from medmark.verify import choose_verification_rows

log = logging.getLogger(__name__)

METHOD = "xmark"
RELEASE_SPLIT = "release"
TREE_NAME = "CheXpert-v1.0-small-xmark"
_META_FIELDS = {"Sex": "sex", "Age": "age", "Frontal/Lateral": "view", "AP/PA": "ap_pa"}
BLOCK = 256


# --------------------------------------------------------------------------- selection


def poison_budget(n_release: int, n_target: int, poison_rate: float) -> dict[str, Any]:
    """How many release rows to watermark: requested ``max(1, round(rate * N))``, capped."""
    if not 0.0 < poison_rate <= 1.0:
        raise ValueError(f"poison_rate must be in (0, 1], got {poison_rate}")
    requested = max(1, round(poison_rate * n_release)) if n_release > 0 else 0
    chosen = min(requested, n_target)
    return {
        "poison_rate": float(poison_rate),
        "n_release": int(n_release),
        "n_target_class": int(n_target),
        "requested": int(requested),
        "chosen": int(chosen),
        "capped": bool(chosen < requested),
        "effective_rate": chosen / n_release if n_release else 0.0,
    }


def choose_poisoned(
    labels: np.ndarray,
    target_class: int,
    poison_rate: float,
    seed: int,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted indices into ``labels`` (task labels of the release rows) to watermark.

    Only rows with ``label == target_class`` (clean-label); ``gamma * N`` of them, capped by their
    number (see :func:`poison_budget`). Without ``scores``: seeded choice without replacement.
    With ``scores`` (one per row, e.g. the clean surrogate's ``P(y_t | x)``): the candidates with
    the *lowest* scores, ties broken by a seeded permutation. Those are the target images a model
    finds hardest to classify from their natural features, so it has to rely on the mark
    (Label-Consistent backdoors, Turner et al. 2019, §4: poisons must be hard).
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    cand = np.flatnonzero(y == target_class)
    budget = poison_budget(len(y), len(cand), poison_rate)
    if budget["capped"]:
        log.warning(
            "poison budget capped: %d requested (rate %.3f of %d) but only %d target-class rows",
            budget["requested"],
            poison_rate,
            len(y),
            len(cand),
        )
    rng = np.random.default_rng(seed)
    if scores is None:
        return np.sort(rng.choice(cand, size=budget["chosen"], replace=False)).astype(np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != y.shape or not np.isfinite(sc[cand]).all():
        raise ValueError(f"scores must be finite, one per row ({y.shape}), got {sc.shape}")
    order = rng.permutation(len(cand))  # seeded tie-break, then a stable sort by score
    ranked = cand[order][np.argsort(sc[cand][order], kind="stable")]
    return np.sort(ranked[: budget["chosen"]]).astype(np.int64)


def choose_decoys(
    labels: np.ndarray, target_class: int, n_poisoned: int, rate: float, seed: int
) -> np.ndarray:
    """Sorted indices of ``round(rate * n_poisoned)`` non-target rows (capped by their number)
    to carry decoy marks; seeded, disjoint from the poisoned rows by construction (other class)."""
    if rate < 0:
        raise ValueError(f"decoys.rate must be >= 0, got {rate}")
    y = np.asarray(labels)
    cand = np.flatnonzero((y != target_class) & (y >= 0))
    n = min(len(cand), round(rate * n_poisoned))
    rng = np.random.default_rng([int(seed), 0xDEC0])
    return np.sort(rng.choice(cand, size=n, replace=False)).astype(np.int64)


# --------------------------------------------------------------------------- watermarking


@torch.no_grad()
def apply_generator(
    generator: XMarkGenerator,
    images_u8: np.ndarray,
    saliency: np.ndarray,
    batch_size: int,
    device: torch.device,
    carrier_keys: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Watermarked uint8 ``(N, R, R)``: ``round(255 * clip(x + delta, 0, 1))``, ``x = u8 / 255``.

    ``carrier_keys`` (one key per image) marks image ``i`` with key ``carrier_keys[i]``'s carrier
    instead of the generator's own (decoys; keyed carriers only).
    """
    images_u8 = np.asarray(images_u8)
    if images_u8.dtype != np.uint8 or images_u8.ndim != 3:
        raise ValueError(f"images must be uint8 (N, R, R), got {images_u8.dtype} {images_u8.shape}")
    if np.shape(saliency) != images_u8.shape:
        raise ValueError(f"saliency shape {np.shape(saliency)} != images shape {images_u8.shape}")
    generator.eval().to(device)
    out = np.empty_like(images_u8)
    if carrier_keys is not None and len(carrier_keys) != len(images_u8):
        raise ValueError(f"{len(carrier_keys)} carrier keys for {len(images_u8)} images")
    for i in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(images_u8[i : i + batch_size]).to(device, torch.float32) / 255.0
        s = torch.from_numpy(np.asarray(saliency[i : i + batch_size], dtype=np.float32))
        keys = None if carrier_keys is None else [int(k) for k in carrier_keys[i : i + batch_size]]
        x_wm, _ = generator(x.unsqueeze(1), s.to(device).unsqueeze(1), keys)
        out[i : i + batch_size] = _quantise(x_wm)
    return out


def _quantise(x_wm: torch.Tensor) -> np.ndarray:
    return torch.round(x_wm.squeeze(1) * 255.0).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def check_marked(clean_u8: np.ndarray, marked_u8: np.ndarray, where: str) -> dict[str, float]:
    """Refuse marks that quantised to nothing: every image must change, by more than rounding.

    Returns ``{"n", "n_unchanged", "mean_abs_levels"}``. Raises ``ValueError`` naming ``where``
    when any image is unchanged after quantisation to 8 bits (the release would carry no mark
    there), e.g. an epsilon below half a grey level or a generator whose gain collapsed.
    """
    diff = np.abs(clean_u8.astype(np.int16) - marked_u8.astype(np.int16))
    changed = diff.reshape(len(diff), -1).max(axis=1) > 0
    stats_ = {
        "n": int(len(diff)),
        "n_unchanged": int((~changed).sum()),
        "mean_abs_levels": float(diff.mean()) if diff.size else 0.0,
    }
    if len(diff) and not changed.all():
        raise ValueError(
            f"{where}: {stats_['n_unchanged']} of {stats_['n']} marked images are unchanged after "
            "quantisation to 8 bits: the mark quantised to nothing (epsilon below half a grey "
            "level, or the generator's gain collapsed). Raise xmark.epsilon or retrain; refusing "
            "to release an unmarked dataset"
        )
    return stats_


# --------------------------------------------------------------------------- checks and IO


def check_separate(owner_dir: str | os.PathLike[str], release_dir: str | os.PathLike[str]) -> None:
    """Refuse an owner directory inside the release directory, or the reverse, or the same."""
    o, r = Path(os.path.abspath(owner_dir)).resolve(), Path(os.path.abspath(release_dir)).resolve()
    if o == r or o.is_relative_to(r) or r.is_relative_to(o):
        raise ValueError(
            f"the owner directory {o} and the release directory {r} must be disjoint "
            "(the owner's secret may never ship with the release)"
        )


def _check_saliency(prep_h5: Path, saliency_h5: Path, ids: np.ndarray, res: int) -> None:
    with h5py.File(saliency_h5, "r") as f:
        for name in ("maps", "ids"):
            if name not in f:
                raise DataFormatError("missing dataset", file=str(saliency_h5), field=name)
        if f["maps"].shape != (len(ids), res, res):
            raise DataFormatError(
                f"shape {f['maps'].shape} != ({len(ids)}, {res}, {res}) of {prep_h5}",
                file=str(saliency_h5),
                field="maps",
            )
        s_ids = f["ids"].asstr()[:]
    if not np.array_equal(s_ids, ids):
        bad = int(np.flatnonzero(s_ids != ids)[0])
        raise DataFormatError(
            f"row {bad}: id {s_ids[bad]!r} != {ids[bad]!r} of {prep_h5} (same ids/order required)",
            file=str(saliency_h5),
            field="ids",
        )


def _read_maps(saliency_h5: Path, rows: np.ndarray) -> np.ndarray:
    """float32 maps of ``rows`` (sorted, unique) clipped to ``[0, 1]``."""
    if rows.size == 0:
        return np.zeros((0, 0, 0), np.float32)
    with h5py.File(saliency_h5, "r") as f:
        maps = f["maps"][np.asarray(rows, dtype=np.int64)]
    maps = maps.astype(np.float32)
    if not np.isfinite(maps).all():
        raise DataFormatError("non-finite saliency values", file=str(saliency_h5), field="maps")
    return np.clip(maps, 0.0, 1.0)


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _safe_relpath(image_id: str, source: Path) -> PurePosixPath:
    p = PurePosixPath(image_id)
    if not image_id or p.is_absolute() or ".." in p.parts or "\\" in image_id:
        raise DataFormatError(
            f"image_id {image_id!r} is not a safe relative path", file=str(source), field="ids"
        )
    return p


@contextlib.contextmanager
def _atomic_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final``, renamed onto it on success (replacing it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _format_label(v: float) -> str:
    return "" if np.isnan(v) else f"{float(v):.1f}"


def _tree_rows(metadata_csv: Path, ids: np.ndarray, labels14: np.ndarray) -> list[dict[str, str]]:
    """CheXpert train.csv fields (except Path) per release row, checked against the prep labels."""
    meta = pd.read_csv(metadata_csv, dtype=str, keep_default_na=False)
    for col in ("image_id", *_META_FIELDS.values(), *OBSERVATIONS):
        if col not in meta.columns:
            raise DataFormatError("missing column", file=str(metadata_csv), row=1, field=col)
    dup = meta["image_id"].duplicated()
    if dup.any():
        first = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataFormatError(
            f"duplicate image_id {meta['image_id'].iloc[first]!r}",
            file=str(metadata_csv),
            row=first + 2,
            field="image_id",
        )
    line_of = {iid: i + 2 for i, iid in enumerate(meta["image_id"].tolist())}
    meta = meta.set_index("image_id", drop=False)
    out = []
    for iid, prep_labels in zip(ids.tolist(), labels14, strict=True):
        if iid not in line_of:
            raise DataFormatError(
                f"release image {iid!r} has no metadata row",
                file=str(metadata_csv),
                field="image_id",
            )
        m = meta.loc[iid]
        row = {col: str(m[src]) for col, src in _META_FIELDS.items()}
        for j, obs in enumerate(OBSERVATIONS):
            text = str(m[obs]).strip()
            value = float(text) if text else np.nan
            if not (np.isnan(value) and np.isnan(prep_labels[j])) and value != prep_labels[j]:
                raise DataFormatError(
                    f"{iid}: {text!r} disagrees with the prep HDF5 label {prep_labels[j]}",
                    file=str(metadata_csv),
                    row=line_of[iid],
                    field=obs,
                )
            row[obs] = _format_label(value)
        out.append(row)
    return out


# --------------------------------------------------------------------------- release


def write_release(
    prep_h5: str | os.PathLike[str],
    saliency_h5: str | os.PathLike[str],
    release_dir: str | os.PathLike[str],
    *,
    owner_dir: str | os.PathLike[str],
    generator: XMarkGenerator,
    target_observation: str,
    uncertainty: str,
    target_class: int,
    poison_rate: float,
    seed: int,
    batch_size: int,
    device: torch.device,
    image_tree: bool,
    metadata_csv: str | os.PathLike[str] | None = None,
    compression_level: int = 4,
    decoy_rate: float = 0.0,
    key: int = 0,
    poison_scores: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``release_dir/r{res}.h5`` (+ the CheXpert tree when ``image_tree``); return the secret.

    The returned dict (``poisoned_ids``, ``budget``, ``seed``, paths) is for
    :func:`write_owner_dir` only; nothing of it is written into ``release_dir``.
    """
    prep_h5, saliency_h5 = Path(prep_h5), Path(saliency_h5)
    release_dir = Path(release_dir)
    check_separate(owner_dir, release_dir)
    if image_tree and metadata_csv is None:
        raise ValueError("image_tree needs metadata_csv (data/metadata.csv)")
    table_all = read_table(prep_h5)
    with h5py.File(prep_h5, "r") as f:
        res = int(f["images"].shape[1])
        src_attrs = {k: v for k, v in f.attrs.items() if k not in ("resolution", "observations")}
    _check_saliency(prep_h5, saliency_h5, table_all["image_id"].to_numpy(), res)
    rel_rows = np.flatnonzero(table_all["split"].to_numpy() == RELEASE_SPLIT)
    if rel_rows.size == 0:
        raise DataFormatError(
            f"no rows in split {RELEASE_SPLIT!r}", file=str(prep_h5), field="splits"
        )
    table = table_all.iloc[rel_rows].reset_index(drop=True)
    labels14 = table[list(OBSERVATIONS)].to_numpy(np.float32)
    y = task_labels(labels14, target_observation, uncertainty)
    budget = poison_budget(len(y), int((y == target_class).sum()), poison_rate)
    if budget["chosen"] == 0:
        raise DataFormatError(
            f"no row of split {RELEASE_SPLIT!r} has the target class {target_class} "
            f"({target_observation}, {uncertainty}): nothing to watermark",
            file=str(prep_h5),
            field="labels",
        )
    ids = table["image_id"].to_numpy()
    scores = None
    if poison_scores is not None:
        scores = np.array([poison_scores.get(i, np.nan) for i in ids.tolist()])
        scores[y != target_class] = np.inf  # only target rows are candidates
    poisoned_local = choose_poisoned(y, target_class, poison_rate, seed, scores)
    is_poisoned = np.zeros(len(y), dtype=bool)
    is_poisoned[poisoned_local] = True
    decoy_local = np.zeros(0, dtype=np.int64)
    if decoy_rate > 0:
        if not generator.keyed:
            raise ValueError("decoy negatives need a keyed carrier (xmark.carrier.kind: keyed)")
        decoy_local = choose_decoys(y, target_class, len(poisoned_local), decoy_rate, seed)
    carrier_of = dict(zip(decoy_local.tolist(), decoy_keys(key, len(decoy_local)), strict=True))
    stats = {"poisoned": [0, 0, 0.0], "decoys": [0, 0, 0.0]}

    attrs = {**src_attrs, "created_by": "medmark.methods.xmark.release", "method": METHOD}
    out_h5 = release_dir / f"r{res}.h5"
    patients, splits = table["patient"].to_numpy(), table["split"].to_numpy()
    tree_rows = _tree_rows(Path(str(metadata_csv)), ids, labels14) if image_tree else []
    with contextlib.ExitStack() as stack:
        # entered first, exited last: the tree is renamed into place after the HDF5 closed
        tree_tmp = stack.enter_context(_atomic_dir(release_dir / TREE_NAME)) if image_tree else None
        writer = stack.enter_context(
            H5ImageWriter(out_h5, len(table), res, attrs, compression_level)
        )
        for sl in _blocks(len(table), BLOCK):
            src_rows = rel_rows[sl]
            images = read_images(prep_h5, src_rows)
            local = np.arange(sl.start, sl.stop)
            mark = is_poisoned[local]
            if mark.any():
                maps = _read_maps(saliency_h5, src_rows[mark])
                marked = apply_generator(generator, images[mark], maps, batch_size, device)
                _tally(stats["poisoned"], check_marked(images[mark], marked, f"{out_h5} poisoned"))
                images[mark] = marked
            dmark = np.array([i in carrier_of for i in local.tolist()], dtype=bool)
            if dmark.any():
                maps = _read_maps(saliency_h5, src_rows[dmark])
                keys = [carrier_of[i] for i in local[dmark].tolist()]
                marked = apply_generator(generator, images[dmark], maps, batch_size, device, keys)
                _tally(stats["decoys"], check_marked(images[dmark], marked, f"{out_h5} decoys"))
                images[dmark] = marked
            for k, i in enumerate(local.tolist()):
                writer.append(images[k], ids[i], patients[i], splits[i], labels14[i])
                if tree_tmp is not None:
                    rel = _safe_relpath(ids[i], prep_h5)
                    png = tree_tmp / "train" / f"{rel}.png"
                    png.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(images[k]).save(png, format="PNG")
                    tree_rows[i]["Path"] = f"{TREE_NAME}/train/{rel}.png"
        if tree_tmp is not None:
            with open(tree_tmp / "train.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(CHEXPERT_COLUMNS))
                w.writeheader()
                w.writerows(tree_rows)
    log.info(
        "release r%d: %d rows, %d watermarked (budget %s) -> %s",
        res,
        len(table),
        int(is_poisoned.sum()),
        budget,
        out_h5,
    )
    return {
        "resolution": res,
        "release_h5": str(out_h5),
        "image_tree": str(release_dir / TREE_NAME) if image_tree else None,
        "n_release": len(table),
        "poisoned_ids": ids[poisoned_local].tolist(),
        "decoy_ids": ids[decoy_local].tolist(),
        "decoy_rate": float(decoy_rate),
        "budget": budget,
        "seed": int(seed),
        "marked_levels": {
            k: {"n": v[0], "mean_abs_levels": v[2] / max(v[0], 1)} for k, v in stats.items()
        },
    }


def _tally(acc: list[Any], st: dict[str, float]) -> None:
    acc[0] += st["n"]
    acc[1] += st["n_unchanged"]
    acc[2] += st["mean_abs_levels"] * st["n"]


# --------------------------------------------------------------------------- owner secret


def write_verification_h5(
    path: str | os.PathLike[str],
    prep_h5: str | os.PathLike[str],
    saliency_h5: str | os.PathLike[str],
    *,
    generator: XMarkGenerator,
    target_observation: str,
    uncertainty: str,
    target_class: int,
    n_images: int,
    verify_seed: int,
    batch_size: int,
    device: torch.device,
    n_decoys: int = 0,
    key: int = 0,
) -> dict[str, Any]:
    """``clean``/``watermarked``/``ids`` of ``m`` seeded non-target verification-split images,
    ``decoys`` ``(K, m, R, R)`` (the same images marked by the same generator with ``K``
    verification-only decoy keys: the key-specific test's reference) and
    ``test_images``/``test_labels`` of the test split (rows with an ignored label left out).

    Rows come from :func:`medmark.verify.choose_verification_rows` (same semantics as the
    verifier). Test images are streamed block by block. Returns the ids and counts.
    """
    from medmark.io import atomic_path

    prep_h5, saliency_h5 = Path(prep_h5), Path(saliency_h5)
    table = read_table(prep_h5)
    with h5py.File(prep_h5, "r") as f:
        res = int(f["images"].shape[1])
    _check_saliency(prep_h5, saliency_h5, table["image_id"].to_numpy(), res)
    y = task_labels(table[list(OBSERVATIONS)].to_numpy(np.float32), target_observation, uncertainty)
    splits = table["split"].to_numpy()
    vrows = choose_verification_rows(y, splits, target_class, n_images, verify_seed)
    clean = read_images(prep_h5, vrows)
    maps = _read_maps(saliency_h5, vrows)
    wm = apply_generator(generator, clean, maps, batch_size, device)
    check_marked(clean, wm, f"{path} watermarked")
    dkeys = decoy_keys(key, n_decoys, stream=1) if n_decoys else []
    decoys = (
        np.stack(
            [
                apply_generator(generator, clean, maps, batch_size, device, [k] * len(clean))
                for k in dkeys
            ]
        )
        if dkeys
        else None
    )
    trows = np.flatnonzero((splits == "test") & (y != IGNORE))
    ids = table["image_id"].to_numpy()[vrows].tolist()
    str_dt = h5py.string_dtype("utf-8")
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("clean", data=clean, compression="gzip")
        f.create_dataset("watermarked", data=wm, compression="gzip")
        if decoys is not None:
            f.create_dataset("decoys", data=decoys, compression="gzip")
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=str_dt)
        test = f.create_dataset(
            "test_images",
            shape=(len(trows), res, res),
            dtype=np.uint8,
            chunks=(1, res, res) if len(trows) else None,
            compression="gzip" if len(trows) else None,
        )
        for sl in _blocks(len(trows), BLOCK):
            test[sl] = read_images(prep_h5, trows[sl])
        f.create_dataset("test_labels", data=y[trows].astype(np.int64))
        f.create_dataset(
            "test_ids",
            data=np.array(table["image_id"].to_numpy()[trows], dtype=object),
            dtype=str_dt,
        )
        f.attrs.update(
            {
                "resolution": res,
                "target_class": int(target_class),
                "target_observation": target_observation,
                "verify_seed": int(verify_seed),
                "method": METHOD,
                "source_prep": str(prep_h5),
            }
        )
    return {
        "resolution": res,
        "ids": ids,
        "m": len(ids),
        "n_test": int(len(trows)),
        "n_decoys": len(dkeys),
    }


def write_owner_dir(
    owner_dir: str | os.PathLike[str],
    *,
    release_dir: str | os.PathLike[str],
    generator: XMarkGenerator,
    sources: Mapping[int, tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    release_info: dict[str, Any],
    key: int,
    target_class: int,
    target_observation: str,
    uncertainty: str,
    resolution: int,
    tau: float,
    alpha: float,
    n_verify: int,
    verify_seed: int,
    batch_size: int,
    device: torch.device,
    generator_meta: dict[str, Any] | None = None,
    n_decoys: int = 0,
    key_tau: float = 0.1,
) -> dict[str, Any]:
    """Write the owner's secret: ``generator.pt``, ``verification_r{res}.h5``, ``owner.json``.

    ``sources`` maps each verification resolution to ``(prep_h5, saliency_h5)``;
    ``release_info`` is what :func:`write_release` returned; ``resolution`` is the generator's
    training resolution. ``owner.json`` is written last (it names the sha256 of the others).
    """
    owner_dir = Path(owner_dir)
    check_separate(owner_dir, release_dir)
    if resolution not in sources:
        raise ValueError(f"sources must include the generator resolution {resolution}")
    gen_path = owner_dir / "generator.pt"
    # No wall-clock data in the secret: its sha256 (in owner.json) must be the same on every
    # run and executor (the per-epoch history with its timings stays in the generator's loss.csv).
    meta = {k: v for k, v in (generator_meta or {}).items() if k != "history"}
    save_generator(generator, gen_path, {**meta, "key": int(key)})
    verification: dict[str, Any] = {}
    for res in sorted(sources):
        prep, sal = sources[res]
        vpath = owner_dir / f"verification_r{res}.h5"
        info = write_verification_h5(
            vpath,
            prep,
            sal,
            generator=generator,
            target_observation=target_observation,
            uncertainty=uncertainty,
            target_class=target_class,
            n_images=n_verify,
            verify_seed=verify_seed,
            batch_size=batch_size,
            device=device,
            n_decoys=n_decoys,
            key=key,
        )
        if info["resolution"] != res:
            raise DataFormatError(
                f"resolution {info['resolution']} != the {res} it was given as", file=str(prep)
            )
        verification[str(res)] = {**info, "file": vpath.name, "sha256": sha256_file(vpath)}
    owner = {
        "method": METHOD,
        "key": int(key),
        "seeds": {
            "generator_key": int(key),
            "release": int(release_info["seed"]),
            "verify": int(verify_seed),
        },
        "target_class": int(target_class),
        "target_observation": target_observation,
        "uncertainty": uncertainty,
        "poisoned_ids": list(release_info["poisoned_ids"]),
        "decoy_ids": list(release_info.get("decoy_ids", [])),
        "decoy_rate": float(release_info.get("decoy_rate", 0.0)),
        "marked_levels": release_info.get("marked_levels", {}),
        "n_verify_decoys": int(n_decoys),
        "poison_rate": float(release_info["budget"]["poison_rate"]),
        "poison_budget": release_info["budget"],
        "release_resolution": int(release_info["resolution"]),
        "verification_ids": verification[str(resolution)]["ids"],
        "verification": verification,
        "verification_file": verification[str(resolution)]["file"],
        "tau": float(tau),
        "key_tau": float(key_tau),
        "alpha": float(alpha),
        "verify_seed": int(verify_seed),
        "resolution": int(resolution),
        "epsilon": float(generator.config.epsilon),
        "generator": {
            "file": gen_path.name,
            "sha256": sha256_file(gen_path),
            "config": dict(generator.config.__dict__),
        },
    }
    write_json_atomic(owner_dir / "owner.json", owner)
    return owner
