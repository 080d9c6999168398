"""X-Mark's release pieces (paper §3.4; docs/methods/xmark.md, "Release"); the release and the
owner's secret themselves are written by :mod:`medmark.methods.release` for every method, with
X-Mark plugged in through :class:`medmark.methods.xmark.method.XMark`.

- :func:`choose_poisoned`: clean-label poisoning, only target-class rows of the release split,
  ``k = max(1, round(poison_rate * N_release))`` capped by the number of target-class rows
  (:func:`~medmark.methods.base.poison_budget` records the cap).
- :func:`choose_decoys`: decoy negatives (our extension): ``round(decoys.rate * k)`` non-target
  rows of the release split, each marked with a *fresh* decoy key's carrier by the same
  generator. Labels never change (still clean-label). A model trained on the release then sees
  the carrier family on both classes and can only tie ``y_t`` to the owner's carrier, so a model
  trained on another key's release does not answer the owner's key (Ind-W), nor the owner's
  model another key (Ind-Wp). Ablation ``no_decoys`` (rate 0).
- :func:`apply_generator`: watermark uint8 images and quantise back to the stored bit depth
  (``round(255 * clip(x + delta, 0, 1))``), so every efficacy number downstream is measured on the
  quantised mark (:func:`medmark.methods.release.check_marked` refuses marks that quantised to
  nothing).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medmark.methods.base import choose_rows, poison_budget
from medmark.methods.xmark.generator import XMarkGenerator

log = logging.getLogger(__name__)

METHOD = "xmark"

# --------------------------------------------------------------------------- selection


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
    if scores is None:
        return choose_rows(cand, len(y), poison_rate, seed)
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != y.shape or not np.isfinite(sc[cand]).all():
        raise ValueError(f"scores must be finite, one per row ({y.shape}), got {sc.shape}")
    return choose_rows(cand, len(y), poison_rate, seed, sc[cand])


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
