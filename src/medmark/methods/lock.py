"""The interface of an inference-time lock, the sibling of
:class:`~medmark.methods.base.WatermarkMethod` (docs/methods/interface.md, "Inference-time locks").

A dataset watermark (Li et al., TIFS 2023, §3) marks a *fraction* of the release so that a model
*trained* on it learns a behaviour the owner tests for later, black-box, on a suspect. A lock
(MedLocker, Pu et al., arXiv 2303.09858, abstract) changes *every* released image so that models
*queried* with it mispredict, changes no label, and is never tested on a suspect: what the owner
publishes is a signed certificate of the per-image lock parameters, and what the owner keeps is a
key that removes the lock for authorised users. So a lock has no poison rate, no ``select`` of
rows to mark, no verification queries and no paired test; :class:`InferenceLock` names what it
has instead, and :mod:`medmark.methods.registry` lists it (``LOCKS``) beside the watermarks.

:func:`write_locked_release` writes a lock's release for any :class:`InferenceLock` through the
release writer's conventions (:class:`~medmark.methods.release.ReleaseSink`): the locked HDF5 and
the optional CheXpert-layout tree, written under temporary names and renamed into place; the
owner's secret in a directory disjoint from the release
(:func:`~medmark.methods.release.check_separate`), ``owner.json`` written last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from medmark.methods.base import checked_settings

#: How a lock is checked: a signature over per-image parameters, and the copy's image hashes.
LockVerification = Literal["certificate"]

#: The released file of a lock (the watermarks' ``r{res}.h5`` holds a marked fraction; this one
#: holds every image of the locked split, locked).
LOCKED_H5 = "locked.h5"


@dataclass
class LockBatch:
    """What :meth:`InferenceLock.lock` returns for a block of images.

    ``images``: uint8 ``(N, R, R)``, what ships (an image the lock skipped is the original);
    ``params``: one dict per image (``image_id`` and ``status``: ``"locked"`` or ``"skipped"``,
    plus the lock's parameters), the rows of the owner's ``params.csv``; ``owner_images``: other
    uint8 ``(N, R, R)`` versions the owner keeps (e.g. MedLocker's random-placement control),
    each written to ``owner_dir/{name}.h5``."""

    images: np.ndarray
    params: list[dict[str, Any]]
    owner_images: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.images)
        if a.dtype != np.uint8 or a.ndim != 3 or len(self.params) != len(a):
            raise ValueError(
                f"a lock batch needs uint8 (N, R, R) images and one params row each, got "
                f"{a.dtype} {a.shape} and {len(self.params)} rows"
            )
        for name, other in self.owner_images.items():
            if np.asarray(other).shape != a.shape:
                raise ValueError(f"owner images {name!r}: shape {other.shape} != {a.shape}")


class InferenceLock(ABC):
    """An inference-time lock of a whole split: locked images, a public certificate, an owner's
    removal key.

    Subclasses set the class attributes and implement :meth:`prepare`, :meth:`lock`,
    :meth:`publish` and :meth:`save_secret`; :meth:`select` (every labelled row of
    ``cfg["split"]``, at most ``cfg["max_images"]``, seeded) fits any lock. ``cfg`` is the
    lock's config section (schema defaults applied by the workflow).
    """

    name: ClassVar[str]
    #: The paper the lock and its settings come from.
    citation: ClassVar[str]
    verification: ClassVar[LockVerification] = "certificate"
    #: Keys the lock's config section must hold (defaults live in config/schema.yaml only).
    settings: ClassVar[tuple[str, ...]] = ("split", "max_images", "seed")

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = checked_settings(self.name, self.settings, cfg)

    def select(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows to lock: ``table`` (the prep table with a task-label column ``y``, -1 =
        ignored) restricted to the labelled rows of ``cfg["split"]``, at most
        ``cfg["max_images"]`` of them (a seeded choice), in HDF5 row order."""
        from medmark.data.labels import IGNORE

        keep = table[(table["split"] == self.cfg["split"]) & (table["y"] != IGNORE)]
        if keep.empty:
            raise ValueError(f"{self.name}: no labelled rows in split {self.cfg['split']!r}")
        n_max = self.cfg["max_images"]
        if n_max is not None and len(keep) > n_max:
            rng = np.random.default_rng(int(self.cfg["seed"]))
            keep = keep.iloc[np.sort(rng.choice(len(keep), size=n_max, replace=False))]
        return keep.reset_index(drop=True)

    @abstractmethod
    def prepare(self, inputs: Mapping[str, Any], device: Any, table: pd.DataFrame) -> None:
        """Load what :meth:`lock` needs from the lock rule's input files (e.g. the source
        model, the logo, the forbidden regions of the ``table`` rows about to be locked)."""

    @abstractmethod
    def lock(self, images: np.ndarray, table: pd.DataFrame) -> LockBatch:
        """Lock uint8 ``images`` (the ``table`` rows: ``image_id``, ``row``, ``y``). Called
        block by block in row order; the lock keeps what :meth:`publish` and
        :meth:`save_secret` need (certificate records, removal packages)."""

    def release_attrs(self) -> dict[str, Any]:
        """Extra HDF5 attributes of the released file (e.g. the source model's id)."""
        return {}

    @abstractmethod
    def publish(self, release_dir: Path) -> dict[str, Any]:
        """Write the public files that ship with the release (MedLocker: the signed certificate
        and the public key); return ``{name: {"file", "sha256"}}`` for ``owner.json``."""

    @abstractmethod
    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        """Write the owner's secret files (keys, removal packages, logs); return the
        ``owner.json`` fields describing them (file names with their sha256, settings)."""


def write_locked_release(
    prep_h5: str | Path,
    release_dir: str | Path,
    owner_dir: str | Path,
    *,
    lock: InferenceLock,
    table: pd.DataFrame,
    image_tree: bool,
    metadata_csv: str | Path | None = None,
    block: int = 256,
) -> dict[str, Any]:
    """Lock the ``table`` rows of ``prep_h5`` (``image_id``, ``row``, ``patient``, ``split``,
    the 14 observations and ``y``) with ``lock`` and write the release and the owner's secret.

    ``release_dir``: :data:`LOCKED_H5` (every row, locked, labels unchanged), the CheXpert tree
    ``CheXpert-v1.0-small-{lock.name}`` when ``image_tree``, and :meth:`InferenceLock.publish`'s
    files. ``owner_dir`` (disjoint from it): ``{name}.h5`` per owner-side image set,
    ``params.csv``, :meth:`InferenceLock.save_secret`'s files and ``owner.json`` (last).
    """
    from medmark.data.h5 import H5ImageWriter, read_images
    from medmark.data.labels import OBSERVATIONS
    from medmark.io import atomic_path, sha256_file, write_json_atomic
    from medmark.methods.release import (
        ReleaseSink,
        _blocks,
        _tree_rows,
        check_separate,
        tree_name,
    )

    prep_h5, release_dir, owner_dir = Path(prep_h5), Path(release_dir), Path(owner_dir)
    check_separate(owner_dir, release_dir)
    if image_tree and metadata_csv is None:
        raise ValueError("image_tree needs metadata_csv (data/metadata.csv)")
    if table.empty:
        raise ValueError(f"{lock.name}: no rows to lock")
    release_dir.mkdir(parents=True, exist_ok=True)
    owner_dir.mkdir(parents=True, exist_ok=True)
    rows = table["row"].to_numpy(np.int64)
    ids = table["image_id"].to_numpy()
    labels14 = table[list(OBSERVATIONS)].to_numpy(np.float32)
    res = int(read_images(prep_h5, rows[:1]).shape[1])
    tree_rows = _tree_rows(Path(str(metadata_csv)), ids, labels14) if image_tree else []
    attrs = {"created_by": "medmark.methods.lock", "method": lock.name, **lock.release_attrs()}
    out_h5 = release_dir / LOCKED_H5
    sink = ReleaseSink(
        out_h5,
        len(table),
        res,
        attrs,
        tree=release_dir / tree_name(lock.name) if image_tree else None,
        source=prep_h5,
    )
    params: list[dict[str, Any]] = []
    owner_writers: dict[str, H5ImageWriter] = {}
    try:
        with sink:
            for sl in _blocks(len(table), block):
                part = table.iloc[sl]
                out = lock.lock(read_images(prep_h5, rows[sl]), part)
                if [p["image_id"] for p in out.params] != part["image_id"].tolist():
                    raise RuntimeError(f"{lock.name}: params rows do not follow the table rows")
                params += out.params
                for name in out.owner_images:
                    if name not in owner_writers:
                        owner_writers[name] = H5ImageWriter(
                            owner_dir / f"{name}.h5", len(table), res, attrs | {"owner": name}
                        )
                for k, i in enumerate(range(sl.start, sl.stop)):
                    r = part.iloc[k]
                    tree_row = tree_rows[i] if image_tree else None
                    sink.append(
                        out.images[k], ids[i], r["patient"], r["split"], labels14[i], tree_row
                    )
                    for name, imgs in out.owner_images.items():
                        owner_writers[name].append(
                            imgs[k], ids[i], r["patient"], r["split"], labels14[i]
                        )
        for w in owner_writers.values():
            w.close()
    except BaseException as exc:
        for w in owner_writers.values():
            w.abort(exc)
        raise
    published = lock.publish(release_dir)
    with atomic_path(owner_dir / "params.csv") as tmp:
        pd.DataFrame(params).to_csv(tmp, index=False)
    secret = lock.save_secret(owner_dir)
    status = pd.Series([p["status"] for p in params])
    owner = {
        "method": lock.name,
        "family": "lock",
        "verification_test": lock.verification,
        "citation": lock.citation,
        "release_file": LOCKED_H5,
        "release_sha256": sha256_file(out_h5),
        "image_tree": tree_name(lock.name) if image_tree else None,
        "n_images": len(table),
        "n_locked": int((status == "locked").sum()),
        "locked_ids": [p["image_id"] for p in params if p["status"] == "locked"],
        "skipped_ids": [p["image_id"] for p in params if p["status"] != "locked"],
        "label_changed": {},
        "params": {"file": "params.csv", "sha256": sha256_file(owner_dir / "params.csv")},
        "owner_images": {
            name: {"file": f"{name}.h5", "sha256": sha256_file(owner_dir / f"{name}.h5")}
            for name in owner_writers
        },
        "published": published,
        **secret,
    }
    write_json_atomic(owner_dir / "owner.json", owner)
    return owner
