"""UBW-P's untargeted (dispersibility) test: value against scipy on fixed vectors, size by
simulation under its null.

Breakage guarded: arguments swapped (testing P_p - P_b), the margin added on the wrong side,
the two-sided alternative, or a test whose size exceeds alpha.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medmark.verify import dispersibility, untargeted_test

P_B = np.array([0.91, 0.84, 0.77, 0.95, 0.66, 0.88, 0.72, 0.81, 0.93, 0.69])
P_P = np.array([0.31, 0.52, 0.18, 0.47, 0.35, 0.22, 0.41, 0.29, 0.55, 0.12])


def test_statistic_and_p_match_scipy_on_fixed_vectors() -> None:
    tau = 0.2
    r = untargeted_test(P_B, P_P, tau=tau, alpha=0.01)
    d = P_B - P_P - tau
    t_direct = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    p_direct = stats.t.sf(t_direct, df=len(d) - 1)
    ref = stats.ttest_rel(P_B, P_P + tau, alternative="greater")
    assert r.statistic == pytest.approx(t_direct, rel=1e-12)
    assert r.statistic == pytest.approx(float(ref.statistic), rel=1e-12)
    assert r.p_value == pytest.approx(p_direct, rel=1e-9)
    assert r.log10_p == pytest.approx(np.log10(p_direct), rel=1e-9)
    assert r.test == "untargeted_paired_t" and r.significant and r.df == len(d) - 1
    # the other direction (marked images *more* confidently true) is not evidence
    rev = untargeted_test(P_P, P_B, tau=tau, alpha=0.01)
    assert rev.p_value > 0.99 and not rev.significant


def test_size_under_the_null_boundary_is_alpha() -> None:
    """At the boundary of H0 (mean(P_b - P_p) = tau) the test rejects at rate ~alpha."""
    rng = np.random.default_rng(0)
    alpha, tau, m, n_sim = 0.05, 0.2, 30, 2000
    rejections = 0
    for _ in range(n_sim):
        p_p = rng.uniform(0.2, 0.6, m)
        p_b = p_p + tau + rng.normal(0.0, 0.08, m)
        rejections += untargeted_test(p_b, p_p, tau=tau, alpha=alpha).significant
    rate = rejections / n_sim
    lo, hi = stats.binom.ppf([0.0005, 0.9995], n_sim, alpha) / n_sim
    assert lo <= rate <= hi, rate


def test_dispersibility_counts_changed_predictions() -> None:
    assert dispersibility([0, 1, 1, 0], [1, 1, 0, 0]) == 0.5
    with pytest.raises(ValueError):
        dispersibility([0, 1], [0])
