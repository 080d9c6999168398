"""The ``xmark`` config section, completed with the defaults of ``config/schema.yaml``.

Snakemake validates the config and fills the schema's defaults before a job runs; library
callers (tests, notebooks, benchmarks) may pass a partial section, which :func:`resolve_xmark`
completes from the same schema (:func:`medmark.schema.section_defaults`), so the defaults have
one source. Unknown keys are errors, as in the schema (``additionalProperties: false``).
"""

from __future__ import annotations

import copy
from typing import Any

from medmark.schema import section_defaults


def xmark_defaults() -> dict[str, Any]:
    """The schema's defaults of the ``xmark`` section (a fresh copy)."""
    return section_defaults("xmark")


def merge_section(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    """``given`` over ``defaults``, nested mappings merged; a key not in ``defaults`` is an
    error naming ``where``."""
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
    """The complete ``xmark`` section: ``xmark`` over the schema's defaults (deep merge)."""
    return merge_section(xmark_defaults(), dict(xmark or {}), "xmark")
