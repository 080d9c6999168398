"""Attack wildcard grammar: round trip, strictness, kinds (docs/methods/attacks.md)."""

from __future__ import annotations

import re

import pytest

from medmark.attacks import (
    FAMILIES,
    REGISTRY,
    WILDCARD_REGEX,
    attack_family,
    attack_kind,
    format_attack,
    parse_attack,
)
from medmark.attacks.spec import (
    BlurSpec,
    DistillSpec,
    DownSpec,
    FinetuneSpec,
    JpegSpec,
    MedianSpec,
    NoneSpec,
    PruneSpec,
    RescaleSpec,
    SpectralFilterSpec,
    UpSpec,
)

VALID = {
    "none": (NoneSpec(), "none"),
    "finetune_frac0.1": (FinetuneSpec(0.1, None), "model"),
    "finetune_frac1_ep3": (FinetuneSpec(1.0, 3), "model"),
    "prune_0.2": (PruneSpec(0.2), "model"),
    "distill_T4": (DistillSpec(4.0), "model"),
    "distill_T0.5": (DistillSpec(0.5), "model"),
    "down_0.5": (DownSpec(0.5), "query"),
    "up_1.5": (UpSpec(1.5), "query"),
    "up_2": (UpSpec(2.0), "query"),
    "rescale_0.25": (RescaleSpec(0.25), "query"),
    "jpeg_q75": (JpegSpec(75), "query"),
    "jpeg_q100": (JpegSpec(100), "query"),
    "blur_s1.5": (BlurSpec(1.5), "query"),
    "median_k3": (MedianSpec(3), "query"),
    "filter_spectral0.1": (SpectralFilterSpec(0.1), "data"),
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_parse_format_round_trip(text: str) -> None:
    spec, kind = VALID[text]
    assert parse_attack(text) == spec
    assert format_attack(spec) == text
    assert attack_kind(text) == kind == attack_kind(spec)
    assert re.fullmatch(WILDCARD_REGEX, text)
    assert REGISTRY[attack_family(spec)].kind == kind


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("foo", "unknown attack"),
        ("finetune_0.1", "unknown attack"),
        ("down_-0.5", "unknown attack"),
        ("blur_s1e-3", "unknown attack"),
        ("none ", "unknown attack"),
        ("down_0.50", "write 'down_0.5'"),
        ("up_2.0", "write 'up_2'"),
        ("jpeg_q075", "write 'jpeg_q75'"),
        ("down_1.5", "(0, 1)"),
        ("rescale_1", "(0, 1)"),
        ("up_1", "> 1"),
        ("prune_1", "(0, 1)"),
        ("prune_0", "(0, 1)"),
        ("finetune_frac0", "(0, 1]"),
        ("finetune_frac1.5", "(0, 1]"),
        ("finetune_frac0.1_ep0", "epochs"),
        ("distill_T0", "> 0"),
        ("jpeg_q0", "[1, 100]"),
        ("jpeg_q101", "[1, 100]"),
        ("blur_s0", "> 0"),
        ("median_k4", "odd"),
        ("median_k1", "odd"),
        ("filter_spectral0.7", "2/3"),
    ],
)
def test_bad_attacks_raise_with_grammar(text: str, why: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_attack(text)
    msg = str(err.value)
    assert why in msg
    assert "finetune_frac{f}[_ep{e}]" in msg and "median_k{k}" in msg  # grammar listed


def test_wildcard_regex_rejects_garbage() -> None:
    for text in ("foo", "down_", "jpeg_qx", "none_1", "finetune_frac0.1_ep"):
        assert re.fullmatch(WILDCARD_REGEX, text) is None


def test_registry_covers_grammar() -> None:
    assert tuple(REGISTRY) == FAMILIES
    assert {e.kind for e in REGISTRY.values()} == {"none", "model", "query", "data"}


def test_format_rejects_non_spec() -> None:
    with pytest.raises(ValueError, match="not an attack spec"):
        format_attack("down_0.5")  # type: ignore[arg-type]
