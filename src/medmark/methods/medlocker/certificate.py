"""The owner's certificate of a locked release (Pu et al., arXiv 2303.09858, abstract: the
parameter certificate given to authorised users; docs/methods/medlocker.md, "Certificate").

One record per locked image: its id, sha256 of the original and of the locked pixels, the logo's
hash and footprint, the scale, θ = (α, u, v), the surrogate, the seed and the code version. The
canonical JSON of ``{"meta", "records"}`` (records sorted by id, keys sorted, no spaces) is hashed
with sha256 and the digest is signed with Ed25519 (``cryptography``). A copy of the release is
checked against it by recomputing each image's hash; given the originals and the logo, each
locked image is also re-rendered from the original with the recorded θ and compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from medmark.errors import DataFormatError
from medmark.io import atomic_path, write_json_atomic

FORMAT = "medmark-medlocker-certificate/1"
RECORD_FIELDS: tuple[str, ...] = (
    "image_id",
    "original_sha256",
    "locked_sha256",
    "logo_sha256",
    "logo_h",
    "logo_w",
    "scale",
    "alpha",
    "u",
    "v",
    "surrogate",
    "seed",
    "code_version",
)


class CertificateError(Exception):
    """The certificate does not hold: a bad signature or a malformed certificate."""


def image_sha256(image: np.ndarray) -> str:
    """sha256 of a ``uint8 (H, W)`` image: its shape then its C-order bytes."""
    a = np.ascontiguousarray(image)
    if a.dtype != np.uint8 or a.ndim != 2:
        raise ValueError(f"expected uint8 (H, W), got {a.dtype} {a.shape}")
    return hashlib.sha256(f"{a.shape[0]}x{a.shape[1]}:".encode() + a.tobytes()).hexdigest()


def canonical(meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> bytes:
    """Canonical bytes of the certified content (records sorted by id)."""
    for i, r in enumerate(records):
        missing = [k for k in RECORD_FIELDS if k not in r]
        if missing:
            raise ValueError(f"certificate record {i} lacks {missing}")
    body = {"meta": dict(meta), "records": sorted(records, key=lambda r: r["image_id"])}
    ids = [r["image_id"] for r in body["records"]]
    if len(set(ids)) != len(ids):
        raise ValueError("certificate records repeat an image id")
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_private_key(path: str | Path, key: Ed25519PrivateKey) -> None:
    """PKCS#8 PEM (unencrypted: it lives in the owner's directory, never in the release)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(pem)


def write_public_key(path: str | Path, key: Ed25519PublicKey) -> None:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(pem)


def read_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise DataFormatError(f"not a PEM public key: {e}", file=str(path)) from e
    if not isinstance(key, Ed25519PublicKey):
        raise DataFormatError("not an Ed25519 public key", file=str(path))
    return key


def sign(
    meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]], key: Ed25519PrivateKey
) -> dict[str, Any]:
    """The certificate: content, its sha256 digest and the Ed25519 signature of the digest."""
    digest = hashlib.sha256(canonical(meta, records)).hexdigest()
    return {
        "format": FORMAT,
        "algorithm": "ed25519",
        "digest_sha256": digest,
        "signature": key.sign(bytes.fromhex(digest)).hex(),
        "meta": dict(meta),
        "records": sorted(records, key=lambda r: r["image_id"]),
    }


def write_certificate(path: str | Path, cert: Mapping[str, Any]) -> None:
    write_json_atomic(path, cert)


def read_certificate(path: str | Path) -> dict[str, Any]:
    try:
        cert = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataFormatError(f"cannot read the certificate: {e}", file=str(path)) from e
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise DataFormatError(f"not a {FORMAT} file", file=str(path), field="format")
    return cert


def check_signature(cert: Mapping[str, Any], public_key: Ed25519PublicKey) -> str:
    """Recompute the digest of the content and check the signature; returns the digest."""
    try:
        digest = hashlib.sha256(canonical(cert["meta"], cert["records"])).hexdigest()
        signature = bytes.fromhex(cert["signature"])
    except (KeyError, TypeError, ValueError) as e:
        raise CertificateError(f"malformed certificate: {e}") from e
    if digest != cert.get("digest_sha256"):
        raise CertificateError(
            "the certificate's content does not match its digest (records edited after signing)"
        )
    try:
        public_key.verify(signature, bytes.fromhex(digest))
    except InvalidSignature as e:
        raise CertificateError(
            "the signature does not match: the certificate was not signed by this key or was "
            "altered"
        ) from e
    return digest


def check_copy(
    cert: Mapping[str, Any],
    images: Mapping[str, np.ndarray],
    rerender: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Compare a copy (``image_id → uint8 image``) with the certified locked images.

    ``rerender`` (optional): ``image_id → image`` re-rendered from the original with the
    recorded θ; it must match both the copy and the certified hash. Returns counts and the ids of
    missing, changed and re-render-mismatched images (the signature is checked separately).
    """
    records = {r["image_id"]: r for r in cert["records"]}
    missing = sorted(set(records) - set(images))
    changed = sorted(
        i for i in records if i in images and image_sha256(images[i]) != records[i]["locked_sha256"]
    )
    mismatch: list[str] = []
    if rerender is not None:
        mismatch = sorted(
            i
            for i in records
            if i in rerender
            and (
                image_sha256(rerender[i]) != records[i]["locked_sha256"]
                or (i in images and not np.array_equal(rerender[i], images[i]))
            )
        )
    return {
        "n_certified": len(records),
        "n_checked": len(records) - len(missing),
        "missing": missing,
        "changed": changed,
        "rerender_mismatch": mismatch,
        "ok": not (missing or changed or mismatch),
    }
