"""Keyed carriers: the secret pattern an X-Mark key stands for (docs/methods/xmark.md, "Keyed carrier").

The paper's generator invents its perturbation from the image and the saliency map alone, so two
owners with different keys train towards the same family of marks and a model trained on one
release answers the other's mark. Here the key fixes the *pattern* and the generator only shapes
its amplitude (:mod:`.generator`), as in radioactive data (Sablayrolles et al., ICML 2020, §3:
a secret random carrier per owner, nearly orthogonal across owners).

A carrier is a sum of ``n_waves`` plane waves whose frequencies (cycles per image), orientations
and phases are drawn from the key:

``g_k(u, v) = Σ_j cos(2π f_j (u cos θ_j + v sin θ_j) + φ_j)``, ``u, v ∈ [0, 1)`` pixel centres,
normalised to ``max |g_k| = 1``, then saturated: ``c_k = tanh(β g_k) / tanh(β)`` (``β =
saturation``; 0 keeps ``g_k``). Saturation raises the carrier's energy within the same L∞ budget
(RMS ≈ 0.45 for three plain waves, ≈ 0.8 at β = 3, ≈ 0.9 at β = 5), which is what a suspect learns from; the
harmonics it adds stay at a few multiples of the band.

Why plane waves, not band-limited noise: a CNN is (nearly) translation invariant and the suspects
train with shift augmentation, so what it can learn is local texture. Every band-limited noise
field has the same local statistics; an orientation/frequency signature does not, so a model can
tell the owner's carrier from another key's, and the decoy negatives of :mod:`.release` teach
it to. The frequencies are in cycles *per image*, so the carrier of a key is the same picture at
every resolution, and a band of a few cycles per image survives 4× antialiased down-scaling
(the paper's scale claim, measured by the ``down_*`` query attacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: SeedSequence domain tags: the carrier of key ``k`` and the decoy keys drawn for key ``k`` come
#: from disjoint streams, so no decoy can replay the owner's carrier by construction of the seed.
_CARRIER_TAG = 0x5EED_CA
_DECOY_TAG = 0xDEC0


@dataclass(frozen=True)
class CarrierConfig:
    """Shape of the carrier family (config ``xmark.carrier``)."""

    n_waves: int = 3
    band: tuple[float, float] = (3.0, 8.0)
    saturation: float = 5.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CarrierConfig:
        lo, hi = (float(v) for v in d["band"])
        if not 0.0 < lo <= hi:
            raise ValueError(f"xmark.carrier.band must satisfy 0 < lo <= hi, got {d['band']}")
        if int(d["n_waves"]) < 1:
            raise ValueError(f"xmark.carrier.n_waves must be >= 1, got {d['n_waves']}")
        if float(d["saturation"]) < 0:
            raise ValueError(f"xmark.carrier.saturation must be >= 0, got {d['saturation']}")
        return cls(n_waves=int(d["n_waves"]), band=(lo, hi), saturation=float(d["saturation"]))


def keyed_carrier(key: int, height: int, width: int, cfg: CarrierConfig) -> np.ndarray:
    """The carrier ``c_k`` of ``key`` at ``height × width``: float32 in ``[-1, 1]``, max |c| = 1."""
    if height < 1 or width < 1:
        raise ValueError(f"carrier size must be positive, got {height}x{width}")
    rng = np.random.default_rng([_CARRIER_TAG, int(key)])
    u = (np.arange(height, dtype=np.float64) + 0.5) / height
    v = (np.arange(width, dtype=np.float64) + 0.5) / width
    uu, vv = np.meshgrid(u, v, indexing="ij")
    c = np.zeros((height, width))
    lo, hi = cfg.band
    for _ in range(cfg.n_waves):
        f, theta, phi = rng.uniform(lo, hi), rng.uniform(0.0, np.pi), rng.uniform(0.0, 2 * np.pi)
        c += np.cos(2 * np.pi * f * (uu * np.cos(theta) + vv * np.sin(theta)) + phi)
    peak = float(np.abs(c).max())
    if peak == 0.0:  # pragma: no cover - measure-zero event
        raise ValueError(f"key {key}: degenerate carrier")
    c = c / peak
    if cfg.saturation > 0:
        c = np.tanh(cfg.saturation * c) / np.tanh(cfg.saturation)
    return c.astype(np.float32)


def decoy_keys(key: int, n: int, stream: int = 0) -> list[int]:
    """``n`` decoy keys derived from ``key`` (stream ``0``: release decoys, ``1``: verification
    decoys), never equal to ``key``; 62-bit, so a collision with another owner is negligible."""
    rng = np.random.default_rng([_DECOY_TAG, int(key), int(stream)])
    out: list[int] = []
    while len(out) < n:
        k = int(rng.integers(1 << 40, 1 << 62))
        if k != key and k not in out:
            out.append(k)
    return out


def mean_abs_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of ``|cos(a_i, b_i)|`` for two stacks of marks ``(N, ...)`` (the
    key-orthogonality measure; 0 for orthogonal marks, 1 for the same mark up to sign).

    Images where either mark is all zero count as 0 (nothing to align).
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"mark stacks differ in shape: {a.shape} vs {b.shape}")
    if len(a) == 0:
        raise ValueError("mean_abs_cosine needs at least one image")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.abs(np.einsum("ij,ij->i", a, b))
    ok = (na > 0) & (nb > 0)
    cos = np.zeros(len(a))
    cos[ok] = dot[ok] / (na[ok] * nb[ok])
    return float(cos.mean())
