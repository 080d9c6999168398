"""The ``xmark`` config section with its defaults (mirrors ``config/schema.yaml``, tested).

Snakemake validates the config and fills defaults before a job runs; library callers (tests,
notebooks) may pass a partial section, which :func:`resolve_xmark` completes from the same
defaults. Unknown keys are errors, as in the schema (``additionalProperties: false``).
"""

from __future__ import annotations

import copy
from typing import Any

XMARK_DEFAULTS: dict[str, Any] = {
    "resolution": 64,
    "epsilon": 0.0627,
    "mask": "soft_norm",
    "mask_topq": 0.3,
    "mask_floor": 0.75,
    "carrier": {
        "kind": "keyed",
        "n_waves": 3,
        "band": [3.0, 8.0],
        "saturation": 5.0,
        "gain_bias": 3.0,
    },
    "decoys": {"rate": 2.0, "verify": 5},
    "base_channels": 16,
    "depth": 3,
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.001,
    "num_workers": 0,
    "bf16": False,
    "channels_last": False,
    "owner_key": 1,
    "independent_keys": [2, 3, 4],
    "scale_range": [0.25, 1.0],
    "laplacian": {"mode": "pyramid", "levels": 2, "relative": False},
    "visual": {"kind": "ssim_l2", "lpips_weights": None},
    "silence_margin": 0.02,
    "lambdas": {
        "eff_target": 1.0,
        "eff_nontarget": 1.0,
        "scale": 1.0,
        "diag": 1.0,
        "vis": 1.0,
        "lap": 1.0,
        "silence": 10.0,
    },
}


def merge_section(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(defaults)}")
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        if isinstance(defaults[k], dict):
            if not isinstance(v, dict):
                raise ValueError(f"{where}.{k}: expected a mapping, got {type(v).__name__}")
            out[k] = merge_section(defaults[k], v, f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_xmark(xmark: dict[str, Any] | None) -> dict[str, Any]:
    """The complete ``xmark`` section: ``xmark`` over :data:`XMARK_DEFAULTS` (deep merge)."""
    return merge_section(XMARK_DEFAULTS, dict(xmark or {}), "xmark")
