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
from typing import Any

import torch

from medmark.methods.xmark.carrier import mean_abs_cosine
from medmark.verify import OwnerVerification, TorchBlackBox, verify_suspect


def key_orthogonality(
    owners: Mapping[str, OwnerVerification],
) -> list[dict[str, Any]]:
    """Mean |cos| of the released marks for every pair of ``owners`` (name -> loaded material).

    All must hold the same verification images (same ids, same order).
    """
    first = next(iter(owners.values())).ids
    bad = [n for n, ov in owners.items() if ov.ids != first]
    if bad:
        raise ValueError(f"owner dirs {bad} hold other verification images than the first")
    deltas = {n: ov.watermarked - ov.clean for n, ov in owners.items()}
    return [
        {"a": a, "b": b, "mean_abs_cos": mean_abs_cosine(deltas[a], deltas[b])}
        for a, b in itertools.combinations(deltas, 2)
    ]


def model_response(
    model: torch.nn.Module,
    ov: OwnerVerification,
    *,
    input_resolution: int,
    tau: float,
    key_tau: float,
    alpha: float,
    device: torch.device,
) -> dict[str, Any]:
    """ΔP, WSR, key contrast and verdict of one model queried with the owner's marks ``ov``."""
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
