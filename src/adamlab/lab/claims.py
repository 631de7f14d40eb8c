"""The claims ledger: every claim of the optimizers' papers under test, what was measured, and a verdict
computed from the data.

Verdict rules (stated with each row): for a directional claim "A is better than B by at least δ", with the
95 % Welch CI [lo, hi] of the improvement: *supported* when lo > 0, *not supported* when hi < δ (the claimed
effect is ruled out, including A being significantly worse), *inconclusive* otherwise. Rows that combine
several comparisons count them: supported if most are supported and none contradict it, not supported if
most are not supported, inconclusive otherwise. Missing data gives *not tested*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from .analysis import TaskResult, lattice, overhead
from .stats import welch

S, N, I, X = "supported", "not supported", "inconclusive", "not tested"  # noqa: E741 (the verdicts' initials)


@dataclass
class Claim:
    seed: str
    claim: str
    measured: str
    verdict: str
    rule: str


def directional(a: list[float], b: list[float], delta: float) -> tuple[str, str]:
    """Improvement = mean(a) - mean(b) (higher is better for the claim)."""
    if len(a) < 2 or len(b) < 2:
        return X, "too few runs"
    c = welch(a, b)
    if not math.isfinite(c.lo):
        v = S if c.diff > delta else N if c.diff < delta else I
        return v, f"{c.diff:+.3g} (no spread)"
    v = S if c.lo > 0 else N if c.hi < delta else I
    return v, f"{c.diff:+.3g} [{c.lo:+.3g}, {c.hi:+.3g}]"


def combine(parts: list[tuple[str, str]]) -> tuple[str, str]:
    parts = [p for p in parts if p[0] != X]
    if not parts:
        return X, "no task had both optimizers"
    ns, nn = sum(p[0] == S for p in parts), sum(p[0] == N for p in parts)
    ni = len(parts) - ns - nn
    v = S if ns > nn + ni / 2 and nn == 0 else N if nn > ns + ni / 2 else I
    return v, f"{ns} supported / {nn} not / {ni} inconclusive: " + "; ".join(p[1] for p in parts)


def _vals(t: TaskResult, opt: str, what: str) -> list[float]:
    o = t.opts[opt]
    if what == "acc":
        return list(o.accs)
    if what == "-loss":
        return [-x for x in o.losses]
    if what == "-logsharp":
        return [-math.log(max(x, 1e-12)) for x in o.extra("sharpness") if math.isfinite(x)]
    return [float(x) for x in o.extra(what) if x is not None and math.isfinite(x)]


def pairwise(tasks, names, a, b, what, delta, label=None):
    parts = []
    for n in names:
        t = tasks.get(n)
        if t is None or a not in t.opts or b not in t.opts:
            continue
        v, txt = directional(_vals(t, a, what), _vals(t, b, what), delta)
        parts.append((v, f"{label or n} {a} vs {b}: {txt}"))
    return parts


def _late_std(t: TaskResult, opt: str) -> list[float]:
    out = []
    for c in t.opts[opt].curves:
        vals = [v for v in c.get("val_loss", ([], [], []))[2]]
        tail = vals[int(len(vals) * 0.7):]
        out.append(float(np.std(tail)) if len(tail) > 1 and all(map(math.isfinite, tail)) else math.inf)
    return out


def _steps_to_reach(t: TaskResult, opt: str, target: float) -> list[float]:
    from .metrics import steps_to_target
    return [steps_to_target(c["val_loss"][0], c["val_loss"][2], target) for c in t.opts[opt].curves if "val_loss" in c]


def _escape_counts(t: TaskResult, opt: str, key: str) -> tuple[int, int]:
    o = t.opts[opt]
    vals = [r["extra"].get(key) for r in o.runs + o.tune]
    vals = [bool(v) for v in vals if v is not None]
    return sum(vals), len(vals)


def ledger(tasks: dict[str, TaskResult]) -> list[Claim]:
    nn_tasks = [n for n, t in tasks.items() if t.family in ("vision", "lm")]
    vision = [n for n, t in tasks.items() if t.family == "vision"]
    cnn = "cifar10_cnn" if "cifar10_cnn" in tasks else "digits_cnn"
    lm = [n for n in ("char_gpt", "word_lm") if n in tasks]
    rows: list[Claim] = []
    dir_rule = "Welch 95 % CI of the improvement: lo > 0 supported; hi < δ not supported; else inconclusive"

    v, m = combine(pairwise(tasks, [cnn], "exadam", "adam", "acc", 0.0117))
    rows.append(Claim("EXAdam", f"higher test accuracy than Adam on a CNN (paper: +1.17 pt on CIFAR-10); here {cnn}",
                      m, v, dir_rule + " (δ = 1.17 pt)"))
    faster = []
    for t in tasks.values():
        if "exadam" in t.opts and "adam" in t.opts:
            a, b = t.opts["exadam"].steps_to_target, t.opts["adam"].steps_to_target
            if math.isfinite(a) or math.isfinite(b):
                faster.append(a < b if a != b else None)
    wins, losses = sum(f is True for f in faster), sum(f is False for f in faster)
    if wins + losses == 0:
        v, m = X, "no task reached the target"
    else:
        p = st.binomtest(wins, wins + losses, 0.5).pvalue
        v = S if wins > losses and p < 0.05 else N if wins <= losses else I
        m = f"EXAdam reached the target first on {wins} tasks, Adam on {losses} (sign test p = {p:.2g})"
    rows.append(Claim("EXAdam", "faster convergence than Adam (steps to target)", m, v,
                      "sign test over tasks: p < 0.05 in favour supported; not faster on most tasks not supported"))
    v, m = combine(_competitive(tasks, "char_gpt", "exadam", "adam"))
    rows.append(Claim("EXAdam", "competitive with Adam on char-level GPT/Shakespeare", m, v,
                      "held-out loss worse by < 2 % of Adam's (95 % CI) supported; worse by > 2 % not supported"))
    rows.append(_overhead_claim(tasks))

    parts = [p for b in ("adam", "adamw") for p in pairwise(tasks, vision, "adamx", b, "acc", 0.005)]
    v, m = combine(parts)
    rows.append(Claim("AdamX", "better final accuracy than Adam/AdamW", m, v, dir_rule + " (δ = 0.5 pt)"))
    parts = []
    for n in nn_tasks:
        t = tasks[n]
        for b in ("adam", "adamw"):
            if "adamx" in t.opts and b in t.opts:
                x = directional([-s for s in _late_std(t, "adamx")], [-s for s in _late_std(t, b)], 0.0)
                parts.append((x[0], f"{n} vs {b}: {x[1]}"))
    v, m = combine(parts)
    rows.append(Claim("AdamX", "stabler late training (std of held-out loss over the last 30 % of training)", m, v,
                      dir_rule + " (δ = 0)"))
    v, m = combine([p for b in ("adam", "adamw") for p in pairwise(tasks, nn_tasks, "adamx", b, "-logsharp", 0.0)])
    rows.append(Claim("AdamX", "flatter minima (lower top Hessian eigenvalue, compared in log)", m, v, dir_rule + " (δ = 0)"))

    rows.append(_ademamix_speed(tasks, lm))
    v, m = combine(pairwise(tasks, ["char_gpt"], "ademamix", "adamw", "retention", 0.0))
    rows.append(Claim("AdEMAMix", "forgets training data more slowly (char GPT: loss gap between an unseen batch and "
                      "the batch trained on at 10 % of training, at the end)", m, v, dir_rule + " (δ = 0)"))

    rows.append(_escape_claim(tasks))
    v, m = combine(pairwise(tasks, nn_tasks, "adamcm", "adam", "-logsharp", 0.0))
    rows.append(Claim("AdamCM", "flatter solutions than Adam (top Hessian eigenvalue, log)", m, v, dir_rule + " (δ = 0)"))
    parts = [p for b in ("adam", "adamcg") for p in pairwise(tasks, vision, "adamcm", b, "acc", 0.0)]
    parts += [p for b in ("adam", "adamcg") for p in pairwise(tasks, lm, "adamcm", b, "-loss", 0.0)]
    v, m = combine(parts)
    rows.append(Claim("AdamCM", "better accuracy (vision) / loss (LM) than Adam and Adam+CG", m, v, dir_rule + " (δ = 0)"))

    for key, label, sign, delta in (("isotropy", "more isotropic embeddings (paper: Iso 0.10 → 0.83)", 1, 0.05),
                                    ("mean_embedding_ratio", "mean-embedding ratio nearer 0", -1, 0.05)):
        parts = []
        for b in ("adamw", "adam"):
            for n in lm:
                t = tasks[n]
                a_, b_ = (_vals(t, o, key) if o in t.opts else [] for o in ("coupledadam", b))
                if a_ and b_:
                    x = directional([sign * y for y in a_], [sign * y for y in b_], delta)
                    parts.append((x[0], f"{n} vs {b}: {np.mean(a_):.3g} vs {np.mean(b_):.3g}, improvement {x[1]}"))
        v, m = combine(parts)
        rows.append(Claim("Coupled Adam", label, m, v, dir_rule + f" (δ = {delta})"))
    v, m = combine(pairwise(tasks, lm, "coupledadam", "adamw", "-loss", 0.0))
    rows.append(Claim("Coupled Adam", "slightly lower loss than AdamW", m, v, dir_rule + " (δ = 0)"))

    lat = lattice(tasks)
    bad = [r for r in lat if r["status"] == "VIOLATION"]
    v = X if not lat else (N if bad else S)
    m = (f"{len(lat)} (pair, task) comparisons, {len(bad)} violations after Holm correction"
         + (": " + "; ".join(f"{r['special']} beat {r['general']} on {r['task']}" for r in bad[:6]) if bad else ""))
    rows.append(Claim("Notes", "a tuned generalisation never underperforms its specialisation (Choi et al.)", m, v,
                      "Welch test per (pair, task), Holm-corrected p < 0.05 in favour of the specialisation = violation"))
    return rows


def _competitive(tasks, name, a, b):
    t = tasks.get(name)
    if t is None or a not in t.opts or b not in t.opts:
        return []
    ref = abs(t.opts[b].final_loss.mean)
    c = welch(t.opts[a].losses, t.opts[b].losses)  # loss difference, lower is better for a
    margin = 0.02 * ref
    v = S if c.hi < margin else N if c.lo > margin else I
    return [(v, f"{name}: {a} − {b} held-out loss {c.diff:+.3g} [{c.lo:+.3g}, {c.hi:+.3g}], margin {margin:.3g}")]


def _overhead_claim(tasks) -> Claim:
    oh = overhead(tasks, "adam", "step_time").get("exadam")
    rule = "geometric mean over tasks of EXAdam/Adam step time: CI hi ≤ 1.05 supported; CI lo > 1.05 not supported"
    if not oh:
        return Claim("EXAdam", "~2.5 % time overhead over Adam", "no data", X, rule)
    v = S if oh["hi"] <= 1.05 else N if oh["lo"] > 1.05 else I
    return Claim("EXAdam", "~2.5 % time overhead over Adam",
                 f"step time ×{oh['ratio']:.3f} [{oh['lo']:.3f}, {oh['hi']:.3f}] over {oh['n']} tasks", v, rule)


def _ademamix_speed(tasks, lm) -> Claim:
    parts = []
    for n in lm:
        t = tasks[n]
        if "ademamix" not in t.opts or "adamw" not in t.opts:
            continue
        target = t.opts["adamw"].final_loss.mean
        a, b = _steps_to_reach(t, "ademamix", target), _steps_to_reach(t, "adamw", target)
        reached = sum(map(math.isfinite, a))
        ma, mb = (float(np.median(x)) if x else math.inf for x in (a, b))
        ratio = ma / mb if math.isfinite(ma) and mb > 0 else math.inf
        v = S if reached == len(a) and ratio <= 0.8 else N if ratio >= 1.0 or reached * 2 < len(a) else I
        parts.append((v, f"{n}: AdEMAMix reached AdamW's final loss {target:.3g} in {reached}/{len(a)} seeds, "
                         f"median steps {ma:.0f} vs {mb:.0f} (ratio {ratio:.2f})"))
    v, m = combine(parts)
    return Claim("AdEMAMix", "reaches AdamW's loss with far fewer steps (paper: 101B vs 197B tokens)", m, v,
                 "median steps to AdamW's final loss: all seeds reach it and ratio ≤ 0.8 supported; ratio ≥ 1 "
                 "or most seeds never reach it not supported")


def _escape_claim(tasks) -> Claim:
    parts = []
    for n, key in (("sharp_flat", "escaped_sharp"), ("ackley", "reached_global"), ("goldstein_price", "reached_global")):
        t = tasks.get(n)
        if t is None or "adamcm" not in t.opts or "adam" not in t.opts:
            continue
        (ka, na), (kb, nb) = _escape_counts(t, "adamcm", key), _escape_counts(t, "adam", key)
        if not na or not nb:
            continue
        p = st.fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="greater").pvalue
        v = S if p < 0.05 else N if ka / na <= kb / nb else I
        parts.append((v, f"{n}: AdamCM {ka}/{na} vs Adam {kb}/{nb} runs ({key}, tuning trials + seeds; "
                         f"Fisher p = {p:.2g})"))
    v, m = combine(parts)
    return Claim("AdamCM", "escapes sharp minima on toy landscapes (sharp/flat, Ackley, Goldstein-Price)", m, v,
                 "one-sided Fisher exact test on escape counts: p < 0.05 supported; rate not higher than Adam's "
                 "not supported")
