"""Verification stage: query one suspect as a black box with the owner's material.

The suspect is only ever reached through ``predict_proba``/``predict_label`` (docs/methods/verification.md,
"Roles"). A query-time attack (``medmark.attacks``) wraps the black box, so the
same test runs on the transformed query pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medmark.models import load_classifier
from medmark.runtime import resolve_device, set_threads
from medmark.verify import (
    BlackBox,
    TorchBlackBox,
    load_owner_verification,
    verify_owner,
)

log = logging.getLogger(__name__)


def suspect_blackbox(
    model_path: str | Path, *, device: str, input_resolution: int, batch_size: int = 128
) -> BlackBox:
    """A trained suspect (``medmark.models`` checkpoint) behind the black-box API."""
    model = load_classifier(model_path)
    return TorchBlackBox(
        model,
        device=resolve_device(device),
        batch_size=batch_size,
        input_resolution=input_resolution,
        source=str(model_path),
    )


def run_verification(
    *,
    blackbox: BlackBox,
    owner_json: str | Path,
    verification_h5: str | Path,
    verify_cfg: dict[str, Any],
    labels: dict[str, Any],
    out_summary: str | Path,
    out_per_image: str | Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Run the paired test for one (suspect, owner key, attack) and write summary + per-image CSV.

    ``key_tau`` comes from the configuration (``verify.key_tau``); the test itself is
    :func:`medmark.verify.verify_owner`, shared with the ``medmark verify`` command.
    """
    set_threads(threads)
    ov = load_owner_verification(Path(owner_json).parent, verification_file=verification_h5)
    summary = verify_owner(
        blackbox,
        ov,
        tau=verify_cfg["tau"],
        alpha=verify_cfg["alpha"],
        key_tau=verify_cfg["key_tau"],
        hard_label=verify_cfg.get("hard_label", False),
        params={
            **labels,
            "verify_seed": ov.verify_seed,
            "owner_key": ov.meta.get("key"),
            "verification_file": str(verification_h5),
            "verification_sha256": ov.verification_sha256,
            "query_resolution": ov.resolution,
        },
        out_summary=out_summary,
        out_per_image=out_per_image,
    )
    log.info(
        "%s: %s (p=%s, dP=%.3f, WSR=%.3f, BA=%.3f)",
        labels,
        summary["verdict"],
        summary["p_value"],
        summary["delta_p"],
        summary["wsr"],
        summary["benign_accuracy"],
    )
    return summary
