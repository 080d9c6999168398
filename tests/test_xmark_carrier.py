"""Keyed carriers, decoys and the guards of the release (docs/methods/xmark.md, "Keyed carrier")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine

from medmark.methods.release import check_marked
from medmark.methods.xmark import XMarkGenerator, apply_generator
from medmark.methods.xmark.carrier import (
    CarrierConfig,
    decoy_keys,
    keyed_carrier,
    mean_abs_cosine,
)
from medmark.methods.xmark.release import choose_decoys, choose_poisoned

CPU = torch.device("cpu")
CFG = CarrierConfig()


def test_carrier_is_deterministic_bounded_and_key_dependent() -> None:
    a, b, c = (
        keyed_carrier(1, 64, 64, CFG),
        keyed_carrier(1, 64, 64, CFG),
        keyed_carrier(2, 64, 64, CFG),
    )
    assert a.dtype == np.float32 and a.shape == (64, 64)
    assert np.array_equal(a, b)
    assert float(np.abs(a).max()) == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(a, c)
    plain = keyed_carrier(1, 64, 64, CarrierConfig(saturation=0.0))
    assert np.sqrt(np.mean(a**2)) > 1.3 * np.sqrt(np.mean(plain**2))  # saturation adds energy


def test_carrier_is_the_same_picture_at_every_resolution() -> None:
    """Frequencies are in cycles per image: the 128-px carrier averaged 2x2 is the 64-px one."""
    hi = keyed_carrier(7, 128, 128, CarrierConfig(saturation=0.0))
    lo = keyed_carrier(7, 64, 64, CarrierConfig(saturation=0.0))
    pooled = hi.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.corrcoef(pooled.ravel(), lo.ravel())[0, 1] > 0.98


def test_independent_keys_are_nearly_orthogonal() -> None:
    """Mean |cos| over 45 pairs of 10 keys is small; a key with itself is 1."""
    cs = np.stack([keyed_carrier(k, 64, 64, CFG) for k in range(10)])
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
    cos = [mean_abs_cosine(cs[i : i + 1], cs[j : j + 1]) for i, j in pairs]
    assert np.mean(cos) < 0.1, np.mean(cos)
    assert mean_abs_cosine(cs, cs) == pytest.approx(1.0)


def test_mean_abs_cosine_against_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8, 8)), rng.normal(size=(5, 8, 8))
    want = np.mean([abs(1.0 - cosine(a[i].ravel(), b[i].ravel())) for i in range(5)])
    assert mean_abs_cosine(a, b) == pytest.approx(want, rel=1e-12)
    a[2] = 0  # an unmarked image contributes 0, not NaN
    want0 = np.mean(
        [0.0 if i == 2 else abs(1 - cosine(a[i].ravel(), b[i].ravel())) for i in range(5)]
    )
    assert mean_abs_cosine(a, b) == pytest.approx(want0, rel=1e-12)
    with pytest.raises(ValueError):
        mean_abs_cosine(a, b[:3])


def test_decoy_keys_are_fresh_and_deterministic() -> None:
    d = decoy_keys(5, 50)
    assert d == decoy_keys(5, 50) and len(set(d)) == 50 and 5 not in d
    assert not set(d) & set(decoy_keys(5, 50, stream=1))  # release vs verification decoys
    assert not set(d) & set(decoy_keys(6, 50))


def test_generator_marks_of_two_keys_are_orthogonal_and_bounded() -> None:
    """The released marks of two keys (same generator weights, same images) barely align."""
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    s = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    gen = XMarkGenerator(base_channels=4, depth=2, epsilon=0.0627, key=1, seed=0).eval()
    with torch.no_grad():
        _, d_own = gen(x, s)
        _, d_other = gen(x, s, carrier_key=2)
    assert float(d_own.abs().max()) <= 0.0627 + 1e-7
    assert float(d_own.abs().max()) > 0.03  # a keyed mark exists from the first step
    assert mean_abs_cosine(d_own.numpy(), d_other.numpy()) < 0.15
    free = XMarkGenerator(base_channels=4, depth=2, carrier_kind="free", seed=0)
    with pytest.raises(ValueError, match="keyed carrier"):
        free(x, s, carrier_key=2)


def test_decoys_are_non_target_and_disjoint_from_poisons() -> None:
    y = np.array([1, 0, 0, 1, 0, -1, 0, 1, 0, 0, 0, 0])
    pois = choose_poisoned(y, 1, 0.25, seed=0)
    dec = choose_decoys(y, 1, len(pois), rate=2.0, seed=0)
    assert len(dec) == 2 * len(pois)
    assert (y[dec] == 0).all() and not set(dec) & set(pois)
    assert len(choose_decoys(y, 1, 3, rate=10.0, seed=0)) == 8  # capped: 8 rows of label 0
    assert len(choose_decoys(y, 1, 3, rate=0.0, seed=0)) == 0


def test_mark_that_quantises_to_nothing_is_refused() -> None:
    """Guard: epsilon below half a grey level leaves images unchanged: no unmarked release."""
    images = np.full((4, 16, 16), 100, np.uint8)
    sal = np.ones((4, 16, 16), np.float32)
    tiny = XMarkGenerator(base_channels=4, depth=2, epsilon=0.5 / 255 * 0.9, key=1, seed=0)
    wm = apply_generator(tiny, images, sal, 4, CPU)
    assert np.array_equal(wm, images)
    with pytest.raises(ValueError, match="quantised to nothing"):
        check_marked(images, wm, "release")
    ok = apply_generator(
        XMarkGenerator(base_channels=4, depth=2, key=1, seed=0), images, sal, 4, CPU
    )
    st = check_marked(images, ok, "release")
    assert st["n_unchanged"] == 0 and st["mean_abs_levels"] > 2


def test_hard_poison_choice_takes_the_lowest_scores_of_the_target_rows() -> None:
    """Breakage guarded: the highest scores taken, or non-target rows admitted."""
    y = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.0, 0.5, 0.3, 0.0, 0.8, 0.2, 0.0, 0.7])
    rows = choose_poisoned(y, 1, 0.3, seed=0, scores=scores)
    assert rows.tolist() == [1, 4, 7]  # the three lowest target scores (0.1, 0.2, 0.3)
    tie = choose_poisoned(y, 1, 0.1, seed=0, scores=np.where(y == 1, 0.5, 0.0))
    assert len(tie) == 1 and y[tie[0]] == 1
    with pytest.raises(ValueError):
        choose_poisoned(y, 1, 0.3, seed=0, scores=scores[:5])
