"""Authorised removal of the logo (Pu et al., arXiv 2303.09858, abstract: removal
by authorised users; docs/methods/medlocker.md, "Authorised removal").

A restore package per image holds θ, the footprint box and the original pixels under it,
encrypted and authenticated with AES-256-GCM (``cryptography``) under the release's restore key;
the image id is the associated data, so a package only opens for its own image. Unlocking pastes
the original pixels back and checks the sha256 of the result against the original's: the
original comes back bit for bit, or the call fails. Layout of a package: ``MAGIC`` (8 bytes),
a 12-byte random nonce, then the GCM ciphertext and tag of
``len(header) (4 bytes, big-endian) ‖ header JSON ‖ pixels``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medmark.errors import DataFormatError
from medmark.io import atomic_path
from medmark.methods.medlocker.certificate import image_sha256

MAGIC = b"MEDLOCK1"
NONCE = 12
KEY_BYTES = 32
SUFFIX = ".mlk"


class PackageError(Exception):
    """A restore package that cannot be opened or does not fit the image (refuse to unlock)."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def write_key(path: str | Path, key: bytes) -> None:
    """The restore key as hex text (owner's directory; handed to authorised users)."""
    with atomic_path(path) as tmp:
        tmp.write_text(key.hex() + "\n")


def read_key(path: str | Path) -> bytes:
    try:
        text = Path(path).read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as e:
        raise DataFormatError(f"not a hex restore key: {e}", file=str(path)) from e
    if len(key) != KEY_BYTES:
        raise DataFormatError(
            f"a restore key has {KEY_BYTES} bytes, got {len(key)}", file=str(path)
        )
    return key


def package_name(image_id: str) -> str:
    """File name of an image's package (the id percent-encoded, '/' included)."""
    return quote(image_id, safe="") + SUFFIX


def make_package(
    key: bytes,
    image_id: str,
    original: np.ndarray,
    locked: np.ndarray,
    theta: Mapping[str, Any],
    box: tuple[int, int, int, int],
) -> bytes:
    """Encrypt θ and the original pixels under ``box = (u, v, h, w)`` for ``image_id``."""
    u, v, h, w = (int(b) for b in box)
    if original.shape != locked.shape or original.dtype != np.uint8:
        raise ValueError("original and locked must be uint8 images of one shape")
    header = {
        "image_id": image_id,
        "theta": dict(theta),
        "box": [u, v, h, w],
        "shape": list(original.shape),
        "original_sha256": image_sha256(original),
        "locked_sha256": image_sha256(locked),
    }
    head = json.dumps(header, sort_keys=True).encode()
    pixels = np.ascontiguousarray(original[v : v + h, u : u + w]).tobytes()
    nonce = os.urandom(NONCE)
    ct = AESGCM(key).encrypt(nonce, struct.pack(">I", len(head)) + head + pixels, _aad(image_id))
    return MAGIC + nonce + ct


def _aad(image_id: str) -> bytes:
    return MAGIC + image_id.encode()


def open_package(key: bytes, image_id: str, blob: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Decrypt a package: ``(header, pixels (h, w))``; :class:`PackageError` on any failure."""
    if len(blob) < len(MAGIC) + NONCE + 16 or not blob.startswith(MAGIC):
        raise PackageError(f"{image_id}: not a MedLocker restore package (bad magic or truncated)")
    nonce, ct = blob[len(MAGIC) : len(MAGIC) + NONCE], blob[len(MAGIC) + NONCE :]
    try:
        plain = AESGCM(key).decrypt(nonce, ct, _aad(image_id))
    except InvalidTag as e:
        raise PackageError(
            f"{image_id}: the package does not open: wrong key, a tampered or truncated package, "
            "or the package of another image"
        ) from e
    (n,) = struct.unpack(">I", plain[:4])
    header = json.loads(plain[4 : 4 + n])
    _u, _v, h, w = header["box"]
    pixels = np.frombuffer(plain[4 + n :], dtype=np.uint8)
    if pixels.size != h * w:
        raise PackageError(f"{image_id}: the package holds {pixels.size} pixels, not {h}x{w}")
    return header, pixels.reshape(h, w)


def unlock_image(locked: np.ndarray, header: Mapping[str, Any], pixels: np.ndarray) -> np.ndarray:
    """The original image, bit for bit; :class:`PackageError` if ``locked`` is not the image the
    package was made for or the result does not hash to the original."""
    iid = header["image_id"]
    if list(locked.shape) != header["shape"] or image_sha256(locked) != header["locked_sha256"]:
        raise PackageError(
            f"{iid}: this image is not the locked image the package was made for (changed pixels "
            "or another image)"
        )
    u, v, h, w = header["box"]
    out = locked.copy()
    out[v : v + h, u : u + w] = pixels
    if image_sha256(out) != header["original_sha256"]:
        raise PackageError(f"{iid}: the restored image does not hash to the original")
    return out


def write_package(directory: str | Path, image_id: str, blob: bytes) -> Path:
    path = Path(directory) / package_name(image_id)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return path


def read_package(directory: str | Path, image_id: str) -> bytes:
    path = Path(directory) / package_name(image_id)
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataFormatError(f"no restore package for {image_id}: {e}", file=str(path)) from e
