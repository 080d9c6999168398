"""The release and the owner's secret for any :class:`~medmark.methods.base.WatermarkMethod`
(docs/methods/interface.md, "Release"; X-Mark paper §3.4 for the clean-label case).

- :func:`write_release`: stream the release split of ``prep/r{res}.h5`` into
  ``release/r{res}.h5`` (same layout, attr ``method``; the rows of each :class:`Selection` group
  replaced by their marked version and, for poison-label groups, the target observation set to
  the group's new label; every other field row for row as in the source) and optionally a
  CheXpert-layout tree ``CheXpert-v1.0-small-{method}/{train.csv, train/<image_id>.png}``
  (PNG: lossless, a mark of a few grey levels survives). Both are written to temporary names
  and renamed into place. No secret goes into the release: no marked ids, no key.
- :func:`write_verification_h5` / :func:`write_owner_dir`: the owner's secret, the method's
  files (:meth:`WatermarkMethod.save_secret`), ``verification_r{res}.h5`` per resolution and
  ``owner.json`` (written last; it names the sha256 of the others). The owner directory may never
  be inside the release directory nor the reverse (:func:`check_separate`).

``owner.json`` records which ids changed image (``image_changed_ids``) and which changed label
(``label_changed_ids``, with the new labels): a clean-label method has none of the latter.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from medmark.data.chexpert import CHEXPERT_COLUMNS
from medmark.data.h5 import H5ImageWriter, read_images, read_table
from medmark.data.labels import IGNORE, OBSERVATIONS, task_labels
from medmark.errors import DataFormatError
from medmark.io import atomic_path, sha256_file, write_json_atomic
from medmark.methods.base import VERIFY_GROUP, Selection, WatermarkMethod, poison_budget
from medmark.verify import choose_verification_rows

log = logging.getLogger(__name__)

RELEASE_SPLIT = "release"
TREE_PREFIX = "CheXpert-v1.0-small-"
_META_FIELDS = {"Sex": "sex", "Age": "age", "Frontal/Lateral": "view", "AP/PA": "ap_pa"}
BLOCK = 256


def tree_name(method: str) -> str:
    """The CheXpert-layout tree of a method's release (``CheXpert-v1.0-small-{method}``)."""
    return f"{TREE_PREFIX}{method}"


# --------------------------------------------------------------------------- checks


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
            "quantisation to 8 bits: the mark quantised to nothing (a budget below half a grey "
            "level, or a generator whose gain collapsed). Raise the method's budget or retrain; "
            "refusing to release an unmarked dataset"
        )
    return stats_


def check_separate(owner_dir: str | os.PathLike[str], release_dir: str | os.PathLike[str]) -> None:
    """Refuse an owner directory inside the release directory, or the reverse, or the same."""
    o, r = Path(os.path.abspath(owner_dir)).resolve(), Path(os.path.abspath(release_dir)).resolve()
    if o == r or o.is_relative_to(r) or r.is_relative_to(o):
        raise ValueError(
            f"the owner directory {o} and the release directory {r} must be disjoint "
            "(the owner's secret may never ship with the release)"
        )


def check_saliency(prep_h5: Path, saliency_h5: Path, ids: np.ndarray, res: int) -> None:
    """The saliency HDF5 must hold one ``(res, res)`` map per prep row, same ids, same order."""
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


def read_maps(saliency_h5: Path, rows: np.ndarray) -> np.ndarray:
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
def atomic_dir(final: Path) -> Iterator[Path]:
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


class ReleaseSink:
    """What ships, row by row: ``out_h5`` (:class:`~medmark.data.h5.H5ImageWriter`) and, when
    ``tree`` names a directory, the CheXpert-layout tree ``{tree}/train.csv`` +
    ``{tree}/train/<image_id>.png`` (lossless PNG). Both are written under temporary names; on
    leaving the ``with`` block the HDF5 is renamed into place, then the tree; on an exception
    neither is. Every release writer (watermarks: :func:`write_release`; inference-time locks:
    :func:`medmark.methods.lock.write_locked_release`) goes through it."""

    def __init__(
        self,
        out_h5: Path,
        n: int,
        res: int,
        attrs: Mapping[str, Any],
        *,
        tree: Path | None,
        source: Path,
        compression_level: int = 4,
    ) -> None:
        self.out_h5, self.tree, self.source = Path(out_h5), tree, source
        self._args = (n, res, dict(attrs), compression_level)
        self._stack = contextlib.ExitStack()
        self._tree_tmp: Path | None = None
        self._csv_rows: list[dict[str, str]] = []

    def __enter__(self) -> ReleaseSink:
        n, res, attrs, level = self._args
        with contextlib.ExitStack() as stack:
            # entered first, exited last: the tree is renamed into place after the HDF5 closed
            if self.tree is not None:
                self._tree_tmp = stack.enter_context(atomic_dir(self.tree))
            self._writer = stack.enter_context(H5ImageWriter(self.out_h5, n, res, attrs, level))
            self._stack = stack.pop_all()
        return self

    def append(
        self,
        image: np.ndarray,
        image_id: str,
        patient: str,
        split: str,
        labels14: np.ndarray,
        tree_row: Mapping[str, str] | None = None,
    ) -> None:
        """One row; ``tree_row`` (the CheXpert ``train.csv`` fields but ``Path``) is required
        when the sink writes a tree."""
        self._writer.append(image, image_id, patient, split, labels14)
        if self._tree_tmp is None or self.tree is None:
            return
        if tree_row is None:
            raise ValueError(f"{self.tree}: a tree row is needed for {image_id!r}")
        rel = _safe_relpath(image_id, self.source)
        png = self._tree_tmp / "train" / f"{rel}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(png, format="PNG")
        self._csv_rows.append({**tree_row, "Path": f"{self.tree.name}/train/{rel}.png"})

    def __exit__(self, *exc: object) -> bool | None:
        if exc[0] is None and self._tree_tmp is not None:
            try:
                with open(self._tree_tmp / "train.csv", "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(CHEXPERT_COLUMNS))
                    w.writeheader()
                    w.writerows(self._csv_rows)
            except BaseException:
                if not self._stack.__exit__(*sys.exc_info()):
                    raise
                return None
        return self._stack.__exit__(*exc)


# --------------------------------------------------------------------------- release


def _release_table(prep_h5: Path) -> tuple[pd.DataFrame, np.ndarray, int, dict[str, Any]]:
    table_all = read_table(prep_h5)
    with h5py.File(prep_h5, "r") as f:
        res = int(f["images"].shape[1])
        src_attrs = {k: v for k, v in f.attrs.items() if k not in ("resolution", "observations")}
    rel_rows = np.flatnonzero(table_all["split"].to_numpy() == RELEASE_SPLIT)
    if rel_rows.size == 0:
        raise DataFormatError(
            f"no rows in split {RELEASE_SPLIT!r}", file=str(prep_h5), field="splits"
        )
    return table_all, rel_rows, res, src_attrs


def _relabel(
    labels14: np.ndarray, y: np.ndarray, selection: Selection, target_observation: str
) -> np.ndarray:
    """The release's 14 labels: each labelled group's rows whose task label ``y`` differs from
    the new one get it (1.0 or 0.0 in the target observation: the same task label under every
    uncertainty policy); a row whose new label equals its own keeps its raw value, so the raw
    labels change exactly where the task labels do."""
    out = labels14.copy()
    col = OBSERVATIONS.index(target_observation)
    for g in selection.groups.values():
        if g.labels is not None:
            if not np.isin(g.labels, (0, 1)).all():
                raise ValueError(f"new task labels must be 0 or 1, got {np.unique(g.labels)}")
            change = g.labels != y[g.rows]
            out[g.rows[change], col] = g.labels[change].astype(np.float32)
    return out


def write_release(
    prep_h5: str | os.PathLike[str],
    release_dir: str | os.PathLike[str],
    *,
    owner_dir: str | os.PathLike[str],
    method: WatermarkMethod,
    target_observation: str,
    uncertainty: str,
    poison_rate: float,
    seed: int,
    image_tree: bool,
    saliency_h5: str | os.PathLike[str] | None = None,
    metadata_csv: str | os.PathLike[str] | None = None,
    compression_level: int = 4,
    poison_scores: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``release_dir/r{res}.h5`` (+ the CheXpert tree when ``image_tree``); return the secret.

    The rows come from ``method.select`` on the task labels of the release split. The returned
    dict (marked ids per group, changed labels, ``budget``, ``seed``, paths) is for
    :func:`write_owner_dir` only; nothing of it is written into ``release_dir``.
    """
    prep_h5 = Path(prep_h5)
    release_dir = Path(release_dir)
    check_separate(owner_dir, release_dir)
    if image_tree and metadata_csv is None:
        raise ValueError("image_tree needs metadata_csv (data/metadata.csv)")
    if method.needs_saliency and saliency_h5 is None:
        raise ValueError(f"method {method.name!r} needs the saliency maps (saliency_h5)")
    table_all, rel_rows, res, src_attrs = _release_table(prep_h5)
    if method.needs_saliency:
        check_saliency(prep_h5, Path(str(saliency_h5)), table_all["image_id"].to_numpy(), res)
    table = table_all.iloc[rel_rows].reset_index(drop=True)
    labels14 = table[list(OBSERVATIONS)].to_numpy(np.float32)
    y = task_labels(labels14, target_observation, uncertainty)
    budget = poison_budget(len(y), len(method.candidates(y)), poison_rate)
    if budget["chosen"] == 0:
        raise DataFormatError(
            f"no row of split {RELEASE_SPLIT!r} can carry the {method.label_mode}-label mark of "
            f"{method.name} (target class {method.target_class}, {target_observation}, "
            f"{uncertainty}): nothing to watermark",
            file=str(prep_h5),
            field="labels",
        )
    ids = table["image_id"].to_numpy()
    scores = None
    if poison_scores is not None:
        scores = np.array([poison_scores.get(i, np.nan) for i in ids.tolist()])
        scores[y != method.target_class] = np.inf  # only target rows are candidates
    selection = method.select(y, poison_rate, seed, scores)
    out_labels14 = _relabel(labels14, y, selection, target_observation)
    y_out = task_labels(out_labels14, target_observation, uncertainty)
    # row -> (group, position in group) in the order groups are marked
    member: dict[str, np.ndarray] = {}
    for name, g in selection.groups.items():
        m = np.zeros(len(y), dtype=bool)
        m[g.rows] = True
        if any((m & other).any() for other in member.values()):
            raise ValueError(f"{method.name}: group {name!r} overlaps another group")
        member[name] = m
    stats = {name: [0, 0, 0.0] for name in selection.groups}

    attrs = {**src_attrs, "created_by": "medmark.methods.release", "method": method.name}
    out_h5 = release_dir / f"r{res}.h5"
    tree = tree_name(method.name)
    patients, splits = table["patient"].to_numpy(), table["split"].to_numpy()
    tree_rows = _tree_rows(Path(str(metadata_csv)), ids, labels14) if image_tree else []
    col = OBSERVATIONS.index(target_observation)
    sink = ReleaseSink(
        out_h5,
        len(table),
        res,
        attrs,
        tree=release_dir / tree if image_tree else None,
        source=prep_h5,
        compression_level=compression_level,
    )
    with sink:
        for sl in _blocks(len(table), BLOCK):
            src_rows = rel_rows[sl]
            images = read_images(prep_h5, src_rows)
            local = np.arange(sl.start, sl.stop)
            for name, g in selection.groups.items():
                sel = member[name][local]
                if not sel.any():
                    continue
                maps = (
                    read_maps(Path(str(saliency_h5)), src_rows[sel])
                    if method.needs_saliency
                    else None
                )
                keys = None
                if g.keys is not None:
                    key_of = dict(zip(g.rows.tolist(), g.keys, strict=True))
                    keys = [key_of[i] for i in local[sel].tolist()]
                marked = method.mark(images[sel], saliency=maps, keys=keys, group=name)
                _tally(stats[name], check_marked(images[sel], marked, f"{out_h5} {name}"))
                images[sel] = marked
            for k, i in enumerate(local.tolist()):
                tree_row = None
                if image_tree:
                    tree_row = tree_rows[i] | {
                        target_observation: _format_label(out_labels14[i, col])
                    }
                sink.append(images[k], ids[i], patients[i], splits[i], out_labels14[i], tree_row)
    changed_label = np.flatnonzero(y_out != y)
    log.info(
        "release r%d (%s): %d rows, %d watermarked, %d labels changed (budget %s) -> %s",
        res,
        method.name,
        len(table),
        len(selection.poisoned.rows),
        len(changed_label),
        budget,
        out_h5,
    )
    groups = {name: ids[g.rows].tolist() for name, g in selection.groups.items()}
    return {
        "resolution": res,
        "release_h5": str(out_h5),
        "image_tree": str(release_dir / tree) if image_tree else None,
        "n_release": len(table),
        "poisoned_ids": groups["poisoned"],
        "groups": groups,
        "image_changed_ids": sorted(set().union(*map(set, groups.values()))),
        "label_changed": {
            str(ids[i]): {"from": int(y[i]), "to": int(y_out[i])} for i in changed_label.tolist()
        },
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
    *,
    method: WatermarkMethod,
    target_observation: str,
    uncertainty: str,
    n_images: int,
    verify_seed: int,
    saliency_h5: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """``clean``/``watermarked``/``ids`` of ``m`` seeded non-target verification-split images,
    optional ``decoys`` ``(K, m, R, R)`` (:meth:`WatermarkMethod.verification_decoys`),
    ``labels`` (their task labels) and ``test_images``/``test_labels`` of the test split (rows
    with an ignored label left out).

    Rows come from :func:`medmark.verify.choose_verification_rows` (same semantics as the
    verifier). Test images are streamed block by block. Returns the ids and counts.
    """
    prep_h5 = Path(prep_h5)
    table = read_table(prep_h5)
    with h5py.File(prep_h5, "r") as f:
        res = int(f["images"].shape[1])
    if method.needs_saliency:
        check_saliency(prep_h5, Path(str(saliency_h5)), table["image_id"].to_numpy(), res)
    y = task_labels(table[list(OBSERVATIONS)].to_numpy(np.float32), target_observation, uncertainty)
    splits = table["split"].to_numpy()
    vrows = choose_verification_rows(y, splits, method.target_class, n_images, verify_seed)
    clean = read_images(prep_h5, vrows)
    maps = read_maps(Path(str(saliency_h5)), vrows) if method.needs_saliency else None
    wm = method.mark(clean, saliency=maps, group=VERIFY_GROUP)
    check_marked(clean, wm, f"{path} watermarked")
    decoys = method.verification_decoys(clean, maps)
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
                "target_class": int(method.target_class),
                "target_observation": target_observation,
                "verify_seed": int(verify_seed),
                "method": method.name,
                "source_prep": str(prep_h5),
            }
        )
    return {
        "resolution": res,
        "ids": ids,
        "m": len(ids),
        "n_test": int(len(trows)),
        "n_decoys": 0 if decoys is None else len(decoys),
    }


def write_owner_dir(
    owner_dir: str | os.PathLike[str],
    *,
    release_dir: str | os.PathLike[str],
    method: WatermarkMethod,
    sources: Mapping[int, tuple[str | os.PathLike[str], str | os.PathLike[str] | None]],
    release_info: dict[str, Any],
    target_observation: str,
    uncertainty: str,
    resolution: int,
    n_verify: int,
    verify_seed: int,
) -> dict[str, Any]:
    """Write the owner's secret: the method's files, ``verification_r{res}.h5``, ``owner.json``.

    ``sources`` maps each verification resolution to ``(prep_h5, saliency_h5 or None)``;
    ``release_info`` is what :func:`write_release` returned; ``resolution`` is the method's
    working resolution. ``owner.json`` is written last (it names the sha256 of the others).
    The tests' margins (tau, key_tau) and level alpha are not recorded: they are chosen at
    verification (config ``verify``, ``medmark verify --tau/--key-tau/--alpha``).
    """
    owner_dir = Path(owner_dir)
    check_separate(owner_dir, release_dir)
    if resolution not in sources:
        raise ValueError(f"sources must include the working resolution {resolution}")
    owner_dir.mkdir(parents=True, exist_ok=True)
    secret = method.save_secret(owner_dir)
    verification: dict[str, Any] = {}
    for res in sorted(sources):
        prep, sal = sources[res]
        vpath = owner_dir / f"verification_r{res}.h5"
        info = write_verification_h5(
            vpath,
            prep,
            method=method,
            saliency_h5=sal,
            target_observation=target_observation,
            uncertainty=uncertainty,
            n_images=n_verify,
            verify_seed=verify_seed,
        )
        if info["resolution"] != res:
            raise DataFormatError(
                f"resolution {info['resolution']} != the {res} it was given as", file=str(prep)
            )
        verification[str(res)] = {**info, "file": vpath.name, "sha256": sha256_file(vpath)}
    groups = release_info["groups"]
    owner = {
        "method": method.name,
        "label_mode": method.label_mode,
        "verification_test": method.verification,
        "key": int(method.key),
        "seeds": {
            "method_key": int(method.key),
            "release": int(release_info["seed"]),
            "verify": int(verify_seed),
        },
        "target_class": int(method.target_class),
        "target_observation": target_observation,
        "uncertainty": uncertainty,
        "poisoned_ids": list(release_info["poisoned_ids"]),
        "marked_groups": {k: list(v) for k, v in groups.items() if k != "poisoned"},
        "image_changed_ids": list(release_info["image_changed_ids"]),
        "label_changed": dict(release_info["label_changed"]),
        "marked_levels": release_info.get("marked_levels", {}),
        "poison_rate": float(release_info["budget"]["poison_rate"]),
        "poison_budget": release_info["budget"],
        "release_resolution": int(release_info["resolution"]),
        "verification_ids": verification[str(resolution)]["ids"],
        "verification": verification,
        "verification_file": verification[str(resolution)]["file"],
        "verify_seed": int(verify_seed),
        "resolution": int(resolution),
        "budget": method.budget(),
        **secret,
    }
    write_json_atomic(owner_dir / "owner.json", owner)
    return owner
