"""The work behind ``medmark certificate verify`` and ``medmark unlock`` (Pu et al., arXiv
2303.09858, abstract; docs/methods/medlocker.md): check a copy of a locked release against the owner's signed certificate, and
restore originals bit for bit from the restore packages with the restore key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medmark.data.h5 import H5ImageWriter, read_images, read_table
from medmark.data.labels import OBSERVATIONS
from medmark.errors import DataFormatError
from medmark.methods.medlocker import certificate as certs
from medmark.methods.medlocker import restore
from medmark.methods.medlocker.logo import load_logo
from medmark.methods.medlocker.render import render_u8


def _h5_images(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        table = read_table(path)
        return table["image_id"].tolist(), read_images(path, table["row"].to_numpy())
    except (OSError, KeyError, ValueError) as e:
        raise DataFormatError(f"not a medmark image HDF5: {e}", file=str(path)) from e


def verify_certificate(
    certificate: Path,
    public_key: Path,
    release: Path,
    originals: Path | None = None,
    logo: Path | None = None,
) -> dict[str, Any]:
    """Signature, then every certified image of the copy (and, with the originals and the logo,
    the re-render of each from its original with the recorded θ). Raises
    :class:`~medmark.methods.medlocker.certificate.CertificateError` on a bad signature."""
    cert = certs.read_certificate(certificate)
    digest = certs.check_signature(cert, certs.read_public_key(public_key))
    ids, imgs = _h5_images(release)
    copy = dict(zip(ids, imgs, strict=True))
    rerender = None
    if originals is not None:
        if logo is None:
            raise DataFormatError("re-rendering from the originals needs --logo", field="--logo")
        lg = load_logo(logo)
        oids, oimgs = _h5_images(originals)
        orig = dict(zip(oids, oimgs, strict=True))
        rerender = {}
        for r in cert["records"]:
            iid = r["image_id"]
            if iid not in orig:
                continue
            if r["logo_sha256"] != lg.sha256:
                raise DataFormatError(
                    f"{iid}: certified logo hash differs from {logo}", field="--logo"
                )
            if certs.image_sha256(orig[iid]) != r["original_sha256"]:
                rerender[iid] = np.zeros_like(orig[iid])  # original differs: flag as mismatch
                continue
            value, mask = lg.scaled(max(int(r["logo_h"]), int(r["logo_w"])))
            rerender[iid] = render_u8(orig[iid], value, mask, [r["alpha"]], [r["u"]], [r["v"]])[
                0
            ].numpy()
    out = certs.check_copy(cert, copy, rerender)
    return out | {"digest_sha256": digest, "signature": "valid", "meta": cert["meta"]}


def unlock_release(locked: Path, packages: Path, key_file: Path, out: Path) -> dict[str, int]:
    """Restore every image of a locked HDF5 that has a package; others are copied unchanged.
    Raises :class:`~medmark.methods.medlocker.restore.PackageError` on the first package that
    does not open or does not fit its image (nothing is written then)."""
    key = restore.read_key(key_file)
    if not packages.is_dir():
        raise DataFormatError("not a directory of restore packages", file=str(packages))
    try:
        table = read_table(locked)
    except (OSError, KeyError, ValueError) as e:
        raise DataFormatError(f"not a medmark image HDF5: {e}", file=str(locked)) from e
    images = read_images(locked, table["row"].to_numpy())
    restored, unchanged = 0, 0
    for k, iid in enumerate(table["image_id"]):
        path = packages / restore.package_name(iid)
        if not path.is_file():
            unchanged += 1
            continue
        header, pixels = restore.open_package(key, iid, path.read_bytes())
        images[k] = restore.unlock_image(images[k], header, pixels)
        restored += 1
    labels = table[list(OBSERVATIONS)].to_numpy(np.float32)
    with H5ImageWriter(out, len(table), images.shape[1], attrs={"medlocker": "unlocked"}) as w:
        for k, row in enumerate(table.itertuples(index=False)):
            w.append(images[k], row.image_id, row.patient, row.split, labels[k])
        w.close()
    return {"restored": restored, "unchanged": unchanged}


def unlock_png(locked: Path, package: Path, key_file: Path, image_id: str, out: Path) -> None:
    """Restore one locked PNG with its package."""
    key = restore.read_key(key_file)
    try:
        image = np.asarray(Image.open(locked))
        blob = package.read_bytes()
    except OSError as e:
        raise DataFormatError(f"cannot read: {e}", file=str(locked)) from e
    if image.dtype != np.uint8 or image.ndim != 2:
        raise DataFormatError("not an 8-bit greyscale image", file=str(locked))
    header, pixels = restore.open_package(key, image_id, blob)
    original = restore.unlock_image(image, header, pixels)
    from medmark.io import atomic_path

    with atomic_path(out, suffix=".tmp.png") as tmp:
        Image.fromarray(original).save(tmp, format="PNG")
