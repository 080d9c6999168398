"""Statistics and metrics of black-box verification (docs/methods/verification.md: Tests, Metrics)."""

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
    FLAG_CONSTANT,
    FLAG_NAN_IDENTICAL,
    FLAG_TEST_IGNORED,
    benign_metrics,
    choose_verification_rows,
    delta_p,
    hard_label_test,
    json_safe,
    key_specific_test,
    paired_ttest,
    t_log10_sf,
    tango_score,
    verify_suspect,
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


def test_ttest_constant_differences_use_the_exact_sign_test() -> None:
    """Constant differences (zero variance): the exact sign test decides, p stays finite.

    Before the fix a saturated model got p = 0 and log10 p = -inf ("detected" with no usable
    p-value); this test failed on ``up.p_value == 2**-5``.
    """
    p_clean = np.array([0.3, 0.11, 0.27, 0.4, 0.123456789])
    up = paired_ttest(p_clean + 0.5, p_clean, tau=0.2, alpha=0.01)
    assert up.flag == FLAG_CONSTANT and up.test == "exact_sign"
    ref = stats.binomtest(5, 5, 0.5, alternative="greater").pvalue
    assert up.p_value == pytest.approx(ref, rel=1e-12) and up.p_value == 2.0**-5
    assert up.log10_p == pytest.approx(-5 * math.log10(2.0)) and math.isfinite(up.log10_p)
    assert up.statistic == 5.0
    assert up.significant is False  # 2^-5 = 0.031 >= alpha: 5 pairs cannot reach 0.01
    saturated = paired_ttest(np.ones(100), np.zeros(100), tau=0.2, alpha=0.01)
    assert saturated.significant and saturated.flag == FLAG_CONSTANT
    assert saturated.log10_p == pytest.approx(-100 * math.log10(2.0))
    down = paired_ttest(p_clean + 0.1, p_clean, tau=0.2, alpha=0.01)
    assert down.flag == FLAG_CONSTANT
    assert down.p_value == 1.0 and down.statistic == 0.0 and down.log10_p == 0.0
    assert down.significant is False
    huge = paired_ttest(np.ones(2000), np.zeros(2000), tau=0.2, alpha=0.01)
    assert huge.p_value == 0.0 and math.isfinite(huge.log10_p) and huge.significant


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


def _pairs(b: int, c: int, m: int, n11: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (wm, clean) with b (1,0) pairs, c (0,1) pairs, n11 (1,1), the rest (0,0)."""
    wm = np.array([1] * b + [0] * c + [1] * n11 + [0] * (m - b - c - n11))
    clean = np.array([0] * b + [1] * c + [1] * n11 + [0] * (m - b - c - n11))
    return wm, clean


def _direct_score_and_p(b: int, c: int, m: int, tau: float) -> tuple[float, float]:
    """Tango's statistic and the exact unconditional p computed the slow, direct way with scipy.

    The constrained MLE of p01 is found numerically (``minimize_scalar`` on the multinomial
    negative log-likelihood under p10 = p01 + tau); the p-value is the maximum over p01 (a fine
    grid, then ``minimize_scalar`` around the best point) of ``multinomial.pmf`` summed over the
    outcomes whose statistic is at least the observed one.
    """
    from scipy import optimize

    n00 = m - b - c
    hi = (1 - tau) / 2

    def nll(q: float) -> float:
        return -float(stats.multinomial.logpmf([b, c, n00], m, [q + tau, q, 1 - 2 * q - tau]))

    q = optimize.minimize_scalar(nll, bounds=(1e-12, hi - 1e-12), method="bounded").x
    z_obs = (b - c - m * tau) / math.sqrt(m * (2 * q + tau * (1 - tau)))
    outcomes = [(i, j) for i in range(m + 1) for j in range(m + 1 - i)]
    zs = np.array([tango_score(i, j, m, tau) for i, j in outcomes])
    ext = np.array(outcomes)[zs >= z_obs - 1e-9]
    counts = np.column_stack([ext, m - ext.sum(axis=1)])

    def size(q: float) -> float:
        pmf = stats.multinomial.pmf(counts, m, [q + tau, q, max(1 - 2 * q - tau, 0.0)])
        return float(np.nansum(pmf))

    grid = np.linspace(1e-9, hi - 1e-9, 801)
    k = int(np.argmax([size(g) for g in grid]))
    lo_, hi_ = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    best = optimize.minimize_scalar(lambda g: -size(g), bounds=(lo_, hi_), method="bounded")
    return z_obs, max(size(grid[k]), -best.fun)


@pytest.mark.parametrize(
    ("b", "c", "m", "tau"), [(30, 2, 100, 0.2), (12, 1, 30, 0.1), (9, 3, 25, 0.0)]
)
def test_hard_label_test_matches_direct_scipy_computation(
    b: int, c: int, m: int, tau: float
) -> None:
    wm, clean = _pairs(b, c, m, n11=2)
    res = hard_label_test(wm, clean, target_class=1, tau=tau, alpha=0.01)
    z_ref, p_ref = _direct_score_and_p(b, c, m, tau)
    assert res.primary.statistic == pytest.approx(z_ref, rel=1e-6)
    assert res.primary.p_value == pytest.approx(p_ref, rel=2e-3)
    assert res.primary.log10_p == pytest.approx(math.log10(res.primary.p_value), rel=1e-12)
    assert (res.discordant_up, res.discordant_down) == (b, c)
    if tau == 0.0:  # McNemar's score statistic
        assert res.primary.statistic == pytest.approx((b - c) / math.sqrt(b + c))
    ref = stats.wilcoxon(wm - clean - tau, alternative="greater")
    assert res.dvbw_wilcoxon.p_value == pytest.approx(float(ref.pvalue))


@pytest.mark.parametrize(("tau", "p01"), [(0.2, 0.0), (0.2, 0.05), (0.2, 0.25), (0.0, 0.1)])
def test_hard_label_test_size_at_the_null_boundary(tau: float, p01: float) -> None:
    """Simulated rejection rate at the null boundary p10 = p01 + tau is <= alpha (+ 3 s.e.).

    The test it replaces (Wilcoxon signed-rank on u - v - tau) rejected 54-84 % of the time
    here (same p for every tau in (0, 0.5)); run against it, this test failed. The simulation
    is vectorised: counts are drawn at once, the statistic is monotone in the p-value, so the
    real ``hard_label_test`` is called only to locate the critical value (bisection over the
    distinct statistics) and to check the decision on both sides of it.
    """
    m, alpha, reps = 100, 0.01, 20_000
    rng = np.random.default_rng(11)
    counts = rng.multinomial(m, [p01 + tau, p01, 1 - 2 * p01 - tau], size=reps)
    pairs, inverse = np.unique(counts[:, :2], axis=0, return_inverse=True)
    z = tango_score(pairs[:, 0], pairs[:, 1], m, tau)
    order = np.argsort(np.nan_to_num(z, nan=-np.inf))

    def rejects(k: int) -> bool:
        b, c = (int(v) for v in pairs[order[k]])
        return hard_label_test(*_pairs(b, c, m), 1, tau, alpha).primary.significant

    lo, hi = 0, len(order)  # first index whose pair rejects (len = none does)
    while lo < hi:
        mid = (lo + hi) // 2
        if rejects(mid):
            hi = mid
        else:
            lo = mid + 1
    for k in (lo - 2, lo - 1):  # monotone: below the critical value nothing rejects ...
        if k >= 0:
            assert not rejects(k)
    for k in (lo, lo + 1):  # ... and above it everything does
        if k < len(order):
            assert rejects(k)
    reject_pair = np.zeros(len(pairs), dtype=bool)
    reject_pair[order[lo:]] = True
    rate = float(reject_pair[inverse.ravel()].mean())
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps), rate


def test_hard_label_test_detects_a_strong_mark_and_not_a_weak_one() -> None:
    strong = hard_label_test(*_pairs(40, 1, 100), target_class=1, tau=0.2, alpha=0.01)
    assert strong.primary.significant and strong.primary.test == "paired_margin_score_exact"
    assert strong.rate_wm == 0.40 and strong.rate_clean == 0.01
    weak = hard_label_test(*_pairs(10, 0, 100), target_class=1, tau=0.2, alpha=0.01)
    assert not weak.primary.significant  # 10 % flips: below the margin tau = 0.2
    # the margin matters (the Wilcoxon reading gave the same p for every tau in (0, 0.5))
    p = [hard_label_test(*_pairs(30, 2, 100), 1, t, 0.01).primary.p_value for t in (0.1, 0.2, 0.3)]
    assert p[0] < p[1] < p[2]


def test_hard_label_all_zero_flagged() -> None:
    pred = np.array([0, 0, 1, 0, 0])
    res = hard_label_test(pred, pred, target_class=1, tau=0.0, alpha=0.01)
    assert res.primary.flag == FLAG_ALL_ZERO
    assert math.isnan(res.primary.p_value) and not res.primary.significant
    # with a margin, unchanged predictions are an ordinary (non-significant) outcome
    res2 = hard_label_test(pred, pred, target_class=1, tau=0.2, alpha=0.01)
    assert res2.primary.flag is None and res2.primary.p_value > 0.5


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


# --------------------------------------------------------------------------- key-specific test


def test_key_specific_test_matches_scipy_on_fixed_vectors() -> None:
    """Expected value by another route: a one-sample t-test of the contrasts against key_tau."""
    own = np.array([0.91, 0.85, 0.40, 0.77, 0.95, 0.66, 0.88, 0.71])
    dec = np.array(
        [
            [0.20, 0.31, 0.10, 0.25, 0.40, 0.12, 0.33, 0.28],
            [0.15, 0.22, 0.35, 0.18, 0.30, 0.20, 0.41, 0.19],
            [0.11, 0.40, 0.05, 0.30, 0.22, 0.25, 0.29, 0.35],
        ]
    )
    res = key_specific_test(own, dec, key_tau=0.1, alpha=0.01)
    d = own - dec.mean(axis=0)
    ref = stats.ttest_1samp(d, 0.1, alternative="greater")
    assert res.statistic == pytest.approx(float(ref.statistic), rel=1e-10)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-10)
    assert res.mean_diff == pytest.approx(float(d.mean()))
    assert res.significant and res.test == "key_contrast_paired_t"
    flipped = key_specific_test(dec[0], np.stack([own, dec[1]]), key_tau=0.1, alpha=0.01)
    assert not flipped.significant  # swapping the owner's mark with a decoy's loses it
    with pytest.raises(ValueError):
        key_specific_test(own, dec[:, :5], key_tau=0.1, alpha=0.01)


def test_key_specific_test_size_under_an_exchangeable_null() -> None:
    """A model that learned the carrier family, not the key: owner and decoy answers iid.

    At the boundary key_tau = 0 the rejection rate must be <= alpha (+ 3 Monte-Carlo s.e.).
    Breakage guarded: comparing with one decoy's maximum instead of the decoys' mean, or a
    two-sided p, raises the rate far above alpha.
    """
    rng = np.random.default_rng(3)
    m, k, reps, alpha = 100, 5, 3000, 0.01
    hits = 0
    for _ in range(reps):
        base = rng.beta(2, 5, size=m)  # per-image susceptibility, shared by every mark
        p = np.clip(base[None] + 0.15 * rng.standard_normal((k + 1, m)), 0, 1)
        hits += key_specific_test(p[0], p[1:], key_tau=0.0, alpha=alpha).significant
    rate = hits / reps
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps), rate


class _MeanBox:
    """A black box whose P(target) is twice the mean pixel value (any mark of the same energy
    is answered the same way: the model learned the carrier family, not the key)."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        p = np.clip(2 * images.reshape(len(images), -1).mean(axis=1), 0, 1)
        return np.stack([1 - p, p], axis=1)

    def predict_label(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)


def test_verdict_needs_the_tau_test_and_the_key_test() -> None:
    """A suspect that answers the decoy marks as strongly as the owner's is not detected.

    Breakage guarded: the verdict taken from the tau-margin test alone (the family learner is
    then "detected"), or the decoys not queried.
    """
    rng = np.random.default_rng(0)
    m = 40
    clean = (0.1 + 0.01 * rng.random((m, 1, 8, 8))).astype(np.float32)
    owner = clean + np.float32(0.35) + (0.01 * rng.random((m, 1, 8, 8))).astype(np.float32)
    family = np.stack([owner + np.float32(0.005 * k) for k in range(3)])
    key_only = np.stack([clean + np.float32(0.01 * k) for k in range(3)])
    kw = dict(target_class=1, tau=0.2, alpha=0.01, key_tau=0.1)
    s_fam, _ = verify_suspect(_MeanBox(), clean, owner, None, None, decoy_images=family, **kw)
    assert s_fam["tau_test_significant"] and s_fam["verdict"] == "not detected"
    assert not s_fam["key_test"]["significant"] and s_fam["verdict_rule"] == "tau_test and key_test"
    s_key, per_image = verify_suspect(
        _MeanBox(), clean, owner, None, None, decoy_images=key_only, **kw
    )
    assert s_key["verdict"] == "detected" and s_key["key_test"]["significant"]
    assert s_key["delta_p_decoys"] < 0.05 < 0.5 < s_key["delta_p"]
    assert "p_target_decoys_mean" in per_image.columns
    s_none, _ = verify_suspect(_MeanBox(), clean, owner, None, None, **kw)
    assert s_none["verdict"] == "detected" and s_none["verdict_rule"] == "tau_test"
    assert "no_decoys_key_test_skipped" in s_none["flags"]
    no_margin = {k: v for k, v in kw.items() if k != "key_tau"}
    with pytest.raises(ValueError, match="key_tau must be given"):  # no hidden default margin
        verify_suspect(_MeanBox(), clean, owner, None, None, decoy_images=family, **no_margin)
