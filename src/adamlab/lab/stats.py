"""Small, honest statistics for the lab: t-intervals, Welch tests, Holm correction.

Everything works on plain sequences of floats so it can be tested against hand-computed numbers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
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
    """Welch's unequal-variance t-test of mean(a) - mean(b)."""

    diff: float
    lo: float  # 95 % CI of the difference (Welch–Satterthwaite dof)
    hi: float
    p: float
    n_a: int
    n_b: int


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Comparison:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
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
