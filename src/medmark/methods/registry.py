"""The watermark methods the workflow knows: one entry per method (docs/methods/interface.md).

Pure Python without imports beyond the standard library: ``rules/common.smk`` loads this file by
path to build the ``{method}`` wildcard's vocabulary, the ``methods:`` list's check and the
``baselines`` target, without importing torch. Adding a method is a module implementing
:class:`medmark.methods.base.WatermarkMethod` plus an entry here (and its config section in
``config/schema.yaml``); no rule changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodEntry:
    """``target``: ``module:Class`` of the implementation; ``release``: ``"xmark"`` (its own
    generator and release rules) or ``"generic"`` (the ``method_release`` rule);
    ``label_mode`` / ``verification`` mirror the class's attributes (checked by the tests);
    ``baseline``: built by the ``baselines`` target."""

    target: str
    release: str
    label_mode: str
    verification: str
    baseline: bool
    #: the release rule passes the owner's clean surrogate (``inputs["surrogate"]``) and its
    #: input resolution (``cfg["surrogate_resolution"]``)
    surrogate: bool = False
    #: the release rule passes the variant's ``xmark`` section as ``cfg["xmark"]``
    xmark_section: bool = False


METHODS: dict[str, MethodEntry] = {
    "xmark": MethodEntry("medmark.methods.xmark.method:XMark", "xmark", "clean", "targeted", False),
    "badnets": MethodEntry(
        "medmark.methods.badnets:BadNets", "generic", "poison", "targeted", True
    ),
    "blended": MethodEntry(
        "medmark.methods.blended:Blended", "generic", "poison", "targeted", True
    ),
    "wanet": MethodEntry("medmark.methods.wanet:WaNet", "generic", "poison", "targeted", True),
    "ubw_p": MethodEntry("medmark.methods.ubw:UBWP", "generic", "poison", "untargeted", True),
    "label_consistent": MethodEntry(
        "medmark.methods.label_consistent:LabelConsistent",
        "generic",
        "clean",
        "targeted",
        True,
        surrogate=True,
    ),
    "sscl_bw": MethodEntry(
        "medmark.methods.sscl_bw:SSCLBW",
        "generic",
        "clean",
        "targeted",
        True,
        surrogate=True,
        xmark_section=True,
    ),
}

#: Methods released by the generic ``method_release`` rule.
GENERIC = [name for name, e in METHODS.items() if e.release == "generic"]
#: The paper's baselines (the ``baselines`` target builds all of them).
BASELINES = [name for name, e in METHODS.items() if e.baseline]


def method_class(name: str) -> Any:
    """The :class:`~medmark.methods.base.WatermarkMethod` subclass registered as ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown watermark method {name!r}; known: {sorted(METHODS)}")
    module, cls = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)
