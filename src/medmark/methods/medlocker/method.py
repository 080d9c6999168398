"""MedLocker as an :class:`~medmark.methods.lock.InferenceLock` (Pu, Wei, Zhao, Fu, arXiv
2303.09858; docs/methods/medlocker.md): per image, a visible logo whose opacity α and position
(u, v) are optimised against a source model (:mod:`.optimize`, Adv-watermark's basin-hopping
evolution), off the forbidden boxes (:mod:`.placement`); the same logo with the same α at a random
feasible position is the owner's control. Published: the Ed25519-signed certificate of every
image's parameters and hashes (:mod:`.certificate`) and the public key. Kept by the owner: the
signing key, the AES-GCM restore key and one restore package per image (:mod:`.restore`), and the
optimiser's query log.

The release itself (``locked.h5``, the CheXpert tree, ``owner.json``) is written by
:func:`medmark.methods.lock.write_locked_release`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

import medmark
from medmark.methods.lock import InferenceLock, LockBatch
from medmark.methods.medlocker import certificate as certs
from medmark.methods.medlocker import restore
from medmark.methods.medlocker.logo import load_logo
from medmark.methods.medlocker.optimize import OptimConfig, optimise, random_placement
from medmark.methods.medlocker.placement import (
    anatomy_boxes,
    boxes_in_pixels,
    footprint_overlap,
    forbidden_map,
    placement,
    saliency_boxes,
)
from medmark.methods.medlocker.render import render_u8

BOX_MODES = ("lesion", "saliency", "anatomy", "none")


def lesion_boxes(
    mode: str,
    ids: list[str],
    rows: np.ndarray,
    resolution: int,
    *,
    boxes_csv: str | Path | None,
    metadata_csv: str | Path | None,
    saliency_h5: str | Path | None = None,
    top_frac: float = 0.1,
) -> dict[str, np.ndarray]:
    """Forbidden boxes ``(k, 4)`` per image id at ``resolution`` under ``medlocker.boxes``."""
    if mode not in BOX_MODES:
        raise ValueError(f"medlocker.boxes must be one of {BOX_MODES}, got {mode!r}")
    empty = np.zeros((0, 4))
    if mode == "none":
        return {i: empty for i in ids}
    if mode == "anatomy":
        return {i: anatomy_boxes(resolution) for i in ids}
    if mode == "lesion":
        if boxes_csv is None or metadata_csv is None:
            raise ValueError("medlocker.boxes 'lesion' needs boxes.csv and metadata.csv")
        by_id = boxes_in_pixels(pd.read_csv(boxes_csv), pd.read_csv(metadata_csv), resolution)
        return {i: by_id.get(i, empty) for i in ids}
    if saliency_h5 is None:
        raise ValueError("medlocker.boxes 'saliency' needs the saliency maps")
    import h5py

    with h5py.File(saliency_h5, "r") as f:
        maps = f["maps"][np.sort(rows)]
        order = np.argsort(np.argsort(rows))
        maps = maps[order]
    return {i: saliency_boxes(m, top_frac) for i, m in zip(ids, maps, strict=True)}


class MedLocker(InferenceLock):
    """MedLocker's lock. ``prepare`` inputs: ``prep`` (the HDF5 locked), ``model`` (the source
    checkpoint), ``logo`` (PNG), ``boxes`` / ``metadata`` (the dataset's lesion boxes) and
    ``saliency`` (``boxes: saliency``); plus ``source_id``, ``input_resolution`` (the source's)
    and ``code`` (the code hash the certificate records)."""

    name = "medlocker"
    citation = (
        "Pu, Wei, Zhao, Fu. MedLocker: A Transferable Adversarial Watermarking for Preventing "
        "Unauthorized Analysis of Medical Image Dataset. arXiv 2303.09858, 2023"
    )
    settings: ClassVar[tuple[str, ...]] = (
        "split",
        "max_images",
        "seed",
        "logo_scale",
        "fallback_scales",
        "on_infeasible",
        "boxes",
        "box_margin",
        "saliency_top_frac",
        "optimizer",
    )

    def prepare(self, inputs: Mapping[str, Any], device: Any, table: pd.DataFrame) -> None:
        from medmark.data.h5 import read_images
        from medmark.io import sha256_file
        from medmark.models import load_classifier
        from medmark.train import resize_batch

        cfg = self.cfg
        self.device = device
        self.ocfg = OptimConfig.from_dict(cfg["optimizer"])
        self.seed = int(cfg["seed"])
        rows = table["row"].to_numpy()
        res = int(read_images(inputs["prep"], rows[:1]).shape[1])
        self.res = res
        self.boxes = lesion_boxes(
            cfg["boxes"],
            table["image_id"].tolist(),
            rows,
            res,
            boxes_csv=inputs.get("boxes"),
            metadata_csv=inputs.get("metadata"),
            saliency_h5=inputs.get("saliency"),
            top_frac=cfg["saliency_top_frac"],
        )
        self.logo = load_logo(inputs["logo"])
        side = max(1, round(cfg["logo_scale"] * res))
        self.scales = (1.0, *cfg["fallback_scales"])
        self.scaled = [self.logo.scaled(max(1, round(side * s))) for s in self.scales]
        self.sizes = [tuple(m.shape) for _, m in self.scaled]
        model = load_classifier(inputs["model"]).to(device)
        r_in = int(inputs["input_resolution"])

        def fn(x: torch.Tensor) -> torch.Tensor:
            return model(resize_batch(x, r_in))

        self.model_fn = fn
        self.source_id = str(inputs["source_id"])
        self.meta = {
            "method": self.name,
            "source": self.source_id,
            "source_sha256": sha256_file(inputs["model"]),
            "resolution": res,
            "logo_sha256": self.logo.sha256,
            "code_version": f"medmark {medmark.__version__} code {str(inputs['code'])[:16]}",
            "boxes": cfg["boxes"],
            "box_margin": cfg["box_margin"],
        }
        self.key, self.signer = restore.new_key(), certs.new_signing_key()
        self.records: list[dict[str, Any]] = []
        self.packages: list[tuple[str, bytes]] = []
        self.queries: list[dict[str, Any]] = []

    def release_attrs(self) -> dict[str, Any]:
        return {"medlocker_source": self.source_id, "medlocker_placement": "optimised"}

    def lock(self, images: np.ndarray, table: pd.DataFrame) -> LockBatch:
        import logging

        log = logging.getLogger(__name__)
        cfg, res = self.cfg, self.res
        locked, rand = images.copy(), images.copy()
        out_rows = []
        for k, r in enumerate(table.itertuples(index=False)):
            forb = forbidden_map(self.boxes[r.image_id], (res, res), float(cfg["box_margin"]))
            where = placement(forb, self.sizes)
            base = {"image_id": r.image_id, "row": int(r.row), "y": int(r.y)}
            if where is None:
                if cfg["on_infeasible"] == "error":
                    raise ValueError(
                        f"{r.image_id}: no lesion-free position for any logo size {self.sizes}"
                    )
                log.warning("%s: no lesion-free position for any logo size: skipped", r.image_id)
                out_rows.append(base | {"status": "skipped"})
                continue
            feasible, size_i = where
            value, mask = self.scaled[size_i]
            rng = np.random.default_rng([self.seed, int(r.row)])
            result = optimise(
                self.model_fn,
                images[k],
                int(r.y),
                (value, mask),
                feasible,
                self.ocfg,
                rng,
                self.device,
            )
            locked[k] = render_u8(images[k], value, mask, [result.alpha], [result.u], [result.v])[0]
            ru, rv = random_placement(feasible, 1, rng)
            rand[k] = render_u8(images[k], value, mask, [result.alpha], ru, rv)[0]
            h, w = self.sizes[size_i]
            self.queries += [
                {
                    "image_id": r.image_id,
                    "batch": b,
                    "queries": self.ocfg.population * (b + 1),
                    "best_margin": m,
                }
                for b, m in enumerate(result.history)
            ]
            row = (
                base
                | result.as_row()
                | {
                    "status": "locked",
                    "logo_h": h,
                    "logo_w": w,
                    "scale": cfg["logo_scale"] * self.scales[size_i],
                    "random_u": int(ru[0]),
                    "random_v": int(rv[0]),
                    "forbidden_overlap": footprint_overlap(forb, result.u, result.v, h, w),
                    "random_forbidden_overlap": footprint_overlap(
                        forb, int(ru[0]), int(rv[0]), h, w
                    ),
                }
            )
            out_rows.append(row)
            theta = {"alpha": result.alpha, "u": result.u, "v": result.v, "logo_h": h, "logo_w": w}
            self.packages.append(
                (
                    r.image_id,
                    restore.make_package(
                        self.key,
                        r.image_id,
                        images[k],
                        locked[k],
                        theta,
                        (result.u, result.v, h, w),
                    ),
                )
            )
            self.records.append(
                {
                    "image_id": r.image_id,
                    "original_sha256": certs.image_sha256(images[k]),
                    "locked_sha256": certs.image_sha256(locked[k]),
                    "logo_sha256": self.logo.sha256,
                    "logo_h": h,
                    "logo_w": w,
                    "scale": row["scale"],
                    "alpha": result.alpha,
                    "u": result.u,
                    "v": result.v,
                    "surrogate": self.source_id,
                    "seed": self.seed,
                    "code_version": self.meta["code_version"],
                }
            )
            log.info(
                "%s: alpha %.3f (u, v) (%d, %d) margin %.3f queries %d %.2f s%s",
                r.image_id,
                result.alpha,
                result.u,
                result.v,
                result.margin,
                result.queries,
                result.seconds,
                " flipped" if result.success else "",
            )
        return LockBatch(locked, out_rows, {"random": rand})

    def publish(self, release_dir: Path) -> dict[str, Any]:
        from medmark.io import sha256_file

        cert, pub = release_dir / "certificate.json", release_dir / "public_key.pem"
        certs.write_public_key(pub, self.signer.public_key())
        certs.write_certificate(cert, certs.sign(self.meta, self.records, self.signer))
        return {p.stem: {"file": p.name, "sha256": sha256_file(p)} for p in (cert, pub)}

    def save_secret(self, owner_dir: Path) -> dict[str, Any]:
        from medmark.io import atomic_path, sha256_file

        restore_dir = owner_dir / "restore"
        restore_dir.mkdir(parents=True, exist_ok=True)
        for iid, blob in self.packages:
            restore.write_package(restore_dir, iid, blob)
        restore.write_key(owner_dir / "restore_key.hex", self.key)
        certs.write_private_key(owner_dir / "signing_key.pem", self.signer)
        with atomic_path(owner_dir / "queries.csv") as tmp:
            pd.DataFrame(
                self.queries, columns=["image_id", "batch", "queries", "best_margin"]
            ).to_csv(tmp, index=False)
        files = ("signing_key.pem", "restore_key.hex", "queries.csv")
        return {
            "secret": {
                Path(f).stem: {"file": f, "sha256": sha256_file(owner_dir / f)} for f in files
            }
            | {"restore": {"dir": "restore", "n_packages": len(self.packages)}},
            "source": self.source_id,
            "certificate_meta": self.meta,
        }
