"""Small, honest statistics for the lab: t-intervals, paired and Welch tests, Holm correction, power and
alpha spending over repeated looks.

Everything works on plain sequences (or seed -> value mappings) of floats so it can be tested against scipy
and hand-computed numbers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    lo: float  # 95 % CI (t-distribution), equal to mean when n < 2
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def fmt(self, digits: int = 3) -> str:
        if not math.isfinite(self.mean):
            return "diverged"
        if self.n < 2:
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.half_width:.2g}"


def mean_ci(xs: Sequence[float], level: float = 0.95) -> Summary:
    """Mean and two-sided `level` confidence interval from the t-distribution (n-1 dof)."""
    a = np.asarray([float(x) for x in xs], dtype=float)
    n = a.size
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan)
    m = float(a.mean())
    if n < 2 or not np.all(np.isfinite(a)):
        return Summary(n, m, float("nan"), m, m)
    s = float(a.std(ddof=1))
    h = float(_st.t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)
    return Summary(n, m, s, m - h, m + h)


@dataclass(frozen=True)
class Comparison:
    """A test of mean(a) - mean(b): Welch's unequal-variance t-test, or (from `paired`) a paired one."""

    diff: float
    lo: float  # CI of the difference at the level asked for (95 % unless told)
    hi: float
    p: float
    n_a: int
    n_b: int
    n: int = 0  # pairs (seeds common to both); 0 for Welch
    sd: float = math.nan  # sd of the paired differences (ddof 1); nan for Welch
    method: str = "Welch"


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Comparison:
    a = np.asarray(list(a), dtype=float)
    b = np.asarray(list(b), dtype=float)
    with np.errstate(invalid="ignore"):  # inf - inf (both diverged everywhere): nan, said by the result
        diff = float(a.mean() - b.mean()) if a.size and b.size else float("nan")
    if a.size < 2 or b.size < 2 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return Comparison(diff, float("nan"), float("nan"), float("nan"), a.size, b.size)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        p = 1.0 if diff == 0 else 0.0
        return Comparison(diff, diff, diff, p, a.size, b.size)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    t = diff / se
    p = float(2 * _st.t.sf(abs(t), dof))
    h = float(_st.t.ppf(0.5 + level / 2, dof)) * se
    return Comparison(diff, diff - h, diff + h, p, a.size, b.size)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def geometric_mean(xs: Sequence[float]) -> float:
    a = np.asarray([x for x in xs if x > 0 and math.isfinite(x)], dtype=float)
    return float(np.exp(np.log(a).mean())) if a.size else float("nan")


BOOTSTRAP_MIN_PAIRS = 10  # below this a resampling distribution has too few distinct resamples to trust
BOOTSTRAP_RESAMPLES = 9999


def heavy_tailed(d: Sequence[float]) -> bool:
    """Whether paired differences call for a bootstrap CI instead of the paired t one.

    Rule: at least BOOTSTRAP_MIN_PAIRS differences, and an outlier among them: some |d_i - median| > 3.5 x
    1.4826 x MAD (a robust z-score above 3.5, Iglewicz & Hoaglin), or Shapiro-Wilk rejects normality at
    p < 0.01. With fewer pairs (the lab's usual 3 seeds) neither the check nor a bootstrap means anything,
    and the t interval is kept: its coverage is exact for normal differences and near it for mild tails.
    """
    x = np.asarray(d, dtype=float)
    if x.size < BOOTSTRAP_MIN_PAIRS or not np.all(np.isfinite(x)):
        return False
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    if mad > 0 and np.max(np.abs(x - med)) / mad > 3.5:
        return True
    return bool(np.ptp(x) > 0 and _st.shapiro(x).pvalue < 0.01)


def _seeded(v: Mapping | Sequence) -> dict:
    return dict(v) if isinstance(v, Mapping) else {("#", i): x for i, x in enumerate(v)}


def paired(a: Mapping | Sequence[float], b: Mapping | Sequence[float], level: float = 0.95,
           seed: int = 0) -> Comparison:
    """Paired comparison of a - b over the seeds common to both (mappings seed -> value; sequences pair by
    position).

    With d_i = a_i - b_i over the n common seeds, mean d̄ and sd s: t = d̄ / (s/√n) on n - 1 dof, the
    two-sided p and the CI d̄ ± t_{(1+level)/2, n-1} s/√n (as scipy.stats.ttest_rel). When `heavy_tailed(d)`
    the CI is a BCa bootstrap of the mean difference (pairs resampled together, `seed` fixes the draws) and
    p is the Wilcoxon signed-rank test's. With fewer than 2 common seeds it falls back to Welch over all
    values, and `method` says so.
    """
    da, db = _seeded(a), _seeded(b)
    common = [k for k in da if k in db]
    if len(common) < 2:
        c = welch(list(da.values()), list(db.values()), level)
        return Comparison(c.diff, c.lo, c.hi, c.p, c.n_a, c.n_b, len(common), math.nan,
                          f"Welch ({len(common)} common seed{'s' * (len(common) != 1)})")
    d = np.asarray([float(da[k]) - float(db[k]) for k in common], dtype=float)
    n, na, nb = d.size, len(da), len(db)
    with np.errstate(invalid="ignore"):
        diff = float(d.mean())
    if not np.all(np.isfinite(d)):
        return Comparison(diff, math.nan, math.nan, math.nan, na, nb, n, math.nan, "paired t")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return Comparison(diff, diff, diff, 1.0 if diff == 0 else 0.0, na, nb, n, 0.0, "paired t")
    if heavy_tailed(d):
        res = _st.bootstrap((d,), np.mean, confidence_level=level, n_resamples=BOOTSTRAP_RESAMPLES,
                            method="BCa", random_state=np.random.default_rng(seed))
        p = float(_st.wilcoxon(d).pvalue)
        ci = res.confidence_interval
        return Comparison(diff, float(ci.low), float(ci.high), p, na, nb, n, sd, "bootstrap BCa")
    se = sd / math.sqrt(n)
    p = float(2 * _st.t.sf(abs(diff) / se, n - 1))
    h = float(_st.t.ppf(0.5 + level / 2, n - 1)) * se
    return Comparison(diff, diff - h, diff + h, p, na, nb, n, sd, "paired t")


def paired_power(effect: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level alpha with n pairs when the true mean difference is
    `effect`: with T ~ noncentral t(n - 1 dof, noncentrality effect·√n/sd) and c = t_{1-alpha/2, n-1},
    power = P(T > c) + P(T < -c)."""
    if n < 2 or not (sd_diff > 0):
        return math.nan
    df, nc = n - 1, abs(effect) * math.sqrt(n) / sd_diff  # the power is symmetric in the effect's sign
    c = float(_st.t.ppf(1 - alpha / 2, df))
    far = float(_st.nct.cdf(-c, df, nc))  # the wrong-side tail; scipy gives nan once it underflows
    return float(_st.nct.sf(c, df, nc)) + (far if math.isfinite(far) else 0.0)


def mde(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect: the smallest true mean difference δ > 0 that the two-sided paired t-test
    at level alpha with n pairs detects with probability `power`, solving paired_power(δ) = power exactly on
    the noncentral t (no normal approximation). inf with fewer than 2 pairs, 0 when the differences do
    not vary, nan when sd_diff is not finite."""
    if n < 2:
        return math.inf
    if not math.isfinite(sd_diff):
        return math.nan
    if sd_diff <= 0:
        return 0.0
    from scipy.optimize import brentq

    hi = 1.0
    while paired_power(hi, 1.0, n, alpha) < power:
        hi *= 2
    return sd_diff * float(brentq(lambda e: paired_power(e, 1.0, n, alpha) - power, 0.0, hi, xtol=1e-12, rtol=1e-12))


def seeds_needed(effect: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8,
                 max_n: int = 1_000_000) -> float:
    """The smallest n ≥ 2 for which the two-sided paired t-test at level alpha has power ≥ power against a
    true mean difference `effect` with differences of sd `sd_diff` (the noncentral-t power, increasing in
    n). inf when effect is 0 or not finite or more than max_n would be needed; nan when sd_diff is not."""
    if not math.isfinite(sd_diff):
        return math.nan
    if not math.isfinite(effect) or effect == 0:
        return math.inf
    if sd_diff <= 0:
        return 2
    lo, hi = 1, 2  # power(lo) < power (or lo < 2), power(hi) unknown
    while paired_power(effect, sd_diff, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > max_n:
            return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if paired_power(effect, sd_diff, mid, alpha) >= power else (mid, hi)
    return hi


def look_alpha(alpha: float, look: int, max_looks: int) -> float:
    """The level every test may use at look `look` (1-based) of at most `max_looks` looks: alpha/K
    (Bonferroni alpha spending, the same at every look).

    Each comparison is tested at most K times at alpha/K, so by the union bound the probability of any
    false rejection over all K looks is at most alpha, whatever the correlation between looks. A constant
    level rather than a spending function (Pocock, O'Brien-Fleming) whose increments change from look to
    look: the ledger re-tests every comparison at the latest look, including those whose seeds stopped
    growing at an earlier look because they were already decided, and with a constant level a decided
    comparison stays decided. (O'Brien-Fleming's ~1e-5 at the first of 5 looks could also never decide
    anything with the lab's first 3 seeds.) K = 1 gives alpha; `look` is accepted for the interface and
    checked to lie in 1..K."""
    k = max(int(max_looks), 1)
    if not 1 <= int(look) <= k:
        raise ValueError(f"look {look} is not in 1..{k}")
    return alpha / k


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Per-comparison levels of Holm's step-down procedure: sorted by p, the r-th (0-based) of m is tested
    at alpha/(m - r) while all before it were rejected; from the first one not rejected on, every later
    comparison keeps that step's level. A comparison is rejected exactly when its p is below its level (the
    same as holm(p) < alpha), so a (1 - level) CI excluding 0 agrees with Holm. NaN p gets alpha/m."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    m = len(idx)
    out = [alpha / max(m, 1)] * len(pvalues)
    level, stopped = alpha / max(m, 1), False
    for r, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        if not stopped:
            level = alpha / (m - r)
            stopped = not pvalues[i] < level
        out[i] = level
    return out
