"""`adamlab bench`: validate the request, recover the storage, tune, re-run over seeds, report."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict

from . import space
from .files import LabError, check_db, check_out
from .protocol import (BenchConfig, Runner, final_job, final_jobs, make_tasks, open_storage, recover, tune_job,
                       tuning_jobs)
from .store import Store
from .suites import SUITES
from .tasks import TASK_NAMES, DataError


def resolve(cfg: BenchConfig, explicit_tasks: bool) -> tuple[BenchConfig, dict[str, str], dict[str, str]]:
    """Fill suite defaults, check names, paths and data. Returns the config (with the tasks that can run),
    {task: why skipped} (data absent) and {task: why failed} (data present but unusable)."""
    check_out(cfg.out)
    if cfg.suite not in SUITES:
        raise LabError(f"--suite: unknown suite {cfg.suite!r}; choose from {', '.join(SUITES)}")
    s = SUITES[cfg.suite]
    known_opts = space.all_optimizers()
    for o in cfg.optimizers:
        if o not in known_opts:
            raise LabError(f"--optimizers: unknown optimizer {o!r}; choose from {', '.join(known_opts)}")
    for t in cfg.tasks:
        if t not in TASK_NAMES:
            raise LabError(f"--tasks: unknown task {t!r}; choose from {', '.join(TASK_NAMES)}")
    if cfg.text is not None and not os.path.isfile(cfg.text):
        raise LabError(f"--text {cfg.text}: text file not found")
    if cfg.cifar_dir is not None and not os.path.isdir(cfg.cifar_dir):
        raise LabError(f"--cifar-dir {cfg.cifar_dir}: CIFAR-10 directory not found")
    for opt, n in (("--workers", cfg.workers), ("--threads", cfg.threads)):
        if n < 1:
            raise LabError(f"{opt} {n}: must be at least 1")
    tasks = cfg.tasks or [t for t in TASK_NAMES if t in s["tasks"]]
    missing = [t for t in tasks if t not in s["tasks"]]
    if missing:
        raise LabError(f"--tasks: task(s) {', '.join(missing)} are not in suite {cfg.suite!r}")
    cfg = BenchConfig(**{**asdict(cfg), "tasks": tasks, "optimizers": cfg.optimizers or known_opts,
                         "trials": cfg.trials or s["trials"], "seeds": cfg.seeds or s["seeds"]})
    if cfg.trials < 1 or cfg.seeds < 2:
        raise LabError("--trials must be >= 1 and --seeds >= 2 (a confidence interval needs two seeds)")
    check_db(cfg.db_path, results=False)  # the run tables live there whatever --storage says
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, task in make_tasks(cfg).items():
        ok, why = task.available()
        if not ok:
            if explicit_tasks or (name == "cifar10_cnn" and cfg.cifar_dir is not None) or \
                    (name in ("char_gpt", "word_lm") and cfg.text is not None):
                raise LabError(f"{name}: {why}")
            skipped[name] = why
            continue
        try:  # the data is there: can it make the task? (known now, not after training)
            task.check()
        except DataError as e:
            failed[name] = str(e)
    if failed and len(failed) == len(cfg.tasks) - len(skipped):
        raise LabError("; ".join(f"{n}: {why}" for n, why in failed.items()))
    cfg.tasks = [t for t in cfg.tasks if t not in skipped and t not in failed]
    return cfg, skipped, failed


def check_storage(url: str, user_given: bool):
    try:
        storage = open_storage(url)
        storage.get_all_studies()
        return storage
    except Exception as e:  # noqa: BLE001 - any failure to open is a user error here
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(f"{'--storage: ' if user_given else ''}cannot open storage {url!r}: {msg}") from None


def measure_step_times(cfg: BenchConfig, storage, store: Store, tasks, quiet: bool) -> None:
    """Interleaved optimizer.step() timing per task with each optimizer's tuned setting (skipped if stored)."""
    import torch
    from tqdm import tqdm

    from .protocol import completed_trials, load_study
    from .timing import step_times

    torch.set_num_threads(max(1, cfg.threads))
    for task in tqdm(list(tasks.values()), desc="timing", unit="task", disable=quiet):
        key = f"step_times/{task.name}@{task.hash}"
        have = store.get_meta(key) or {}
        if all(o in have for o in cfg.optimizers):
            continue
        best = {}
        for o in cfg.optimizers:
            done = completed_trials(load_study(storage, task, o), cfg.trials)
            if done:
                best[o] = space.params_from_optuna(o, min(done, key=lambda t: (t.value, t.number)).params)
        try:
            store.put_meta(key, step_times(task, best))
        except (ValueError, RuntimeError, TypeError) as e:  # recorded, the report falls back to run timings
            store.put_meta(key, {"error": str(e)[:300]})


def estimate_seconds(cfg: BenchConfig, tasks) -> float:
    runs = sum(t.cost() for t in tasks.values()) * len(cfg.optimizers) * (cfg.trials + cfg.seeds)
    return 1.25 * runs / max(1, min(cfg.workers, os.cpu_count() or 1)) + 20  # + Optuna, sharpness, report


def run_bench(cfg: BenchConfig, *, explicit_tasks: bool = False, quiet: bool = False, log=print,
              warn=lambda msg: print(msg, file=sys.stderr)) -> tuple[str, dict[str, str]]:
    """Run the bench and write the report. Returns the screen summary and {task: why it failed} for the
    tasks whose data could not make them (`warn` got one line each; the other tasks ran)."""
    from .report import build_report

    cfg, skipped, failed = resolve(cfg, explicit_tasks)
    for name, why in failed.items():
        warn(f"adamlab: error: {name} not run: {why}")
    os.makedirs(cfg.out, exist_ok=True)
    storage = check_storage(cfg.storage_url, cfg.storage is not None)
    store = Store(cfg.db_path)
    tasks = make_tasks(cfg)
    est = estimate_seconds(cfg, tasks)
    log(f"adamlab bench: suite {cfg.suite}, {len(tasks)} tasks x {len(cfg.optimizers)} optimizers, "
        f"{cfg.trials} tuning trials + {cfg.seeds} seeds each, {cfg.workers} worker(s)")
    for name, why in skipped.items():
        log(f"  skipping {name}: {why}")
    log(f"  estimated runtime ~{est / 60:.1f} min on a 2-core machine like the reference (less if resuming)")
    store.put_meta("config", {**asdict(cfg), "storage": cfg.storage_url if cfg.storage else None})
    store.put_meta("tasks", {n: {"hash": t.hash, "description": t.description, "family": t.family,
                                 "has_accuracy": t.has_accuracy} for n, t in tasks.items()})
    store.put_meta("skipped", skipped)
    store.put_meta("failed", failed)
    store.put_meta("spaces", {o: space.describe_space(o) for o in cfg.optimizers})
    t0 = time.time()
    rec = recover(storage, store, tasks, cfg.optimizers)
    if rec["failed_running"] or rec["deleted_rows"]:
        log(f"  resumed: {rec['failed_running']} interrupted trial(s) re-queued, "
            f"{rec['deleted_rows']} unfinished row(s) dropped")
    errors: list[dict] = []
    with Runner(cfg, quiet) as runner:
        jobs = tuning_jobs(storage, tasks, cfg.optimizers, cfg.trials)
        errors += [r for r in runner.map(tune_job, jobs, "tuning") if r.get("error")]
        fjobs = final_jobs(storage, store, tasks, cfg.optimizers, cfg.trials, cfg.seeds)
        errors += [r for r in runner.map(final_job, fjobs, "seeds ") if r.get("error")]
    measure_step_times(cfg, storage, store, tasks, quiet)
    for e in errors[:5]:
        log(f"  note: {e['optimizer']} on {e['task']} raised {e['error']} (counted as diverged)")
    elapsed = time.time() - t0
    prev = store.get_meta("elapsed", 0.0) or 0.0
    store.put_meta("elapsed", prev + elapsed if jobs or fjobs else prev)
    store.close()
    summary = build_report(cfg.out)
    log(summary)
    log(f"finished in {elapsed / 60:.1f} min; report: {os.path.join(cfg.out, 'report.html')}")
    return summary, failed


__all__ = ["LabError", "run_bench", "resolve"]
