"""Paired tests, power and repeated looks, checked against scipy and simulation on synthetic data."""
import math

import numpy as np
import pytest
from scipy import stats as st

from adamlab.lab.stats import (
    heavy_tailed,
    holm,
    holm_levels,
    look_alpha,
    mde,
    paired,
    paired_power,
    seeds_needed,
    welch,
)


def test_paired_matches_scipy_ttest_rel_and_its_ci():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, 7)
    b = a - 0.3 + rng.normal(0, 0.2, 7)
    c = paired(dict(zip(range(7), a)), dict(zip(range(7), b)))
    ref = st.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert c.method == "paired t" and c.n == 7
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (c.lo, c.hi) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.diff == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    assert c.sd == pytest.approx(float(np.std(a - b, ddof=1)), rel=1e-12)
    ci90 = ref.confidence_interval(0.9)
    c90 = paired(list(a), list(b), level=0.9)
    assert (c90.lo, c90.hi) == pytest.approx((ci90.low, ci90.high), rel=1e-10)


def test_paired_aligns_by_seed_and_falls_back_to_welch():
    a = {1000: 1.0, 1001: 2.0, 1002: 4.0, 1003: 9.0}
    b = {1002: 3.5, 1000: 0.5, 1001: 1.0}  # order differs; 1003 has no partner
    c = paired(a, b)
    ref = st.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 3.5])
    assert c.n == 3 and c.p == pytest.approx(ref.pvalue, rel=1e-10) and c.diff == pytest.approx(2 / 3)
    one = paired({1000: 1.0, 1001: 2.0, 1002: 3.0}, {1000: 0.0, 5: 1.0, 6: 2.0})
    w = welch([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert one.method.startswith("Welch") and "1 common seed" in one.method
    assert (one.p, one.lo, one.hi) == pytest.approx((w.p, w.lo, w.hi))


def test_paired_beats_welch_when_seeds_share_variance():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 1.0, 5)  # the seed moves both optimizers alike
    a = seed_effect + 0.2 + rng.normal(0, 0.05, 5)
    b = seed_effect + rng.normal(0, 0.05, 5)
    p, w = paired(list(a), list(b)), welch(a, b)
    assert (p.hi - p.lo) < 0.2 * (w.hi - w.lo)
    assert p.lo > 0 and w.lo < 0  # only pairing sees the effect


def test_heavy_tailed_differences_get_a_seeded_bca_bootstrap():
    rng = np.random.default_rng(2)
    d = rng.normal(0.5, 0.1, 12)
    d[3] = 6.0  # one wild seed
    assert heavy_tailed(d) and not heavy_tailed(d[:5]) and not heavy_tailed(rng.normal(0, 1, 12))
    c = paired(list(d), [0.0] * 12)
    ref = st.bootstrap((d,), np.mean, method="BCa", n_resamples=9999,
                       random_state=np.random.default_rng(0)).confidence_interval
    assert c.method == "bootstrap BCa"
    assert (c.lo, c.hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert c.p == pytest.approx(st.wilcoxon(d).pvalue)
    assert c == paired(list(d), [0.0] * 12)  # seeded: the same every time


def _power_formula(effect, sd, n, alpha=0.05):
    df, nc = n - 1, effect * math.sqrt(n) / sd
    c = st.t.ppf(1 - alpha / 2, df)
    return st.nct.sf(c, df, nc) + st.nct.cdf(-c, df, nc)


def test_mde_rejects_in_80_percent_of_simulated_draws():
    sd, n, draws = 0.7, 6, 4000
    delta = mde(sd, n)
    assert paired_power(delta, sd, n) == pytest.approx(0.8, abs=1e-9)
    # the exact noncentral t needs more than the normal approximation (z_.975 + z_.8) sd/√n
    assert delta > (1.959964 + 0.841621) * sd / math.sqrt(n)
    d = np.random.default_rng(3).normal(delta, sd, (draws, n))
    p = st.ttest_1samp(d, 0.0, axis=1).pvalue
    mc = 3 * math.sqrt(0.8 * 0.2 / draws)
    assert abs(float(np.mean(p < 0.05)) - 0.8) < mc
    assert mde(sd, 1) == math.inf and mde(0.0, 3) == 0.0 and mde(1.0, 30) < mde(1.0, 3)


@pytest.mark.parametrize("effect,sd", [(0.0117, 0.01), (0.005, 0.02), (0.73, 0.3), (1.0, 5.0)])
def test_seeds_needed_is_the_smallest_n_with_enough_power(effect, sd):
    n = seeds_needed(effect, sd)
    assert _power_formula(effect, sd, n) >= 0.8
    assert n == 2 or _power_formula(effect, sd, n - 1) < 0.8
    assert mde(sd, n) <= effect < (mde(sd, n - 1) if n > 2 else math.inf)
    assert seeds_needed(0.0, sd) == math.inf and seeds_needed(-effect, sd) == n


def test_look_alpha_spends_alpha_over_the_looks():
    assert look_alpha(0.05, 1, 1) == 0.05
    levels = [look_alpha(0.05, k, 5) for k in range(1, 6)]
    assert sum(levels) == pytest.approx(0.05, rel=1e-12)
    assert levels == [0.01] * 5  # constant: a comparison decided at an early look stays decided later
    with pytest.raises(ValueError):
        look_alpha(0.05, 6, 5)


def _sequential(effect, rounds=5, per_round=3, draws=4000, seed=4, naive=False):
    """Fraction of simulated experiments rejecting at some look: seeds added `per_round` at a time."""
    d = np.random.default_rng(seed).normal(effect, 1.0, (draws, rounds * per_round))
    hit = np.zeros(draws, bool)
    for k in range(1, rounds + 1):
        p = st.ttest_1samp(d[:, :k * per_round], 0.0, axis=1).pvalue
        hit |= p < (0.05 if naive else look_alpha(0.05, k, rounds))
    return float(hit.mean())


def test_repeated_looks_keep_the_false_positive_rate_where_naive_looks_do_not():
    mc = 3 * math.sqrt(0.05 * 0.95 / 4000)
    assert _sequential(0.0) <= 0.05 + mc
    assert _sequential(0.0, naive=True) > 0.05 + 2 * mc  # peeking at 5 % every look: ~0.12


def test_repeated_looks_find_a_known_effect_at_least_at_the_stated_rate():
    # rejecting at any look is at least as likely as rejecting at the last look at that look's level
    effect = 1.0
    floor = _power_formula(effect, 1.0, 15, look_alpha(0.05, 5, 5))
    got = _sequential(effect)
    assert got >= floor - 3 * math.sqrt(floor * (1 - floor) / 4000)
    assert got <= _power_formula(effect, 1.0, 15) + 3 * math.sqrt(0.25 / 4000)  # no better than one look at 5 %


def test_holm_levels_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (α/4 = .0125, rejected), 0.01 (α/3 = .0167, rejected), 0.03 (α/2 = .025, stops), 0.04 (.025)
    assert holm_levels(p) == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
    rejected = [pi < lv for pi, lv in zip(p, holm_levels(p))]
    assert rejected == [a < 0.05 for a in holm(p)] == [True, False, False, True]
    assert holm_levels([0.2, float("nan")]) == pytest.approx([0.05, 0.05])


def _opt(name, losses, seeds=(1000, 1001, 1002, 1003), extra=None):
    from adamlab.lab.analysis import OptResult

    runs = [{"seed": s, "initial_val_loss": 2.0, "final_val_loss": x, "best_val_loss": x, "diverged": False,
             "final_val_acc": None, "step_time": None, "opt_step_time": None, "extra": dict(extra or {})}
            for s, x in zip(seeds, losses)]
    return OptResult(name, runs, [{} for _ in runs], [], 0, {})


def test_by_seed_keys_values_by_seed():
    o = _opt("adam", [1.0, 2.0, 3.0], seeds=(1002, 1000, 1001))
    o.losses = [1.0, 2.0, 3.0]
    assert o.by_seed() == {1002: 1.0, 1000: 2.0, 1001: 3.0}
    o.runs[0]["extra"]["isotropy"], o.runs[1]["extra"]["isotropy"] = 0.5, float("nan")
    assert o.by_seed("isotropy") == {1002: 0.5}
    o.runs = []  # no seeds known: keys that never pair with another optimizer's
    assert paired(o.by_seed(), {0: 1.0, 1: 2.0, 2: 3.0}).method.startswith("Welch")


def test_top_group_and_lattice_pair_by_seed():
    from adamlab.lab.analysis import TaskResult, _summarise, lattice

    seed_shift = [0.0, 0.5, -0.4, 0.3]  # shared by both optimizers
    adam = _opt("adam", [1.0 + s for s in seed_shift])
    adamw = _opt("adamw", [1.02 + s + e for s, e in zip(seed_shift, [0.001, -0.001, 0.0, 0.002])])
    t = TaskResult("t", "", "landscape", False, 10, {"adam": adam, "adamw": adamw})
    _summarise(t)
    assert welch(adamw.losses, adam.losses).p > 0.5  # unpaired, the 2 % gap drowns in the seed spread
    assert t.top_group == {"adam"}  # paired, adamw is significantly worse on every seed
    (r,) = lattice({"t": t})
    assert r["method"] == "paired t" and r["n"] == 4 and r["status"] == "VIOLATION"
