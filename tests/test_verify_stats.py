"""Statistics and metrics of black-box verification (brief verification.md: Tests, Metrics)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from scipy import stats

from medmark.errors import DataFormatError
from medmark.verify import (
    FLAG_ALL_ZERO,
    FLAG_AUROC_HARD_LABEL,
    FLAG_AUROC_SINGLE_CLASS,
    FLAG_BINOM_NULL_ZERO,
    FLAG_CONSTANT,
    FLAG_NAN_IDENTICAL,
    FLAG_TEST_IGNORED,
    benign_metrics,
    choose_verification_rows,
    delta_p,
    json_safe,
    paired_ttest,
    t_log10_sf,
    wilcoxon_hard_label,
    wsr,
)

torch.set_num_threads(1)

P_CLEAN = np.array([0.10, 0.25, 0.05, 0.30, 0.20, 0.15, 0.40, 0.12])
P_WM = np.array([0.70, 0.55, 0.62, 0.90, 0.35, 0.81, 0.66, 0.58])


def _t_sf_df7(t: float) -> float:
    """Closed-form Student-t survival function for 7 degrees of freedom (odd-df series):
    ``1/2 - (θ + sinθ·(cosθ + 2/3·cos³θ + 8/15·cos⁵θ)) / π`` with ``θ = atan(t/√7)``."""
    th = math.atan(t / math.sqrt(7.0))
    c = math.cos(th)
    return 0.5 - (th + math.sin(th) * (c + 2 / 3 * c**3 + 8 / 15 * c**5)) / math.pi


def test_ttest_tau_shifted_by_hand() -> None:
    """t, df and p computed without scipy: mean and sd of ``p_wm - p_clean - tau`` by hand,
    p from the closed-form t distribution for df = 7.

    Breakage guarded: tau not subtracted (or added to p_wm), a two-sided instead of a one-sided
    p-value, or an unpaired (Welch) test: each changes t or p beyond the tolerance."""
    tau = 0.2
    res = paired_ttest(P_WM, P_CLEAN, tau=tau, alpha=0.01)
    d = [w - c - tau for w, c in zip(P_WM.tolist(), P_CLEAN.tolist(), strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    assert t == pytest.approx(3.7253, abs=1e-4)  # mean 0.25, sd 0.18981
    assert res.statistic == pytest.approx(t, rel=1e-9)
    assert res.df == 7
    assert res.p_value == pytest.approx(_t_sf_df7(t), rel=1e-9)
    assert res.flag is None
    assert res.significant == (_t_sf_df7(t) < 0.01)
    assert res.log10_p == pytest.approx(math.log10(_t_sf_df7(t)), rel=1e-9)
    assert res.mean_diff == pytest.approx(mean + tau, rel=1e-12)
    # a larger margin can only weaken the evidence
    assert paired_ttest(P_WM, P_CLEAN, tau=0.4, alpha=0.01).p_value > res.p_value
    # the same differences as the tau = 0 hand check below, reached through tau = 0.2: t = sqrt(15)
    p_clean = np.array([0.1, 0.2, 0.3, 0.4])
    shifted = paired_ttest(p_clean + [0.3, 0.5, 0.4, 0.6], p_clean, tau=0.2, alpha=0.05)
    assert shifted.statistic == pytest.approx(math.sqrt(15.0), rel=1e-9)
    assert shifted.p_value == pytest.approx(0.015234, abs=1e-6)


def test_ttest_hand_check_tau_zero() -> None:
    # differences 0.1, 0.3, 0.2, 0.4: mean 0.25, sd sqrt(0.05/3) -> t = sqrt(15), df = 3
    p_clean = np.array([0.1, 0.2, 0.3, 0.4])
    p_wm = p_clean + np.array([0.1, 0.3, 0.2, 0.4])
    res = paired_ttest(p_wm, p_clean, tau=0.0, alpha=0.05)
    assert res.statistic == pytest.approx(math.sqrt(15.0), rel=1e-9)
    # closed-form Student t survival function for 3 degrees of freedom
    expected_p = 0.5 - (math.sqrt(5) / 6 + math.atan(math.sqrt(5))) / math.pi
    assert res.p_value == pytest.approx(expected_p, rel=1e-9)
    assert expected_p == pytest.approx(0.015234, abs=1e-6)
    assert res.significant  # 0.015 < 0.05
    assert not paired_ttest(p_wm, p_clean, tau=0.0, alpha=0.01).significant


@pytest.mark.parametrize("tau", [0.0, 0.2])
def test_ttest_identical_samples_is_nan_verdict(tau: float) -> None:
    p_clean = np.array([0.3, 0.11, 0.27, 0.5, 0.123456789])
    res = paired_ttest(p_clean + tau, p_clean, tau=tau, alpha=0.01)
    assert res.flag == FLAG_NAN_IDENTICAL
    assert math.isnan(res.p_value) and math.isnan(res.statistic)
    assert res.significant is False


def test_ttest_constant_differences() -> None:
    p_clean = np.array([0.3, 0.11, 0.27, 0.4, 0.123456789])
    up = paired_ttest(p_clean + 0.5, p_clean, tau=0.2, alpha=0.01)
    assert up.flag == FLAG_CONSTANT
    assert up.p_value == 0.0 and up.statistic == math.inf and up.log10_p == -math.inf
    assert up.significant is True
    down = paired_ttest(p_clean + 0.1, p_clean, tau=0.2, alpha=0.01)
    assert down.flag == FLAG_CONSTANT
    assert down.p_value == 1.0 and down.statistic == -math.inf and down.log10_p == 0.0
    assert down.significant is False


def test_ttest_log10_p_finite_when_p_underflows() -> None:
    rng = np.random.default_rng(0)
    p_clean = rng.uniform(0.0, 0.05, 1000)
    p_wm = rng.uniform(0.95, 1.0, 1000)
    res = paired_ttest(p_wm, p_clean, tau=0.2, alpha=0.01)
    assert res.p_value == 0.0  # underflowed in double precision
    assert math.isfinite(res.log10_p) and res.log10_p < -400
    assert res.flag is None and res.significant


def test_t_log10_sf_beyond_underflow_matches_closed_form() -> None:
    # df = 3: sf(t) = (arctan(1/u) - u / (1 + u^2)) / pi with u = t / sqrt(3)
    #        = (2 / (3 u^3) - 4 / (5 u^5) + ...) / pi for large u
    t = 1e104
    assert stats.t.logsf(t, 3) == -math.inf  # scipy underflows here
    u = t / math.sqrt(3.0)
    expected = (math.log(2.0 / 3.0) - 3.0 * math.log(u) - math.log(math.pi)) / math.log(10.0)
    assert t_log10_sf(t, 3.0) == pytest.approx(expected, rel=1e-12)
    # where scipy is finite the two agree by construction; signs and infinities
    assert t_log10_sf(2.5, 7.0) == pytest.approx(math.log10(stats.t.sf(2.5, 7)), rel=1e-12)
    assert t_log10_sf(math.inf, 5.0) == -math.inf and t_log10_sf(-math.inf, 5.0) == 0.0
    assert math.isnan(t_log10_sf(math.nan, 5.0))


def test_ttest_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_ttest([0.1, 0.2], [0.1, 0.2, 0.3], tau=0.2, alpha=0.01)
    with pytest.raises(ValueError, match="at least 2"):
        paired_ttest([0.1], [0.1], tau=0.2, alpha=0.01)
    with pytest.raises(ValueError, match="alpha"):
        paired_ttest(P_WM, P_CLEAN, tau=0.2, alpha=0.0)
    with pytest.raises(ValueError, match="NaN"):
        paired_ttest([0.1, np.nan], [0.1, 0.2], tau=0.2, alpha=0.01)


def test_wilcoxon_hard_label_detects_by_hand() -> None:
    """Expected values by hand, not by repeating the code's scipy calls.

    d = 1[wm = t] - 1[clean = t] - 0.2: images 0-2 (target on both) and 35-39 (target on
    neither) give -0.2, images 3-34 give +0.8. Ranks of |d|: the eight 0.2's share ranks 1-8
    (4.5 each), the 32 0.8's ranks 9-40 (24.5 each), so W+ = 32 * 24.5 = 784. Normal
    approximation with tie correction, no continuity correction: mean 40*41/4 = 410, variance
    40*41*81/24 - ((8^3 - 8) + (32^3 - 32))/48 = 4842.5. Binomial: P(X >= 35), X ~ B(40, 0.275).

    Breakage guarded: tau not subtracted or added, a two-sided p, the clean rate ignored in the
    binomial null; each moves W+, the p-value or the binomial tail.
    """
    pred_clean = np.zeros(40, dtype=np.int64)
    pred_clean[:3] = 1
    pred_wm = np.ones(40, dtype=np.int64)
    pred_wm[35:] = 0
    res = wilcoxon_hard_label(pred_wm, pred_clean, target_class=1, tau=0.2, alpha=0.01)
    assert res.primary is res.wilcoxon
    assert res.wilcoxon.statistic == 784.0
    z = (784 - 410) / math.sqrt(4842.5)
    expected_p = 0.5 * math.erfc(z / math.sqrt(2))
    assert expected_p == pytest.approx(3.8401e-8, rel=1e-4)
    assert res.wilcoxon.p_value == pytest.approx(expected_p, rel=1e-9, abs=0)
    assert res.wilcoxon.significant
    assert res.rate_wm == 35 / 40 and res.rate_clean == 3 / 40
    tail = sum(math.comb(40, k) * 0.275**k * 0.725 ** (40 - k) for k in range(35, 41))
    assert res.binomial.p_value == pytest.approx(tail, rel=1e-9, abs=0)
    assert res.binomial.log10_p == pytest.approx(math.log10(tail), rel=1e-6)


def test_wilcoxon_hard_label_few_flips_not_detected_with_margin() -> None:
    pred_clean = np.zeros(100, dtype=np.int64)
    pred_wm = pred_clean.copy()
    pred_wm[:10] = 1  # 10 % flips: below the margin tau = 0.2
    res = wilcoxon_hard_label(pred_wm, pred_clean, target_class=1, tau=0.2, alpha=0.01)
    assert not res.wilcoxon.significant and not res.binomial.significant


def test_wilcoxon_hard_label_all_zero_flagged() -> None:
    pred = np.array([0, 0, 1, 0, 0])
    res = wilcoxon_hard_label(pred, pred, target_class=1, tau=0.0, alpha=0.01)
    assert res.wilcoxon.flag == FLAG_ALL_ZERO
    assert math.isnan(res.wilcoxon.p_value) and not res.wilcoxon.significant
    zero = wilcoxon_hard_label(
        np.zeros(5, int), np.zeros(5, int), target_class=1, tau=0.0, alpha=0.01
    )
    assert zero.binomial.flag == FLAG_BINOM_NULL_ZERO and not zero.binomial.significant


def test_wsr_and_delta_p_by_hand() -> None:
    assert wsr(np.array([1, 0, 1, 1, 0]), target_class=1) == pytest.approx(0.6)
    # only non-target rows count when their true labels are given
    assert wsr([1, 1, 0, 1], target_class=1, true_labels=[1, 0, 0, 0]) == pytest.approx(2 / 3)
    assert wsr([0, 0], target_class=0) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        wsr([1, 1], target_class=1, true_labels=[1, 1])
    assert delta_p([0.9, 0.8, 0.5], [0.1, 0.2, 0.5]) == pytest.approx((0.8 + 0.6 + 0.0) / 3)


def test_benign_metrics_auroc_and_accuracy() -> None:
    labels = np.array([0, 0, 1, 1, -1])
    p1 = np.array([0.1, 0.6, 0.35, 0.8, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    bm = benign_metrics(labels, probs=probs)
    # pairs (pos, neg): (0.35>0.1) (0.35<0.6) (0.8>0.1) (0.8>0.6) -> 3/4
    assert bm.auroc == pytest.approx(0.75)
    assert bm.accuracy == pytest.approx(2 / 4)  # predictions 0,1,0,1 vs 0,0,1,1
    assert bm.n == 4 and bm.n_ignored == 1 and FLAG_TEST_IGNORED in bm.flags


def test_benign_metrics_single_class_auroc_is_flagged_nan() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    bm = benign_metrics(np.array([0, 0, 0]), probs=probs)
    assert math.isnan(bm.auroc) and FLAG_AUROC_SINGLE_CLASS in bm.flags
    assert bm.accuracy == pytest.approx(2 / 3)
    hard = benign_metrics(np.array([0, 1, 1]), pred=np.array([0, 1, 0]))
    assert math.isnan(hard.auroc) and FLAG_AUROC_HARD_LABEL in hard.flags
    assert hard.accuracy == pytest.approx(2 / 3)


def test_choose_verification_rows(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    n = 200
    labels = rng.integers(0, 2, n)
    labels[::17] = -1
    splits = rng.choice(np.array(["release", "verification", "test", "independent"]), n)
    rows = choose_verification_rows(labels, splits, target_class=1, n=10, seed=3)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10
    assert np.all(labels[rows] == 0)
    assert np.all(splits[rows] == "verification")
    again = choose_verification_rows(labels, splits, target_class=1, n=10, seed=3)
    np.testing.assert_array_equal(rows, again)
    other = choose_verification_rows(labels, splits, target_class=1, n=10, seed=4)
    assert not np.array_equal(rows, other)
    # target class 0: chooses label-1 rows; bytes split names (h5py) are accepted
    rows0 = choose_verification_rows(
        labels, splits.astype("S"), target_class=0, n=5, seed=0, split="test"
    )
    assert np.all(labels[rows0] == 1) and np.all(splits[rows0] == "test")
    available = np.flatnonzero((splits == "verification") & (labels == 0))
    with caplog.at_level(logging.WARNING, logger="medmark.verify"):
        all_rows = choose_verification_rows(labels, splits, target_class=1, n=10_000, seed=0)
    np.testing.assert_array_equal(all_rows, available)
    assert "fewer than the 10000 requested" in caplog.text
    few = np.array(["release"] * (n - 1) + ["verification"])
    with pytest.raises(DataFormatError, match="only .* rows in split 'verification'"):
        choose_verification_rows(np.zeros(n, int), few, target_class=1, n=10, seed=0)


def test_json_safe_strict() -> None:
    obj = {
        "p": float("nan"),
        "s": np.float64(np.inf),
        "l": -math.inf,
        "a": np.array([1.0, np.nan]),
        "k": np.int64(3),
        "nested": [{"x": np.float32(0.5)}],
    }
    safe = json_safe(obj)
    text = json.dumps(safe, allow_nan=False)
    assert json.loads(text) == {
        "p": None,
        "s": "inf",
        "l": "-inf",
        "a": [1.0, None],
        "k": 3,
        "nested": [{"x": 0.5}],
    }
