"""The claims ledger: every claim of the optimizers' papers under test, what was measured, and a verdict
computed from the data.

Comparisons of two optimizers' final runs are paired by seed (every optimizer's final runs use the same
seeds); the verdict rules are in `rules` (supported: CI of the improvement above 0, Holm-corrected within
a row; not supported: CI below the claimed effect δ; inconclusive otherwise, with the minimum detectable
effect and the seeds that would decide). With repeated looks (`ledger(tasks, looks, max_looks)`) every
test of a row runs at the look's spent alpha. Missing data gives *not tested*.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

from .analysis import OptResult, TaskResult, lattice, overhead
from .rules import Claim, I, N, Part, S, X, combine, evaluate, row  # noqa: E741, F401 (re-exported)
from .stats import look_alpha, mde, paired, seeds_needed

ALPHA = 0.05
DIR_RULE = ("paired CI of the improvement (95 %, Holm-corrected within the row): lo > 0 supported; hi < δ not "
            "supported; else inconclusive")


def directional(a, b, delta: float) -> tuple[str, str]:
    """Verdict and text for improvement = a - b, paired by seed (mappings) or position (sequences)."""
    if len(a) < 2 or len(b) < 2:
        return X, "too few runs"
    da = dict(a) if isinstance(a, dict) else dict(enumerate(a))
    db = dict(b) if isinstance(b, dict) else dict(enumerate(b))
    p = evaluate([Part("", "a", "b", da, db, delta)], ALPHA)[0]
    return p.verdict, p.text.split(": ", 1)[1]


def _vals(t: TaskResult, opt: str, what: str) -> dict:
    """Values of `opt`'s final runs on `t`, keyed by seed, signed so that higher is better for a claim."""
    o = t.opts[opt]
    if what == "-logsharp":
        return {k: -math.log(max(x, 1e-12)) for k, x in o.by_seed("sharpness").items()}
    if what == "-latestd":
        return {k: -x for k, x in _late_std(o).items()}
    if what.startswith("-"):
        return {k: -x for k, x in _vals(t, opt, what[1:]).items()}
    return o.by_seed(what)  # "loss", "acc" or a key of the runs' extras


def _missing(tasks, names, opts) -> list[str]:
    return [o for o in opts if not any(o in tasks[n].opts for n in names if n in tasks)]


def pairwise(tasks, names, a, comparators, what, delta, label=None, deltas=None, show_means=0.0) -> list[Part]:
    """The row's comparisons: `a` against each comparator on each named task where both ran (δ per
    comparator from `deltas`, else `delta`)."""
    parts = []
    for b in comparators:
        for n in names:
            t = tasks.get(n)
            if t is None or a not in t.opts or b not in t.opts:
                continue
            va, vb = _vals(t, a, what), _vals(t, b, what)
            if va and vb:
                parts.append(Part(n, a, b, va, vb, (deltas or {}).get(b, delta), label or n, show_means))
    return parts


def _late_std(o: OptResult) -> dict:
    """Per seed: std of the held-out loss over the last 30 % of training (inf when it is not finite)."""
    out = {}
    for i, (r, c) in enumerate(zip(o.runs, o.curves)):
        vals = list(c.get("val_loss", ([], [], []))[2])
        tail = vals[int(len(vals) * 0.7):]
        key = r.get("seed") if r.get("seed") is not None else ("#", o.name, i)
        out[key] = float(np.std(tail)) if len(tail) > 1 and all(map(math.isfinite, tail)) else math.inf
    return out


def _steps_to_reach(t: TaskResult, opt: str, target: float) -> list[float]:
    from .metrics import steps_to_target
    return [steps_to_target(c["val_loss"][0], c["val_loss"][2], target) for c in t.opts[opt].curves if "val_loss" in c]


def _escape_counts(t: TaskResult, opt: str, key: str) -> tuple[int, int]:
    o = t.opts[opt]
    vals = [r["extra"].get(key) for r in o.runs + o.tune]
    vals = [bool(v) for v in vals if v is not None]
    return sum(vals), len(vals)


def _rows(tasks: dict[str, TaskResult], alpha: float) -> list[tuple[Claim, list[Part]]]:
    nn_tasks = [n for n, t in tasks.items() if t.family in ("vision", "lm")]
    vision = [n for n, t in tasks.items() if t.family == "vision"]
    cnn = "cifar10_cnn" if "cifar10_cnn" in tasks else "digits_cnn"
    lm = [n for n in ("char_gpt", "word_lm") if n in tasks]
    out: list[tuple[Claim, list[Part]]] = []

    def add(seed, claim, names, a, comps, what, delta, rule, claimed=None, deltas=None, show_means=0.0, src=None,
            protocol="tuned"):
        src = tasks if src is None else src
        parts = pairwise(src, names, a, comps, what, delta, deltas=deltas, show_means=show_means)
        miss = _missing(src, names, comps) if any(a in src[n].opts for n in names if n in src) else []
        out.append((row(seed, claim, parts, comps, rule, missing=miss, claimed=claimed, alpha=alpha,
                        protocol=protocol), parts))

    ex = ["adam", "signum", "adafactor", "ademamix"]
    add("EXAdam", f"higher test accuracy than Adam on a CNN (paper: +1.17 pt on CIFAR-10), and than Signum, AdaFactor "
        f"and AdEMAMix; here {cnn}", [cnn], "exadam", ex, "acc", 0.0, DIR_RULE + " (δ = 1.17 pt vs Adam, "
        "0 vs the others)", claimed=0.0117, deltas={"adam": 0.0117})
    out.append((_faster(tasks, alpha), []))
    cl, parts = _competitive(tasks, "char_gpt", "exadam", "adam", alpha)
    out.append((cl, parts))
    out.append((_overhead_claim(tasks), []))

    add("AdamX", "better final accuracy than Adam/AdamW and AdaFactor", vision, "adamx", ["adam", "adamw", "adafactor"],
        "acc", 0.005, DIR_RULE + " (δ = 0.5 pt)", claimed=0.005)
    add("AdamX", "stabler late training than Adam/AdamW and AdaFactor (std of held-out loss over the last 30 % of "
        "training)", nn_tasks, "adamx", ["adam", "adamw", "adafactor"], "-latestd", 0.0, DIR_RULE + " (δ = 0)")
    add("AdamX", "flatter minima than Adam/AdamW and AdaFactor (lower top Hessian eigenvalue, compared in log)", nn_tasks,
        "adamx", ["adam", "adamw", "adafactor"], "-logsharp", 0.0, DIR_RULE + " (δ = 0)")

    out.append((_ademamix_speed(tasks, lm), []))
    add("AdEMAMix", "forgets training data more slowly (char GPT: loss gap between an unseen batch and the batch "
        "trained on at 10 % of training, at the end)", ["char_gpt"], "ademamix", ["adamw"], "retention", 0.0,
        DIR_RULE + " (δ = 0)")

    out.append((_escape_claim(tasks, alpha), []))
    add("AdamCM", "flatter solutions than Adam (top Hessian eigenvalue, log)", nn_tasks, "adamcm", ["adam"],
        "-logsharp", 0.0, DIR_RULE + " (δ = 0)")
    cm = ["adam", "adamcg", "sam"]
    parts = pairwise(tasks, vision, "adamcm", cm, "acc", 0.0) + pairwise(tasks, lm, "adamcm", cm, "-loss", 0.0)
    miss = _missing(tasks, vision + lm, cm) if any("adamcm" in tasks[n].opts for n in vision + lm) else []
    out.append((row("AdamCM", "better accuracy (vision) / loss (LM) than Adam, Adam+CG and Adam+SAM", parts, cm,
                    DIR_RULE + " (δ = 0)", missing=miss, alpha=alpha), parts))

    add("Coupled Adam", "more isotropic embeddings (paper: Iso 0.10 → 0.83)", lm, "coupledadam", ["adamw", "adam"],
        "isotropy", 0.73, DIR_RULE + " (δ = 0.73, the paper's gain)", claimed=0.73, show_means=1)
    add("Coupled Adam", "mean-embedding ratio nearer 0", lm, "coupledadam", ["adamw", "adam"], "-mean_embedding_ratio",
        0.05, DIR_RULE + " (δ = 0.05)", show_means=-1)
    add("Coupled Adam", "slightly lower loss than AdamW", lm, "coupledadam", ["adamw"], "-loss", 0.0,
        DIR_RULE + " (δ = 0)")

    # the papers' own protocols (run beside the tuned one when the bench had them)
    untuned = _view(tasks, "untuned-lr1e-4")
    if untuned:
        add("EXAdam", f"higher test accuracy than Adam with every optimizer at lr 1e-4, untuned (the paper's table: "
            f"+1.17 pt on CIFAR-10), and than Signum, AdaFactor and AdEMAMix; here {cnn}", [cnn], "exadam", ex, "acc",
            0.0, DIR_RULE + " (δ = 1.17 pt vs Adam, 0 vs the others)", claimed=0.0117, deltas={"adam": 0.0117},
            src=untuned, protocol="untuned-lr1e-4")
    for proto in ("ademamix-paper", "ademamix-short"):
        view = _view(tasks, proto, tuned=("adamw",))
        if view:
            cl = _ademamix_speed(view, [n for n in lm if n in view])
            cl.protocol = proto
            out.append((cl, []))
    toy = _view(tasks, "adamcm-toy", tuned=("adam",))
    if toy:
        cl = _escape_claim(toy, alpha, runs="seeds")
        cl.protocol = "adamcm-toy"
        out.append((cl, []))

    lat = lattice(tasks, alpha=alpha)
    bad = [r for r in lat if r["status"] == "VIOLATION"]
    v = X if not lat else (N if bad else S)
    m = (f"{len(lat)} (pair, task) comparisons, {len(bad)} violations after Holm correction"
         + (": " + "; ".join(f"{r['special']} beat {r['general']} on {r['task']}" for r in bad[:6]) if bad else ""))
    out.append((Claim("Notes", "a tuned generalisation never underperforms its specialisation (Choi et al.)",
                      verdict=v, measured=m, rule="paired t-test per (pair, task), Holm-corrected p < α in favour of "
                      "the specialisation = violation"), []))
    return out


def ledger(tasks: dict[str, TaskResult], looks: int = 1, max_looks: int = 1) -> list[Claim]:
    """The claims, tested at the alpha that look `looks` of at most `max_looks` may spend (0.05 for one)."""
    return [c for c, _ in _rows(tasks, look_alpha(ALPHA, looks, max_looks))]


def open_comparisons(tasks: dict[str, TaskResult], looks: int, max_looks: int) -> dict[str, set[str]]:
    """Task -> optimizers whose final runs should get another round of seeds: those in a claim comparison that
    is still inconclusive (neither supported nor ruled out) at look `looks`. Empty once no look is left."""
    if looks >= max_looks:
        return {}
    out: dict[str, set[str]] = {}
    for claim, parts in _rows(tasks, look_alpha(ALPHA, looks, max_looks)):
        if claim.protocol != "tuned":  # more seeds go to the tuned runs only
            continue
        for p in parts:
            if p.verdict == I:
                out.setdefault(p.task, set()).update((p.a, p.b))
    return out


def _faster(tasks, alpha) -> Claim:
    faster = []
    for t in tasks.values():
        if "exadam" in t.opts and "adam" in t.opts:
            a, b = t.opts["exadam"].steps_to_target, t.opts["adam"].steps_to_target
            if math.isfinite(a) or math.isfinite(b):
                faster.append(a < b if a != b else None)
    wins, losses = sum(f is True for f in faster), sum(f is False for f in faster)
    rule = "sign test over tasks: p < α in favour supported; not faster on most tasks not supported"
    if wins + losses == 0:
        return Claim("EXAdam", "faster convergence than Adam (steps to target)", comparators=["adam"], verdict=X,
                     measured="no task reached the target", rule=rule)
    p = st.binomtest(wins, wins + losses, 0.5).pvalue
    v = S if wins > losses and p < alpha else N if wins <= losses else I
    return Claim("EXAdam", "faster convergence than Adam (steps to target)", comparators=["adam"], verdict=v, rule=rule,
                 measured=f"EXAdam reached the target first on {wins} tasks, Adam on {losses} (sign test p = {p:.2g})")


def _competitive(tasks, name, a, b, alpha) -> tuple[Claim, list[Part]]:
    """Non-inferiority: held-out loss of a minus b (paired), margin 2 % of b's mean loss."""
    rule = "held-out loss worse by < 2 % of Adam's (paired CI hi below the margin) supported; worse by > 2 % not supported"
    claim = Claim("EXAdam", "competitive with Adam on char-level GPT/Shakespeare", comparators=[b], rule=rule)
    t = tasks.get(name)
    if t is None or a not in t.opts or b not in t.opts:
        claim.measured = "no run of the task with both optimizers"
        return claim, []
    margin = 0.02 * abs(t.opts[b].final_loss.mean)
    c = paired(t.opts[a].by_seed(), t.opts[b].by_seed(), level=1 - alpha)
    v = S if c.hi < margin else N if c.lo > margin else I
    part = Part(name, a, b, t.opts[a].by_seed(), t.opts[b].by_seed(), comp=c, level=1 - alpha, verdict=v)
    claim.verdict, claim.effect, claim.lo, claim.hi, claim.level = v, c.diff, c.lo, c.hi, 1 - alpha
    if c.n >= 2:
        claim.mde, claim.seeds_needed = mde(c.sd, c.n, alpha), seeds_needed(margin, c.sd, alpha)
    claim.measured = (f"{name}: {a} − {b} held-out loss {c.diff:+.3g} [{c.lo:+.3g}, {c.hi:+.3g}] ({c.method}), "
                      f"margin {margin:.3g}")
    return claim, [part]


def _overhead_claim(tasks) -> Claim:
    oh = overhead(tasks, "adam", "step_time").get("exadam")
    rule = "geometric mean over tasks of EXAdam/Adam step time: CI hi ≤ 1.05 supported; CI lo > 1.05 not supported"
    claim = Claim("EXAdam", "~2.5 % time overhead over Adam", comparators=["adam"], rule=rule)
    if not oh:
        claim.measured = "no data"
        return claim
    claim.verdict = S if oh["hi"] <= 1.05 else N if oh["lo"] > 1.05 else I
    claim.effect, claim.lo, claim.hi = oh["ratio"], oh["lo"], oh["hi"]
    claim.measured = f"step time ×{oh['ratio']:.3f} [{oh['lo']:.3f}, {oh['hi']:.3f}] over {oh['n']} tasks"
    return claim


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
    return Claim("AdEMAMix", "reaches AdamW's loss with far fewer steps (paper: 101B vs 197B tokens)",
                 comparators=["adamw"], verdict=v, measured=m,
                 rule="median steps to AdamW's final loss: all seeds reach it and ratio ≤ 0.8 supported; ratio ≥ 1 "
                      "or most seeds never reach it not supported")


def _view(tasks: dict[str, TaskResult], protocol: str, tuned: tuple[str, ...] = ()) -> dict[str, TaskResult]:
    """The tasks as `protocol` ran them: each optimizer's runs under the protocol, beside the final runs of
    the `tuned` optimizers it is compared with (their tuning trials left out). Empty where it did not run."""
    from dataclasses import replace

    from .protocols import split

    out = {}
    for n, t in tasks.items():
        opts = {split(v)[0]: o for v, o in t.protocols.items() if split(v)[1] == protocol}
        if opts:
            opts.update({b: replace(t.opts[b], tune=[]) for b in tuned if b in t.opts})
            out[n] = replace(t, opts=opts)
    return out


def _escape_claim(tasks, alpha, runs: str = "tuning trials + seeds") -> Claim:
    parts = []
    for n, key in (("sharp_flat", "escaped_sharp"), ("ackley", "reached_global"), ("goldstein_price", "reached_global")):
        t = tasks.get(n)
        if t is None or "adamcm" not in t.opts or "adam" not in t.opts:
            continue
        (ka, na), (kb, nb) = _escape_counts(t, "adamcm", key), _escape_counts(t, "adam", key)
        if not na or not nb:
            continue
        p = st.fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="greater").pvalue
        v = S if p < alpha else N if ka / na <= kb / nb else I
        parts.append((v, f"{n}: AdamCM {ka}/{na} vs Adam {kb}/{nb} runs ({key}, {runs}; Fisher p = {p:.2g})"))
    v, m = combine(parts)
    return Claim("AdamCM", "escapes sharp minima on toy landscapes (sharp/flat, Ackley, Goldstein-Price)",
                 comparators=["adam"], verdict=v, measured=m,
                 rule="one-sided Fisher exact test on escape counts: p < α supported; rate not higher than Adam's "
                      "not supported")
