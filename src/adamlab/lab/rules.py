"""Verdict rules of the claims ledger, and the rows they fill.

A claim "A is better than B by at least δ" (δ = the paper's stated effect, 0 where it only says "better")
is tested per (task, comparator) on the final runs, paired by seed (`stats.paired`, 95 % CI unless
corrected): with [lo, hi] the CI of the improvement A - B,

* *supported* when lo > 0,
* *not supported* when hi < δ (the claimed effect is ruled out; for δ = 0 the CI lies on the wrong side),
* *inconclusive* otherwise.

A row that combines m comparisons corrects them with Holm: the comparisons get the step-down levels of
`stats.holm_levels` and each CI is taken at 1 - its level. With repeated looks (`--until-decided`) the
family's alpha is the look's spent alpha (`stats.look_alpha`). Beside the effect: the minimum detectable
effect of the test as run (`stats.mde`, 80 % power at the comparison's level) and the seeds that would
detect the claimed effect (or, with no stated effect, the observed one) with 80 % power. The parts of a row
are combined: supported if most are supported and none contradicts it, not supported if most are not,
inconclusive otherwise; comparisons that could not run are listed as not tested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .stats import Comparison, holm_levels, mde, paired, seeds_needed

S, N, I, X = "supported", "not supported", "inconclusive", "not tested"  # noqa: E741 (the verdicts' initials)
NAN = math.nan


@dataclass
class Claim:
    """One row of the ledger. effect/lo/hi/mde/seeds_needed belong to the row's primary comparison (the
    first tested: the headline task against the first comparator); `measured` lists every comparison."""

    seed: str
    claim: str
    protocol: str = "tuned"
    comparators: list[str] = field(default_factory=list)
    effect: float = NAN
    lo: float = NAN
    hi: float = NAN
    mde: float = NAN
    seeds_needed: float = NAN
    verdict: str = X
    rule: str = ""
    measured: str = ""
    claimed: float | None = None  # the paper's stated effect, in the row's units
    level: float = 0.95  # confidence level of [lo, hi]


@dataclass
class Part:
    """One comparison of a row: improvement of `a` over `b` on `task` (values keyed by seed)."""

    task: str
    a: str
    b: str
    va: dict
    vb: dict
    delta: float = 0.0
    label: str = ""
    show_means: float = 0.0  # ±1: show the two means (times this sign, undoing a flip to higher-is-better)
    comp: Comparison | None = None
    level: float = 0.95
    verdict: str = X
    mde: float = NAN
    seeds: float = NAN
    text: str = ""


def _fmt_ci(c: Comparison) -> str:
    return f"{c.diff:+.3g} [{c.lo:+.3g}, {c.hi:+.3g}]"


def decide(c: Comparison, delta: float) -> str:
    """The verdict of one comparison from its CI (see the module docstring)."""
    if c.n_a < 2 or c.n_b < 2:
        return X
    if not (math.isfinite(c.lo) and math.isfinite(c.hi)):  # a non-finite value on some seed: no CI, the sign
        return S if c.diff > max(delta, 0.0) else N if c.diff < delta else I  # of the difference decides
    return S if c.lo > 0 else N if c.hi < delta else I


def evaluate(parts: list[Part], alpha: float = 0.05, claimed: float | None = None) -> list[Part]:
    """Fill in each part's verdict at its Holm level within the row (family alpha = `alpha`)."""
    first = [paired(p.va, p.vb) for p in parts]
    levels = holm_levels([c.p for c in first], alpha) if len(parts) > 1 else [alpha] * len(parts)
    for p, lv in zip(parts, levels):
        c = paired(p.va, p.vb, level=1 - lv)
        p.comp, p.level, p.verdict = c, 1 - lv, decide(c, p.delta)
        p.mde = mde(c.sd, c.n, alpha=lv) if c.n >= 2 else NAN
        want = claimed if claimed else abs(c.diff)
        p.seeds = seeds_needed(want, c.sd, alpha=lv) if c.n >= 2 and math.isfinite(want) else NAN
        if p.verdict == X:
            p.text = f"{p.label or p.task} {p.a} vs {p.b}: too few runs"
            continue
        means = ""
        if p.show_means:
            ma, mb = (p.show_means * sum(v.values()) / len(v) for v in (p.va, p.vb))
            means = f"{ma:.3g} vs {mb:.3g}, improvement "
        how = c.method if c.method.startswith("Welch") else f"{c.method}, n = {c.n}"
        if not (math.isfinite(c.lo) and math.isfinite(c.hi)):
            p.text = f"{p.label or p.task} {p.a} vs {p.b}: {means}{c.diff:+.3g} (no finite CI; {how})"
            continue
        p.text = (f"{p.label or p.task} {p.a} vs {p.b}: {means}{_fmt_ci(c)} ({how}, {100 * p.level:.3g} % CI, "
                  f"MDE {p.mde:.2g})")
    return parts


def combine(parts: list[tuple[str, str]]) -> tuple[str, str]:
    """Majority rule over (verdict, text) parts; not-tested parts do not count."""
    parts = [p for p in parts if p[0] != X]
    if not parts:
        return X, "no task had both optimizers"
    ns, nn = sum(p[0] == S for p in parts), sum(p[0] == N for p in parts)
    ni = len(parts) - ns - nn
    v = S if ns > nn + ni / 2 and nn == 0 else N if nn > ns + ni / 2 else I
    return v, f"{ns} supported / {nn} not / {ni} inconclusive: " + "; ".join(p[1] for p in parts)


def _fmt_n(n: float) -> str:
    return f"{n:.0f}" if math.isfinite(n) else "more than 10⁶"


def row(seed: str, claim: str, parts: list[Part], comparators: list[str], rule: str, *, missing=(),
        claimed: float | None = None, alpha: float = 0.05, protocol: str = "tuned") -> Claim:
    """A ledger row from its comparisons: verdicts, the primary comparison's numbers, the power note, and
    the comparators that had no runs ("not tested: no runs of X")."""
    evaluate(parts, alpha, claimed)
    v, m = combine([(p.verdict, p.text) for p in parts])
    tested = [p for p in parts if p.comp is not None and p.verdict != X]
    out = Claim(seed, claim, protocol, list(comparators), verdict=v, rule=rule, measured=m, claimed=claimed)
    if tested:
        p0 = tested[0]
        out.effect, out.lo, out.hi, out.level = p0.comp.diff, p0.comp.lo, p0.comp.hi, p0.level
        out.mde, out.seeds_needed = p0.mde, p0.seeds
        if v == I:
            target = claimed if claimed else abs(p0.comp.diff)
            if math.isfinite(p0.mde) and p0.mde > target:
                what = "the claimed effect" if claimed else "the observed effect"
                out.measured += f". Underpowered: needs ~{_fmt_n(p0.seeds)} seeds to detect {what}"
    if missing:
        out.measured += (". " if out.measured else "") + "; ".join(f"not tested: no runs of {x}" for x in missing)
        if tested:
            out.measured += " (the verdict covers only the comparisons above)"
    return out
