"""Attack wildcard grammar: parse ``{attack}`` strings into typed specs and back (docs/methods/attacks.md).

The taxonomy follows BackdoorBox's verbs: *model repair* (fine-tuning, fine-pruning,
distillation) produces a new model; *input pre-processing* transforms every query at inference
time; *dataset filtering* removes suspicious training images before a suspect is trained.

Grammar (``N`` = a decimal number without exponent, ``I`` = a non-negative integer)::

    none
    finetune_frac{N}[_ep{I}]   fine-tune on a seeded fraction N in (0, 1] of clean data
    prune_{N}                  fine-pruning: zero the fraction N in (0, 1) of least-active
                               feature-layer channels, then fine-tune
    distill_T{N}               train a fresh student on the suspect's soft labels at temperature N
    down_{N}                   query-time down-scaling, N in (0, 1)
    up_{N}                     query-time up-scaling, N > 1
    rescale_{N}                query-time down-scaling by N in (0, 1) and back to the input size
    jpeg_q{I}                  query-time JPEG at quality I in [1, 100]
    blur_s{N}                  query-time Gaussian blur with sigma N > 0
    median_k{I}                query-time median filter, odd window I >= 3
    filter_spectral{N}         spectral-signature filtering (Tran et al., NeurIPS 2018) with
                               poison-fraction bound N in (0, 2/3): removes 1.5·N per class

Only the canonical spelling is accepted (``format_attack(parse_attack(s)) == s``) so that one
attack maps to exactly one result path; a non-canonical one raises naming the canonical form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

AttackKind = Literal["model", "query", "data", "none"]

_NUM = r"(\d+(?:\.\d+)?)"
_INT = r"(\d+)"


@dataclass(frozen=True)
class NoneSpec:
    """No attack: the suspect is verified as trained."""


@dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tune on a clean fraction ``frac``; ``epochs=None`` takes the configured default."""

    frac: float
    epochs: int | None = None


@dataclass(frozen=True)
class PruneSpec:
    """Fine-pruning (Liu et al., RAID 2018): prune fraction ``frac`` of channels, then fine-tune."""

    frac: float


@dataclass(frozen=True)
class DistillSpec:
    """Distil a fresh student from the suspect's soft labels at ``temperature``."""

    temperature: float


@dataclass(frozen=True)
class DownSpec:
    """Down-scale every query by ``factor`` < 1 (the model's pipeline then sees a smaller image)."""

    factor: float


@dataclass(frozen=True)
class UpSpec:
    """Up-scale every query by ``factor`` > 1."""

    factor: float


@dataclass(frozen=True)
class RescaleSpec:
    """Down-scale every query by ``factor`` < 1 and back up to its original size."""

    factor: float


@dataclass(frozen=True)
class JpegSpec:
    """JPEG-compress every query at ``quality``."""

    quality: int


@dataclass(frozen=True)
class BlurSpec:
    """Gaussian-blur every query with standard deviation ``sigma`` (pixels)."""

    sigma: float


@dataclass(frozen=True)
class MedianSpec:
    """Median-filter every query with a ``kernel``×``kernel`` window (denoiser)."""

    kernel: int


@dataclass(frozen=True)
class SpectralFilterSpec:
    """Spectral-signature filtering with poison-fraction bound ``eps`` (removes 1.5·eps per class)."""

    eps: float


AttackSpec = (
    NoneSpec
    | FinetuneSpec
    | PruneSpec
    | DistillSpec
    | DownSpec
    | UpSpec
    | RescaleSpec
    | JpegSpec
    | BlurSpec
    | MedianSpec
    | SpectralFilterSpec
)

#: family name -> (regex body, kind, spec type, one-line grammar entry)
_FAMILIES: dict[str, tuple[str, AttackKind, type, str]] = {
    "none": ("none", "none", NoneSpec, "none"),
    "finetune": (
        rf"finetune_frac{_NUM}(?:_ep{_INT})?",
        "model",
        FinetuneSpec,
        "finetune_frac{f}[_ep{e}]  (0 < f <= 1, e >= 1)",
    ),
    "prune": (rf"prune_{_NUM}", "model", PruneSpec, "prune_{p}  (0 < p < 1)"),
    "distill": (rf"distill_T{_NUM}", "model", DistillSpec, "distill_T{t}  (t > 0)"),
    "down": (rf"down_{_NUM}", "query", DownSpec, "down_{f}  (0 < f < 1)"),
    "up": (rf"up_{_NUM}", "query", UpSpec, "up_{f}  (f > 1)"),
    "rescale": (rf"rescale_{_NUM}", "query", RescaleSpec, "rescale_{f}  (0 < f < 1)"),
    "jpeg": (rf"jpeg_q{_INT}", "query", JpegSpec, "jpeg_q{q}  (1 <= q <= 100)"),
    "blur": (rf"blur_s{_NUM}", "query", BlurSpec, "blur_s{sigma}  (sigma > 0)"),
    "median": (rf"median_k{_INT}", "query", MedianSpec, "median_k{k}  (odd k >= 3)"),
    "filter_spectral": (
        rf"filter_spectral{_NUM}",
        "data",
        SpectralFilterSpec,
        "filter_spectral{eps}  (0 < eps < 2/3)",
    ),
}

#: ``wildcard_constraints`` regex for Snakemake: matches exactly the strings of the grammar.
WILDCARD_REGEX = "|".join(
    "(?:" + re.sub(r"\((?!\?)", "(?:", body) + ")" for body, *_ in _FAMILIES.values()
)

GRAMMAR = "\n".join(f"  {entry}" for *_, entry in _FAMILIES.values())


def format_number(x: float) -> str:
    """Canonical decimal spelling used in wildcards: no exponent, no trailing zeros (``0.1``, ``2``)."""
    return str(np.format_float_positional(float(x), trim="-"))


def _check(ok: bool, text: str, why: str) -> None:
    if not ok:
        raise ValueError(f"attack {text!r}: {why}; grammar:\n{GRAMMAR}")


def _build(family: str, groups: tuple[str | None, ...], text: str) -> AttackSpec:
    g = groups
    if family == "none":
        return NoneSpec()
    if family == "finetune":
        frac = float(g[0])  # type: ignore[arg-type]
        epochs = int(g[1]) if g[1] is not None else None
        _check(0 < frac <= 1, text, "fraction must be in (0, 1]")
        _check(epochs is None or epochs >= 1, text, "epochs must be >= 1")
        return FinetuneSpec(frac, epochs)
    value = g[0]
    assert value is not None
    if family == "prune":
        _check(0 < float(value) < 1, text, "prune fraction must be in (0, 1)")
        return PruneSpec(float(value))
    if family == "distill":
        _check(float(value) > 0, text, "temperature must be > 0")
        return DistillSpec(float(value))
    if family in ("down", "rescale"):
        _check(0 < float(value) < 1, text, "scale factor must be in (0, 1)")
        return DownSpec(float(value)) if family == "down" else RescaleSpec(float(value))
    if family == "up":
        _check(float(value) > 1, text, "scale factor must be > 1")
        return UpSpec(float(value))
    if family == "jpeg":
        _check(1 <= int(value) <= 100, text, "JPEG quality must be in [1, 100]")
        return JpegSpec(int(value))
    if family == "blur":
        _check(float(value) > 0, text, "sigma must be > 0")
        return BlurSpec(float(value))
    if family == "median":
        k = int(value)
        _check(k >= 3 and k % 2 == 1, text, "median window must be odd and >= 3")
        return MedianSpec(k)
    if family == "filter_spectral":
        _check(0 < float(value) < 2 / 3, text, "eps must be in (0, 2/3) so that 1.5*eps < 1")
        return SpectralFilterSpec(float(value))
    raise AssertionError(family)  # pragma: no cover - _FAMILIES and _build are kept in sync


def parse_attack(text: str) -> AttackSpec:
    """Parse an ``{attack}`` wildcard; raise ``ValueError`` listing the grammar if it is unknown."""
    if not isinstance(text, str):
        raise ValueError(f"attack must be a string, got {type(text).__name__}")
    for family, (body, *_rest) in _FAMILIES.items():
        m = re.fullmatch(body, text)
        if m is not None:
            spec = _build(family, m.groups(), text)
            canonical = format_attack(spec)
            _check(canonical == text, text, f"not in canonical form, write {canonical!r}")
            return spec
    raise ValueError(f"unknown attack {text!r}; grammar:\n{GRAMMAR}")


_FORMATTERS: dict[type, Callable[..., str]] = {
    NoneSpec: lambda s: "none",
    FinetuneSpec: lambda s: (
        f"finetune_frac{format_number(s.frac)}" + ("" if s.epochs is None else f"_ep{s.epochs}")
    ),
    PruneSpec: lambda s: f"prune_{format_number(s.frac)}",
    DistillSpec: lambda s: f"distill_T{format_number(s.temperature)}",
    DownSpec: lambda s: f"down_{format_number(s.factor)}",
    UpSpec: lambda s: f"up_{format_number(s.factor)}",
    RescaleSpec: lambda s: f"rescale_{format_number(s.factor)}",
    JpegSpec: lambda s: f"jpeg_q{s.quality}",
    BlurSpec: lambda s: f"blur_s{format_number(s.sigma)}",
    MedianSpec: lambda s: f"median_k{s.kernel}",
    SpectralFilterSpec: lambda s: f"filter_spectral{format_number(s.eps)}",
}


def format_attack(spec: AttackSpec) -> str:
    """The canonical wildcard string of ``spec`` (inverse of :func:`parse_attack`)."""
    try:
        return _FORMATTERS[type(spec)](spec)
    except KeyError:
        raise ValueError(f"not an attack spec: {spec!r}") from None


def as_spec(spec: AttackSpec | str) -> AttackSpec:
    """Accept either a wildcard string or an already parsed spec."""
    return parse_attack(spec) if isinstance(spec, str) else spec


def attack_kind(spec: AttackSpec | str) -> AttackKind:
    """``"model"`` (repair → new model), ``"query"`` (input transform), ``"data"`` or ``"none"``."""
    spec = as_spec(spec)
    for _body, kind, cls, _entry in _FAMILIES.values():
        if isinstance(spec, cls):
            return kind
    raise ValueError(f"not an attack spec: {spec!r}")


def attack_family(spec: AttackSpec | str) -> str:
    """The family name (``finetune``, ``jpeg``, ...), i.e. the key of the attack registry."""
    spec = as_spec(spec)
    for family, (_body, _kind, cls, _entry) in _FAMILIES.items():
        if isinstance(spec, cls):
            return family
    raise ValueError(f"not an attack spec: {spec!r}")


#: every family name of the grammar, in grammar order
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
