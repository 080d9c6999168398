"""Quick diagnostics of an X-Mark key that need no suspect training (docs/methods/xmark.md,
"Diagnostics").

Written by the generator's diagnostics job next to its loss log, shown in the report, so a user
sees in minutes whether a generator is worth the suspects:

- **key orthogonality**: mean over the verification images of ``|cos(delta_a, delta_b)|`` for
  every pair of keys used (owner vs each independent key, and between independent keys), with
  ``delta = x' - x`` as released (quantised). 0 = orthogonal marks, 1 = the same mark.
- **clean references**: ΔP (and the key-specific contrast) of frozen clean models of each suspect
  architecture queried with the owner's mark: what an Ind-M suspect would answer.
- **release proxy**: ΔP of a short proxy trained on the release: what a Malicious suspect would
  answer, and against the decoy marks, whether it learned the key or only the carrier family.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmark.methods.xmark.carrier import mean_abs_cosine
from medmark.verify import TorchBlackBox, load_owner_verification, verify_suspect


def _deltas(owner_dir: Path, resolution: int) -> np.ndarray:
    ov = load_owner_verification(owner_dir, resolution=resolution)
    return ov.watermarked - ov.clean


def key_orthogonality(owner_dirs: Mapping[str, Path], resolution: int) -> list[dict[str, Any]]:
    """Mean |cos| of the released marks for every pair of ``owner_dirs`` (name -> owner dir).

    All owner directories must hold the same verification images (same ids, same order).
    """
    ids = {n: load_owner_verification(d, resolution=resolution).ids for n, d in owner_dirs.items()}
    first = next(iter(ids.values()))
    bad = [n for n, v in ids.items() if v != first]
    if bad:
        raise ValueError(f"owner dirs {bad} hold other verification images than the first")
    deltas = {n: _deltas(Path(d), resolution) for n, d in owner_dirs.items()}
    return [
        {"a": a, "b": b, "mean_abs_cos": mean_abs_cosine(deltas[a], deltas[b])}
        for a, b in itertools.combinations(deltas, 2)
    ]


def model_response(
    model: torch.nn.Module,
    owner_dir: Path,
    *,
    resolution: int,
    input_resolution: int,
    tau: float,
    key_tau: float,
    alpha: float,
    device: torch.device,
) -> dict[str, Any]:
    """ΔP, WSR, key contrast and verdict of one model queried with ``owner_dir``'s marks."""
    ov = load_owner_verification(owner_dir, resolution=resolution)
    bb = TorchBlackBox(model, device=device, batch_size=128, input_resolution=input_resolution)
    summary, _ = verify_suspect(
        bb,
        ov.clean,
        ov.watermarked,
        None,
        None,
        target_class=ov.target_class,
        tau=tau,
        alpha=alpha,
        decoy_images=ov.decoys,
        key_tau=key_tau,
    )
    keep = ("verdict", "delta_p", "delta_p_decoys", "wsr", "p_value", "log10_p")
    out = {k: summary.get(k) for k in keep}
    kt = summary.get("key_test") or {}
    out["key_p_value"] = kt.get("p_value")
    out["key_mean_diff"] = kt.get("mean_diff")
    return out
