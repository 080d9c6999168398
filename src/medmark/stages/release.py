"""The release stage for any watermark method (docs/methods/interface.md, "Release").

:func:`release_stage` is the stage of every release rule: build the registered method from its
key and config section, fit it on the owner's release split (:meth:`WatermarkMethod.for_release`),
then write the release at every resolution, the owner's secret beside (never inside) it and the
quality of the marked images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmark.data.h5 import read_images, read_table
from medmark.io import atomic_path
from medmark.methods.registry import method_class
from medmark.methods.release import write_owner_dir, write_release
from medmark.quality import release_quality_blocks
from medmark.runtime import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)

QUALITY_BLOCK = 256  # watermarked images per block of the quality metrics (memory flat in N)


def release_stage(
    *,
    method: str,
    method_cfg: dict[str, Any],
    key: int,
    inputs: dict[str, str],
    prep: dict[int, str],
    saliency: dict[int, str] | None,
    metadata_csv: str | Path,
    release_dir: str | Path,
    owner_dir: str | Path,
    working_resolution: int,
    task: dict[str, Any],
    release_cfg: dict[str, Any],
    verify_cfg: dict[str, Any],
    device: str,
    threads: int,
    quality_csv: str | Path,
) -> dict[str, Any]:
    """The release rule of every method: the registered ``method`` built with ``key`` and fitted
    on the release split (:meth:`WatermarkMethod.for_release`), then released.

    ``verify_cfg`` holds what the owner's verification files need (``n_images`` and ``seed``
    of the config's ``verify`` section); tau, key_tau and alpha belong to verification."""
    set_threads(threads)
    seed_everything(key)
    dev = resolve_device(device)
    cls = method_class(method)
    if cls.needs_saliency and saliency is None:
        raise ValueError(f"{method}: marks are saliency-conditioned; the rule must pass the maps")
    wm = cls.for_release(
        key,
        task["target_class"],
        method_cfg,
        task=task,
        inputs={**inputs, "prep_working": prep[working_resolution]},
        device=dev,
    )
    scores = wm.poison_scores()
    infos = {}
    for res in sorted(prep):
        infos[res] = write_release(
            prep[res],
            release_dir,
            owner_dir=owner_dir,
            method=wm,
            saliency_h5=None if saliency is None else saliency[res],
            target_observation=task["target_observation"],
            uncertainty=task["uncertainty"],
            poison_rate=release_cfg["poison_rate"],
            seed=release_cfg["seed"],
            image_tree=bool(release_cfg["image_tree"]) and res == working_resolution,
            metadata_csv=metadata_csv,
            poison_scores=scores,
        )
    marked = {(tuple(i["image_changed_ids"]), str(i["label_changed"])) for i in infos.values()}
    if len(marked) != 1:
        raise RuntimeError("the releases at different resolutions marked different images")
    owner = write_owner_dir(
        owner_dir,
        release_dir=release_dir,
        method=wm,
        sources={res: (prep[res], None if saliency is None else saliency[res]) for res in prep},
        release_info=infos[working_resolution],
        target_observation=task["target_observation"],
        uncertainty=task["uncertainty"],
        resolution=working_resolution,
        n_verify=verify_cfg["n_images"],
        verify_seed=verify_cfg["seed"],
    )
    write_quality(prep, release_dir, owner["poisoned_ids"], quality_csv)
    return owner


def write_quality(
    prep: dict[int, str], release_dir: str | Path, poisoned_ids: list[str], out_csv: str | Path
) -> pd.DataFrame:
    """Quality of the watermarked images (clean prep vs release), one row per resolution."""
    rows = []
    for res, prep_h5 in sorted(prep.items()):
        rel_h5 = Path(release_dir) / f"r{res}.h5"
        src, rel = read_table(prep_h5), read_table(rel_h5)
        want = set(poisoned_ids)
        src_rows = src.loc[src["image_id"].isin(want), ["image_id", "row"]].sort_values("image_id")
        rel_rows = rel.loc[rel["image_id"].isin(want), ["image_id", "row"]].sort_values("image_id")
        if not np.array_equal(src_rows["image_id"].to_numpy(), rel_rows["image_id"].to_numpy()):
            raise RuntimeError(f"{rel_h5}: poisoned ids do not match {prep_h5}")
        a, b = src_rows["row"].to_numpy(), rel_rows["row"].to_numpy()
        q = release_quality_blocks(
            (
                read_images(prep_h5, a[i : i + QUALITY_BLOCK]),
                read_images(rel_h5, b[i : i + QUALITY_BLOCK]),
            )
            for i in range(0, len(a), QUALITY_BLOCK)
        )
        rows.append({"resolution": res, **q["summary"]})
    table = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
