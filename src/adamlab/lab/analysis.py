"""Turns the stored runs into numbers: per-task tables, targets, profiles, the inclusion lattice.

Everything here reads the lab tables only (optionally cross-checked against the Optuna storage), so
`adamlab report DIR` can rebuild the report from the database alone.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from statistics import median

import numpy as np

from .metrics import performance_profile, steps_to_target, target_loss
from .stats import Summary, holm, mean_ci, paired
from .store import Store

# (specialisation, generalisation): once both are tuned, the left one should not win by more than noise
LATTICE = [("sgd", "momentum"), ("sgd", "nesterov"), ("momentum", "rmsprop"), ("sgd", "adam"), ("momentum", "adam"),
           ("adam", "adamw"), ("adamw", "ademamix"), ("adam", "ademamix"), ("adam", "adamcm"), ("adam", "adamcg"),
           ("adamw", "coupledadam")]
TARGET_FRACTION = 0.9


@dataclass
class OptResult:
    name: str
    runs: list[dict]
    curves: list[dict]
    tune: list[dict]
    best_trial: int
    params: dict
    final_loss: Summary = None
    best_loss: Summary = None
    final_acc: Summary | None = None
    losses: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    diverged: int = 0
    steps_to_target: float = math.inf
    time_to_target: float = math.inf
    step_time: float = math.nan
    opt_step_time: float = math.nan
    default_value: float = math.nan
    tuned_value: float = math.nan

    def extra(self, key: str) -> list:
        return [r["extra"][key] for r in self.runs if r["extra"].get(key) is not None]

    def by_seed(self, what: str = "loss") -> dict:
        """Final-run values keyed by seed, so that two optimizers' runs pair up (every optimizer's final runs
        use the same seeds, and a seed fixes the model's initialisation and the data order alike for all).

        `what`: "loss" (final held-out loss, a diverged run scoring the untrained loss), "acc", or a key of
        the runs' extras (non-finite and missing values left out). Values without a known seed (no run row)
        are keyed ("#", name, i) and never pair with another optimizer's."""
        if what in ("loss", "acc"):
            vals = self.losses if what == "loss" else self.accs
            if len(self.runs) != len(vals) or any(r.get("seed") is None for r in self.runs):
                return {("#", self.name, i): v for i, v in enumerate(vals)}
            return {r["seed"]: v for r, v in zip(self.runs, vals)}
        out = {}
        for i, r in enumerate(self.runs):
            v = (r.get("extra") or {}).get(what)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[r["seed"] if r.get("seed") is not None else ("#", self.name, i)] = float(v)
        return out

    def summary_of(self, key: str) -> Summary | None:
        vals = [float(v) for v in self.extra(key) if isinstance(v, (int, float)) and math.isfinite(v)]
        return mean_ci(vals) if vals else None


@dataclass
class TaskResult:
    name: str
    description: str
    family: str
    has_accuracy: bool
    steps: int
    opts: dict[str, OptResult]
    initial: float = math.nan
    target: float = math.nan
    best_any: float = math.nan
    ranks: dict[str, float] = field(default_factory=dict)
    top_group: set[str] = field(default_factory=set)
    micro: dict = field(default_factory=dict)  # optimizer -> seconds per optimizer.step() (timing.py)
    protocols: dict = field(default_factory=dict)  # 'OPT~PROTOCOL' -> OptResult (axes.attach_protocols)


def _median_or_inf(xs: list[float]) -> float:
    """Median over seeds, inf when more than half the seeds never got there."""
    if not xs or sum(math.isfinite(x) for x in xs) * 2 < len(xs):
        return math.inf
    return float(median(xs))


def _complete_trials(storage, name: str, task_hash: str, opt: str) -> set[int] | None:
    """Trial numbers Optuna calls COMPLETE, or None when the storage cannot be read (then trust the rows)."""
    if storage is None:
        return None
    try:
        import optuna
        from optuna.trial import TrialState

        study = optuna.load_study(study_name=f"{name}@{task_hash}/{opt}", storage=storage)
        return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    except Exception:  # noqa: BLE001
        return None


def point_rank(row: dict) -> tuple:
    """Ties of the tuning value are broken by the point, not by the trial number (which a retry changes when
    several processes share a study): the registry default first, then the quasi-random sequence."""
    ex = row.get("extra") or {}
    if ex.get("default"):
        return (-1, row["trial"])
    return (ex["qmc_id"], row["trial"]) if ex.get("qmc_id") is not None else (1 << 30, row["trial"])


def _open_optuna(url: str | None):
    try:
        from .storages import open_storage
        return open_storage(url)
    except Exception:  # noqa: BLE001 - the report works from the rows alone
        return None


def open_store(out_dir: str, storage: str | None = None) -> tuple[Store, str]:
    """(the run tables, the Optuna storage URL) of `out_dir`/adamlab.db, or of a --storage URL."""
    if storage is None:
        db = os.path.join(out_dir, "adamlab.db")
        if not os.path.isfile(db):
            raise FileNotFoundError(f"no adamlab.db in {out_dir}")
        return Store(db), f"sqlite:///{os.path.abspath(db)}"
    from .storages import parse
    t = parse(storage)
    return Store(t.store, wal=t.wal), storage


def load(out_dir: str, storage: str | None = None, trials: int | None = None) -> dict:
    """Everything the report needs, from `out_dir`/adamlab.db or, with `storage` (a --storage URL), from
    that storage's database: the same numbers on every machine. `trials`: analyse the best of the first
    `trials` points (the tuning-budget axis) instead of the bench's budget."""
    store, optuna_url = open_store(out_dir, storage)
    opt_storage = _open_optuna(optuna_url)
    cfg = store.get_meta("config") or {}
    task_meta = store.get_meta("tasks") or {}
    trials = trials or int(cfg.get("trials", 0)) or None
    tasks: dict[str, TaskResult] = {}
    for name, tm in task_meta.items():
        opts: dict[str, OptResult] = {}
        steps = 0
        for opt in cfg.get("optimizers", []):
            rows = store.runs(task=name, task_hash=tm["hash"], optimizer=opt)
            tune = sorted((r for r in rows if r["phase"] == "tune"), key=lambda r: r["trial"])
            ok = _complete_trials(opt_storage, name, tm["hash"], opt)
            if ok is not None:
                tune = [r for r in tune if r["trial"] in ok]
            tune = sorted(tune, key=point_rank)[:trials]
            if not tune:
                continue
            best = min(tune, key=lambda r: (r["value"], point_rank(r)))
            finals = [r for r in rows if r["phase"] == "final" and r["trial"] == best["trial"]]
            if not finals:
                continue
            o = OptResult(opt, finals, [store.curves(r["id"]) for r in finals], tune, best["trial"], best["params"])
            defaults = [r for r in tune if r["extra"].get("default")]
            o.default_value = defaults[0]["value"] if defaults else math.nan
            o.tuned_value = best["value"]
            opts[opt] = o
            steps = max(steps, max(r["steps"] or 0 for r in finals))
        tasks[name] = TaskResult(name, tm["description"], tm["family"], tm["has_accuracy"], steps, opts)
        tasks[name].micro = store.get_meta(f"step_times/{name}@{tm['hash']}") or {}
    meta = {k: store.get_meta(k) for k in ("skipped", "failed", "spaces", "elapsed", "phases", "looks")}
    store.close()
    for t in tasks.values():
        _summarise(t)
    return {"config": cfg, "tasks": tasks, "meta": meta, "task_meta": task_meta}


def score_runs(t: TaskResult, o: OptResult) -> None:
    """Final losses (and accuracies) of `o`'s runs: a diverged run scores the untrained loss (and the
    untrained accuracy), no better than not training."""
    untrained = t.initial if math.isfinite(t.initial) else math.inf  # inf: no run of the task got anywhere
    o.losses = [r["final_val_loss"] if math.isfinite(r["final_val_loss"]) else untrained for r in o.runs]
    o.diverged = sum(bool(r["diverged"]) for r in o.runs)
    o.final_loss = mean_ci(o.losses)
    o.best_loss = mean_ci([r["best_val_loss"] if math.isfinite(r["best_val_loss"]) else untrained for r in o.runs])
    if t.has_accuracy:
        o.accs = [r["final_val_acc"] if r["final_val_acc"] is not None else 0.1 for r in o.runs]
        o.final_acc = mean_ci(o.accs)


def _summarise(t: TaskResult) -> None:
    if not t.opts:
        return
    inits = [r["initial_val_loss"] for o in t.opts.values() for r in o.runs if math.isfinite(r["initial_val_loss"])]
    t.initial = float(median(inits)) if inits else math.nan
    for o in t.opts.values():
        score_runs(t, o)
    # step time = forward/backward (the same for every optimizer: pooled over all runs of the task) plus the
    # interleaved micro-benchmark of optimizer.step(); the runs' own opt-step timings are the fallback
    fb = [r["step_time"] - r["opt_step_time"] for o in t.opts.values() for r in o.runs
          if r["step_time"] is not None and r["opt_step_time"] is not None]
    fwd_bwd = float(median(fb)) if fb else 0.0
    for o in t.opts.values():
        own = [r["opt_step_time"] for r in o.runs if r["opt_step_time"] is not None]
        micro = t.micro.get(o.name)
        o.opt_step_time = float(micro) if isinstance(micro, (int, float)) else float(median(own)) if own else math.nan
        o.step_time = fwd_bwd + o.opt_step_time
    t.best_any = min(o.best_loss.mean for o in t.opts.values())
    t.target = target_loss(t.initial, t.best_any, TARGET_FRACTION)
    for o in t.opts.values():
        st, tt = [], []
        for c in o.curves:
            steps, times, vals = c.get("val_loss", ([], [], []))
            s = steps_to_target(steps, vals, t.target)
            st.append(s)
            hit = times[steps.index(int(s))] if math.isfinite(s) else math.inf
            tt.append(hit if math.isfinite(hit) else math.inf)  # a time not recorded counts as not reached
        o.steps_to_target, o.time_to_target = _median_or_inf(st), _median_or_inf(tt)
    order = sorted(t.opts.values(), key=lambda o: o.final_loss.mean)
    means = [o.final_loss.mean for o in order]
    for o in order:  # average ranks for ties
        lo = means.index(o.final_loss.mean)
        hi = len(means) - 1 - means[::-1].index(o.final_loss.mean)
        t.ranks[o.name] = (lo + hi) / 2 + 1
    leader = order[0]
    # paired by seed (Welch where fewer than 2 seeds are common), not corrected for multiplicity: a wider top
    t.top_group = {o.name for o in order
                   if o is leader or not (paired(o.by_seed(), leader.by_seed()).p < 0.05)}


def leaderboard(tasks: dict[str, TaskResult]) -> list[dict]:
    names = sorted({o for t in tasks.values() for o in t.opts})
    rows = []
    for n in names:
        ranks = [t.ranks[n] for t in tasks.values() if n in t.ranks]
        rows.append({"optimizer": n, "mean_rank": float(np.mean(ranks)) if ranks else math.nan,
                     "tasks": len(ranks), "top": sum(n in t.top_group for t in tasks.values()),
                     "wins": sum(t.ranks.get(n) == 1 for t in tasks.values()),
                     "diverged": sum(t.opts[n].diverged for t in tasks.values() if n in t.opts)})
    return sorted(rows, key=lambda r: (r["mean_rank"], r["optimizer"]))


def profiles(tasks: dict[str, TaskResult], by: str = "steps", taus=None) -> tuple[list[float], dict]:
    taus = list(taus if taus is not None else np.logspace(0, 1.5, 60))
    times: dict[str, dict[str, float]] = {}
    for t in tasks.values():
        for o in t.opts.values():
            times.setdefault(o.name, {})[t.name] = o.steps_to_target if by == "steps" else o.time_to_target
    return taus, performance_profile(times, taus)


def overhead(tasks: dict[str, TaskResult], base: str = "adam", key: str = "step_time") -> dict[str, dict]:
    """Per optimizer: step-time ratios to `base` on each task, their geometric mean and a 95 % t-CI of it."""
    out = {}
    names = sorted({o for t in tasks.values() for o in t.opts})
    for n in names:
        ratios = [getattr(t.opts[n], key) / getattr(t.opts[base], key) for t in tasks.values()
                  if n in t.opts and base in t.opts and getattr(t.opts[base], key) > 0]
        logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
        if not logs:
            continue
        s = mean_ci(logs)
        out[n] = {"ratio": math.exp(s.mean), "lo": math.exp(s.lo), "hi": math.exp(s.hi), "n": len(logs)}
    return out


def lattice(tasks: dict[str, TaskResult], alpha: float = 0.05, tolerance: float = 0.01) -> list[dict]:
    """Paired t-test per (pair, task) on final losses over common seeds (`stats.paired`: Welch when fewer
    than 2 seeds are common), Holm-corrected over all rows. A difference only counts when
    it is significant and larger than `tolerance` x the task's loss range (initial - best): two optimizers
    that both sit in the same minimum to 1e-17 are not a violation."""
    rows = []
    for spec, gen in LATTICE:
        for t in tasks.values():
            if spec in t.opts and gen in t.opts:
                c = paired(t.opts[spec].by_seed(), t.opts[gen].by_seed())
                rows.append({"special": spec, "general": gen, "task": t.name, "diff": c.diff, "p": c.p,
                             "lo": c.lo, "hi": c.hi, "n": c.n, "method": c.method,
                             "scale": abs(t.initial - t.best_any)})
    adj = holm([r["p"] for r in rows])
    for r, p in zip(rows, adj):
        r["p_holm"] = p
        worse = math.isfinite(p) and p < alpha and abs(r["diff"]) > tolerance * r["scale"]
        r["status"] = ("VIOLATION" if worse and r["diff"] < 0 else "general better" if worse else "within noise")
    return rows
