"""The methods the workflow knows: one entry per method (docs/methods/interface.md).

Two families, one registry. ``METHODS``: dataset watermarks
(:class:`medmark.methods.base.WatermarkMethod`: a marked fraction of the release, verified on
suspect models by a paired test). ``LOCKS``: inference-time locks
(:class:`medmark.methods.lock.InferenceLock`: every released image locked, checked by a signed
certificate, removed with the owner's key; MedLocker). A name belongs to one family.

Pure Python without imports beyond the standard library: ``rules/common.smk`` loads this file by
path to build the ``{method}`` wildcard's vocabulary, the ``methods:`` list's check, the
``baselines`` target and the lock rules' ``lock`` name, without importing torch. Adding a method
is a module implementing one of the two interfaces plus an entry here (and its config section in
``config/schema.yaml``); no rule changes for a watermark.
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


@dataclass(frozen=True)
class LockEntry:
    """``target``: ``module:Class`` of the :class:`~medmark.methods.lock.InferenceLock`;
    ``verification`` mirrors the class's attribute (``"certificate"``; checked by the tests);
    ``config``: the top-level config section the lock rules pass as ``cfg``; ``results``: the
    directory under ``results/`` of its rules (``{source}/release``, ``{source}/owner``,
    ``report``)."""

    target: str
    verification: str
    config: str
    results: str


LOCKS: dict[str, LockEntry] = {
    "medlocker": LockEntry(
        "medmark.methods.medlocker.method:MedLocker", "certificate", "medlocker", "medlocker"
    ),
}

if set(METHODS) & set(LOCKS):
    raise RuntimeError(f"names registered as both watermark and lock: {set(METHODS) & set(LOCKS)}")


def family(name: str) -> str:
    """``"watermark"`` (``METHODS``) or ``"lock"`` (``LOCKS``)."""
    if name in METHODS:
        return "watermark"
    if name in LOCKS:
        return "lock"
    raise ValueError(f"unknown method {name!r}; known: {sorted([*METHODS, *LOCKS])}")


def method_class(name: str) -> Any:
    """The :class:`~medmark.methods.base.WatermarkMethod` subclass registered as ``name``."""
    if name not in METHODS:
        hint = f" ({name!r} is an inference-time lock: lock_class)" if name in LOCKS else ""
        raise ValueError(f"unknown watermark method {name!r}{hint}; known: {sorted(METHODS)}")
    module, cls = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def lock_class(name: str) -> Any:
    """The :class:`~medmark.methods.lock.InferenceLock` subclass registered as ``name``."""
    if name not in LOCKS:
        raise ValueError(f"unknown inference-time lock {name!r}; known: {sorted(LOCKS)}")
    module, cls = LOCKS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)
