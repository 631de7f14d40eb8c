"""The report's other axes: the papers' protocols, the tuning budget, the model size, the performance-profile
score, and where the bench's time went.

Each function reads what `analysis.load` returned (plus the run tables for the protocols) and returns report
sections as (title, text, markdown table, html table, figure name).
"""
from __future__ import annotations

import math

import numpy as np

from . import protocols as P
from .analysis import OptResult, TaskResult, lattice, load, open_store, profiles, score_runs
from .stats import paired

Section = tuple[str, str, str, str, str | None]


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def paired_diff(a: OptResult, b: OptResult, what: str = "loss"):
    """mean(a − b) over the seeds both ran, with its paired 95 % CI (None when fewer than two are shared)."""
    xa, xb = a.by_seed(what), b.by_seed(what)
    return paired(xa, xb) if len(set(xa) & set(xb)) >= 2 else None


# --------------------------------------------------------------------------------------------- protocols
def attach_protocols(data: dict, out_dir: str, storage: str | None = None) -> None:
    """Load every protocol's runs into `task.protocols` ({'OPT~PROTOCOL': OptResult}), scored as the tuned
    runs are (a diverged run scores the untrained loss)."""
    names = data["config"].get("protocols") or []
    store = open_store(out_dir, storage)[0]
    try:
        for t in data["tasks"].values():
            t.protocols = {}
            task_hash = data["task_meta"].get(t.name, {}).get("hash")
            for proto in names:
                for opt in data["config"].get("optimizers", []):
                    name = P.variant(opt, proto)
                    rows = store.runs(task=t.name, task_hash=task_hash, optimizer=name, phase="final")
                    if rows:
                        o = OptResult(name, rows, [store.curves(r["id"]) for r in rows], [], P.TRIAL, rows[0]["params"])
                        score_runs(t, o)
                        t.protocols[name] = o
    finally:
        store.close()


def protocol_rows(tasks: dict[str, TaskResult]) -> list[list[str]]:
    rows = []
    for t in tasks.values():
        for name, o in sorted(t.protocols.items()):
            opt, proto = P.split(name)
            spec = P.PROTOCOLS[proto]
            base, how = spec.baseline, "same protocol" if spec.baseline_same_protocol else "tuned"
            ref = t.protocols.get(P.variant(base, proto)) if spec.baseline_same_protocol else t.opts.get(base)
            what = "acc" if t.has_accuracy else "loss"
            c = paired_diff(o, ref, what) if ref is not None and ref is not o else None
            val = o.final_acc if t.has_accuracy else o.final_loss
            rows.append([proto, t.name, opt, val.fmt() if val else "–",
                         f"{base} ({how})" if ref is not None and ref is not o else "–",
                         f"{_f(c.diff)} [{_f(c.lo)}, {_f(c.hi)}]" if c else "–"])
    return rows


# ------------------------------------------------------------------------------------------------ budget
def budget_axis(out_dir: str, storage: str | None, cfg: dict) -> dict[int, dict[str, TaskResult]]:
    """{budget: the budget-axis tasks analysed with the best of the first `budget` points}."""
    out = {}
    for k in sorted({int(cfg.get("trials") or 0), *cfg.get("budgets", [])} - {0}):
        tasks = load(out_dir, storage, trials=k)["tasks"]
        out[k] = {n: t for n, t in tasks.items() if n in cfg.get("budget_tasks", []) and t.opts}
    return out


def budget_rows(axis: dict[int, dict[str, TaskResult]]) -> tuple[list[str], list[list[str]]]:
    ks = sorted(axis)
    names = sorted({o for tasks in axis.values() for t in tasks.values() for o in t.opts})
    head = ["", *(f"{k} trials" for k in ks)]
    lat = {k: lattice(axis[k]) for k in ks}
    rows = [["lattice violations", *(str(sum(r["status"] == "VIOLATION" for r in lat[k])) for k in ks)],
            ["lattice comparisons", *(str(len(lat[k])) for k in ks)]]
    for n in names:
        cells = []
        for k in ks:
            ranks = [t.ranks[n] for t in axis[k].values() if n in t.ranks]
            cells.append(_f(float(np.mean(ranks)), 3) if ranks else "–")
        rows.append([f"{n} (mean rank)", *cells])
    return head, rows


# ------------------------------------------------------------------------------------------------- scale
def scale_rows(tasks: dict[str, TaskResult], task_meta: dict, baseline: str = "adamw") -> tuple[list, list]:
    """For each task run at several sizes: every optimizer's final held-out loss minus `baseline`'s (paired by
    seed, 95 % CI) at each size, smallest first, so a difference that grows or shrinks with size shows."""
    groups: dict[str, list[str]] = {}
    for n in tasks:
        groups.setdefault(task_meta.get(n, {}).get("base", n), []).append(n)
    head = ["task", "optimizer", "sizes (parameters)", f"final loss − {baseline}'s, per size", "trend"]
    rows = []
    for base, names in sorted(groups.items()):
        if len(names) < 2:
            continue
        names.sort(key=lambda n: task_meta.get(n, {}).get("parameters") or 0)
        sizes = ", ".join(f"{n} ({task_meta.get(n, {}).get('parameters', '?')})" for n in names)
        for opt in sorted({o for n in names for o in tasks[n].opts} - {baseline}):
            cs = [paired_diff(tasks[n].opts[opt], tasks[n].opts[baseline]) if opt in tasks[n].opts and
                  baseline in tasks[n].opts else None for n in names]
            cells = "; ".join(f"{_f(c.diff)} [{_f(c.lo)}, {_f(c.hi)}]" if c else "–" for c in cs)
            d = [c.diff for c in cs if c is not None]
            trend = ("–" if len(d) < 2 else "grows" if abs(d[-1]) > abs(d[0]) else "shrinks")
            rows.append([base, opt, sizes, cells, trend])
    return head, rows


# ------------------------------------------------------------------------------------ performance score
def profile_scores(tasks: dict[str, TaskResult], by: str = "steps", tau_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf's integrated score: the area under an optimizer's performance profile ρ(τ) for τ from 1 to
    `tau_max` on a log axis, divided by log τ_max (1 = fastest to the target on every task)."""
    taus = np.exp(np.linspace(0.0, math.log(tau_max), 201))
    _, prof = profiles(tasks, by, taus)
    x = np.log(taus)
    return {n: float(np.sum((np.asarray(r[1:]) + np.asarray(r[:-1])) / 2 * np.diff(x)) / math.log(tau_max))
            for n, r in prof.items()}


# --------------------------------------------------------------------------------------------- time split
def time_split(tasks: dict[str, TaskResult], phases: dict | None, elapsed: float | None) -> list[list[str]]:
    """Where the bench's time went: training (forward, backward, step), the rest of each run (data, model,
    evaluation, metrics), and the orchestration around runs (Optuna, storage, worker start-up, timing)."""
    runs = [r for t in tasks.values() for o in [*t.opts.values(), *t.protocols.values()]
            for r in [*o.runs, *o.tune]]
    train = sum(r["train_time"] or 0.0 for r in runs)
    wall = sum((r["extra"] or {}).get("wall") or 0.0 for r in runs)
    phases = dict(phases or {})
    workers = max(1, int(phases.pop("workers", 1) or 1))
    total = sum(v for v in phases.values() if isinstance(v, (int, float)))
    rows = [["training (forward, backward, optimizer step)", _f(train / 60, 3), ""],
            ["rest of each run (data, model, evaluation, metrics)", _f(max(0.0, wall - train) / 60, 3), ""],
            [f"orchestration (Optuna, storage, {workers} worker(s) starting and waiting)",
             _f(max(0.0, (total - phases.get("step timing", 0.0)) * workers - wall) / 60, 3), ""]]
    for k, v in phases.items():
        rows.append([f"phase: {k}", "", _f(v / 60, 3)])
    if elapsed:
        rows.append(["bench total (all machines)", "", _f(elapsed / 60, 3)])
    return rows


def sections(data: dict, out_dir: str, storage: str | None, md_table, html_table) -> list[Section]:
    cfg, tasks, meta = data["config"], data["tasks"], data["meta"]
    out: list[Section] = []
    if cfg.get("protocols"):  # the runs were attached by attach_protocols
        head = ["protocol", "task", "optimizer", "final (acc or loss)", "compared with", "paired difference [95 % CI]"]
        rows = protocol_rows(tasks)
        if rows:
            text = "The papers' own protocols, run on the same seeds as the tuned runs: " + "; ".join(
                f"**{p}**: {P.PROTOCOLS[p].description}" for p in cfg["protocols"] if p in P.PROTOCOLS) + "."
            out.append(("Protocols", text, md_table(head, rows), html_table(head, rows), None))
    if cfg.get("budgets") and cfg.get("budget_tasks"):
        head, rows = budget_rows(budget_axis(out_dir, storage, cfg))
        out.append(("Tuning budget", "The inclusion lattice and the mean rank on the budget-axis tasks ("
                    + ", ".join(cfg["budget_tasks"]) + ") when every optimizer gets the best of the first k points of "
                    "its quasi-random sequence, re-run over the final seeds: the fairness claim is about what "
                    "happens as tuning approaches optimality.", md_table(head, rows), html_table(head, rows), None))
    head, rows = scale_rows(tasks, data.get("task_meta") or {})
    if rows:
        out.append(("Scale", "Tasks run at more than one size. A difference whose CI excludes 0 at one size "
                    "and not at another is the size dependence the papers' claims are about.",
                    md_table(head, rows), html_table(head, rows), None))
    scores = profile_scores(tasks)
    if scores:
        rows = [[n, _f(s, 3)] for n, s in sorted(scores.items(), key=lambda kv: -kv[1])]
        out.append(("Performance-profile score", "AlgoPerf-style integrated score: the area under each optimizer's "
                    "profile (steps to target) from τ = 1 to 4 on a log axis, over log 4 (1 = first to the target "
                    "on every task; 0 = never within 4× of the fastest).", md_table(["optimizer", "score"], rows),
                    html_table(["optimizer", "score"], rows), None))
    rows = time_split(tasks, meta.get("phases"), meta.get("elapsed"))
    out.append(("Where the time went", "Minutes of worker time (summed over workers) and of wall time per phase, "
                "of the last bench that ran here.", md_table(["", "worker minutes", "wall minutes"], rows),
                html_table(["", "worker minutes", "wall minutes"], rows), None))
    return out


__all__ = ["sections", "profile_scores", "time_split", "paired_diff", "attach_protocols"]
