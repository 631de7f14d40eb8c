"""`adamlab bench`: validate the request, recover the storage, tune, re-run over seeds, report."""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import asdict

from ..errors import DataError, LabError
from . import space
from .files import check_db, check_out
from .protocol import (
    BenchConfig,
    Runner,
    best_trial,
    final_job,
    final_jobs,
    load_study,
    make_tasks,
    protocol_jobs,
    recover,
    sweep,
    tune_job,
    tuning_state,
)
from .protocols import PROTOCOLS
from .storages import mask
from .store import Store
from .suites import SUITES, all_task_names


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
    task_names = all_task_names()
    for t in cfg.tasks:
        if t not in task_names:
            raise LabError(f"--tasks: unknown task {t!r}; choose from {', '.join(task_names)}")
    for p in cfg.protocols or []:
        if p not in PROTOCOLS:
            raise LabError(f"--protocols: unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    if cfg.text is not None and not os.path.isfile(cfg.text):
        raise LabError(f"--text {cfg.text}: text file not found")
    if cfg.cifar_dir is not None and not os.path.isdir(cfg.cifar_dir):
        raise LabError(f"--cifar-dir {cfg.cifar_dir}: CIFAR-10 directory not found")
    for opt, n in (("--workers", cfg.workers), ("--threads", cfg.threads)):
        if n < 1:
            raise LabError(f"{opt} {n}: must be at least 1")
    tasks = cfg.tasks or [t for t in task_names if t in s["tasks"]]
    missing = [t for t in tasks if t not in s["tasks"]]
    if missing:
        raise LabError(f"--tasks: task(s) {', '.join(missing)} are not in suite {cfg.suite!r}")
    budgets = s.get("budgets", {})
    cfg = BenchConfig(**{**asdict(cfg), "tasks": tasks, "optimizers": cfg.optimizers or known_opts,
                         "trials": cfg.trials or s["trials"], "seeds": cfg.seeds or s["seeds"],
                         "protocols": s.get("protocols", []) if cfg.protocols is None else cfg.protocols,
                         "budgets": cfg.budgets or budgets.get("trials", []),
                         "budget_tasks": cfg.budget_tasks or budgets.get("tasks", [])})
    if cfg.trials < 1 or cfg.seeds < 2:
        raise LabError("--trials must be >= 1 and --seeds >= 2 (a confidence interval needs two seeds)")
    if cfg.until_decided and cfg.until_decided <= cfg.seeds:
        raise LabError(f"--until-decided {cfg.until_decided}: must be more than --seeds ({cfg.seeds}), or 0 (off)")
    if cfg.heartbeat < 1:
        raise LabError(f"--heartbeat {cfg.heartbeat}: must be at least 1 (seconds)")
    if cfg.storage is None:
        check_db(cfg.db_path, results=False)
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, task in make_tasks(cfg).items():
        ok, why = task.available()
        if not ok:
            if explicit_tasks or (name == "cifar10_cnn" and cfg.cifar_dir is not None) or \
                    (task.family == "lm" and cfg.text is not None):
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


def open_backend(cfg: BenchConfig):
    """(Optuna storage, Store), opened and read once: LabError (one line, credentials masked) if it fails."""
    from .storages import scrub

    storage = None
    try:
        storage, store = cfg.open()
        storage.get_all_studies()
        store.get_meta("schema_version")
        return storage, store
    except LabError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to open is a user error here
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = mask(cfg.storage_url)
        raise LabError(scrub(f"{'--storage: ' if cfg.storage else ''}cannot open storage {where}: {msg}",
                             cfg.storage_url)) from None


class OutLock:
    """An exclusive lock on `--out` (fcntl.flock on OUT/.adamlab.lock) for the bench's whole life: a second
    bench on the same folder refuses at once. The kernel drops it when the process dies."""

    def __init__(self, out: str):
        self.path, self.fd = os.path.join(out, ".adamlab.lock"), None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise LabError(f"--out {os.path.dirname(self.path) or '.'}: another adamlab bench is using this folder; "
                           "wait for it to finish, or give this one another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Progress:
    """One line per machine with the study-wide count (every process's finished trials or runs, read from the
    storage at most every 5 seconds: a read of every study takes ~0.2 s): a tqdm bar on a terminal, a plain
    line a minute otherwise."""

    def __init__(self, desc: str, total: int, count, quiet: bool, log):
        self.desc, self.total, self.count, self.log = desc, total, count, log
        self.last_read = self.last_line = 0.0
        self.bar = None
        self.off = quiet
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True, smoothing=0.05)
        self.update(force=True)

    def update(self, _result=None, force: bool = False) -> None:
        if self.off:
            return
        now = time.monotonic()
        if not force and now - self.last_read < 5.0:
            return
        self.last_read = now
        n = min(self.total, self.count())
        if self.bar is not None:
            self.bar.n = n
            self.bar.refresh()
        elif force or now - self.last_line >= 60.0:
            self.last_line = now
            print(f"adamlab: {self.desc.strip()} {n}/{self.total} (all machines)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.off:
            self.last_line = 0.0
            self.update(force=True)
        if self.bar is not None:
            self.bar.close()


def tune(cfg: BenchConfig, runner: Runner, storage, store: Store, tasks, quiet: bool, log) -> list[dict]:
    """Tune until every study has `trials` complete trials, whoever runs them: claim what is free; when all
    that is left runs in other processes, wait (and sweep: a dead process's trials come back here)."""
    total = sum(cfg.trials_for(t) for t in tasks) * len(cfg.optimizers)
    results: list[dict] = []
    bar = Progress("tuning", total, lambda: tuning_state(storage, tasks, cfg.optimizers, cfg.trials_for)[1], quiet,
                   log)
    try:
        while True:
            jobs, done = tuning_state(storage, tasks, cfg.optimizers, cfg.trials_for)
            if done >= total:
                break
            if jobs:
                results += runner.map(tune_job, jobs, bar.update)
                continue
            time.sleep(min(5.0, cfg.heartbeat))  # the rest runs elsewhere: wait, then look for dead workers
            bar.update()
            for task in tasks.values():
                for opt in cfg.optimizers:
                    study = load_study(storage, task, opt)
                    with storage.ask_lock():
                        failed = sweep(storage, study, opt)["failed"]
                    if failed:
                        store.delete_tune_runs(task=task.name, task_hash=task.hash, optimizer=opt,
                                               drop_trials=set(failed))
    finally:
        bar.close()
    return results


def measure_step_times(cfg: BenchConfig, storage, store: Store, tasks, quiet: bool) -> None:
    """Interleaved optimizer.step() timing per task with each optimizer's tuned setting (skipped if stored)."""
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    with warnings.catch_warnings():  # as in the workers: an optimizer's advice about its inputs is not news here
        warnings.simplefilter("ignore", UserWarning)
        _measure(cfg, storage, store, tasks, quiet)


def _measure(cfg: BenchConfig, storage, store: Store, tasks, quiet: bool) -> None:
    from tqdm import tqdm

    from .protocol import completed_trials
    from .timing import step_times

    for task in tqdm(list(tasks.values()), desc="timing", unit="task", disable=quiet or not sys.stderr.isatty()):
        key = f"step_times/{task.name}@{task.hash}"
        have = store.get_meta(key) or {}
        if all(o in have for o in cfg.optimizers):
            continue
        best = {}
        for o in cfg.optimizers:
            done = completed_trials(load_study(storage, task, o), cfg.trials)
            if done:
                best[o] = space.params_from_optuna(o, best_trial(done).params)
        try:  # the first machine's timings are kept: every machine's report shows the same numbers
            store.put_meta(key, step_times(task, best), keep=not have)
        except (ValueError, RuntimeError, TypeError) as e:  # recorded, the report falls back to run timings
            store.put_meta(key, {"error": str(e)[:300]}, keep=not have)


def _size(cfg: BenchConfig, name: str, task) -> dict:
    """The scale axis' labels: the task a size belongs to, and its number of trained parameters."""
    from .timing import capture_parameters

    base = SUITES[cfg.suite]["tasks"].get(name, {}).get("base", name)
    if task.family != "lm":
        return {"base": base}
    model = capture_parameters(task)
    ps = model.parameters() if hasattr(model, "parameters") else model
    return {"base": base, "parameters": sum(p.numel() for p in {id(p): p for p in ps}.values())}


def _run_finals(runner: Runner, store: Store, jobs: list, desc: str, quiet: bool, log) -> list[dict]:
    n = len(jobs)
    done = store.count_runs(phase="final")
    bar = Progress(desc, n, lambda: store.count_runs(phase="final") - done, quiet, log)
    try:
        return runner.map(final_job, jobs, bar.update)
    finally:
        bar.close()


def _until_decided(cfg: BenchConfig, runner: Runner, storage, store: Store, tasks, quiet: bool, log) -> list[dict]:
    """Looks at the claims after each round of seeds and adds `--seeds` more seeds only to the optimizers
    of comparisons still open, until every comparison is decided or has `--until-decided` seeds. The number
    of looks is planned up front and stored, so that the verdicts spend their error rate over the looks."""
    from .analysis import load
    from .claims import open_comparisons

    max_looks = 1 + math.ceil((cfg.until_decided - cfg.seeds) / cfg.seeds)
    more: dict[tuple[str, str], int] = {}
    out: list[dict] = []
    look = 1
    while look < max_looks:
        store.put_meta("looks", {"look": look, "max_looks": max_looks})
        opened = open_comparisons(load(cfg.out, cfg.storage)["tasks"], looks=look, max_looks=max_looks)
        if not any(opened.values()):
            break
        look += 1
        n = min(cfg.until_decided, cfg.seeds * look)
        for task, opts in opened.items():
            for opt in opts:
                more[(task, opt)] = n
        log(f"  look {look - 1}: {sum(map(len, opened.values()))} (task, optimizer) final sets still open, "
            f"running them to {n} seeds")
        jobs = final_jobs(storage, store, tasks, cfg.optimizers, cfg.trials_for, cfg.seeds, cfg.budgets_for, more)
        out += _run_finals(runner, store, jobs, f"look {look}", quiet, log)
    store.put_meta("looks", {"look": look, "max_looks": max_looks})
    return out


def estimate_seconds(cfg: BenchConfig, tasks) -> float:
    runs = sum(t.cost() * (cfg.trials_for(n) + cfg.seeds * len(cfg.budgets_for(n)))
               for n, t in tasks.items()) * len(cfg.optimizers)
    return 1.25 * runs / max(1, min(cfg.workers, os.cpu_count() or 1)) + 20  # + Optuna, sharpness, report


def run_bench(cfg: BenchConfig, *, explicit_tasks: bool = False, quiet: bool = False, log=print,
              warn=lambda msg: print(msg, file=sys.stderr)) -> tuple[str, dict[str, str]]:
    """Run the bench and write the report. Returns the screen summary and {task: why it failed} for the
    tasks whose data could not make them (`warn` got one line each; the other tasks ran)."""
    cfg, skipped, failed = resolve(cfg, explicit_tasks)
    for name, why in failed.items():
        warn(f"adamlab: error: {name} not run: {why}")
    os.makedirs(cfg.out, exist_ok=True)
    with OutLock(cfg.out):
        return _run_locked(cfg, skipped, failed, quiet, log)


def _run_locked(cfg: BenchConfig, skipped, failed, quiet: bool, log) -> tuple[str, dict[str, str]]:
    from .report import build_report

    storage, store = open_backend(cfg)
    tasks = make_tasks(cfg)
    est = estimate_seconds(cfg, tasks)
    log(f"adamlab bench: suite {cfg.suite}, {len(tasks)} tasks x {len(cfg.optimizers)} optimizers, "
        f"{cfg.trials} tuning trials + {cfg.seeds} seeds each, {cfg.workers} worker(s)"
        + (f", storage {mask(cfg.storage)}" if cfg.storage else ""))
    for name, why in skipped.items():
        log(f"  skipping {name}: {why}")
    log(f"  estimated runtime ~{est / 60:.1f} min on a 2-core machine like the reference (less if resuming)")
    store.put_meta("config", {**asdict(cfg), "storage": mask(cfg.storage) if cfg.storage else None})
    store.put_meta("tasks", {n: {"hash": t.hash, "description": t.description, "family": t.family,
                                 "has_accuracy": t.has_accuracy, **_size(cfg, n, t)} for n, t in tasks.items()})
    store.put_meta("skipped", skipped)
    store.put_meta("failed", failed)
    store.put_meta("spaces", {o: space.describe_space(o) for o in cfg.optimizers})
    t0 = time.time()
    rec = recover(storage, store, tasks, cfg.optimizers)
    if rec["failed_running"] or rec["deleted_rows"]:
        log(f"  resumed: {rec['failed_running']} interrupted trial(s) re-queued, "
            f"{rec['deleted_rows']} unfinished row(s) dropped")
    errors: list[dict] = []
    phases: dict[str, float] = {}
    with Runner(cfg, quiet) as runner:
        t = time.time()
        tuned = tune(cfg, runner, storage, store, tasks, quiet, log)
        phases["tuning"] = time.time() - t
        errors += [r for r in tuned if r.get("error")]
        t = time.time()
        fjobs = final_jobs(storage, store, tasks, cfg.optimizers, cfg.trials_for, cfg.seeds, cfg.budgets_for)
        fjobs += protocol_jobs(storage, store, tasks, cfg)
        finals = _run_finals(runner, store, fjobs, "seeds ", quiet, log)
        phases["seeds"] = time.time() - t
        if cfg.until_decided:
            t = time.time()
            finals += _until_decided(cfg, runner, storage, store, tasks, quiet, log)
            phases["more seeds"] = time.time() - t
        errors += [r for r in finals if r.get("error")]
    t = time.time()
    measure_step_times(cfg, storage, store, tasks, quiet)
    phases["step timing"] = time.time() - t
    for e in errors[:5]:
        log(f"  note: {e['optimizer']} on {e['task']} raised {e['error']} (counted as diverged)")
    elapsed = time.time() - t0
    worked = any(not r.get("idle") and not r.get("skipped") for r in tuned + finals)
    prev = store.get_meta("elapsed", 0.0) or 0.0  # compute time summed over benches (of all machines)
    store.put_meta("elapsed", prev + elapsed if worked else prev)
    if worked:
        store.put_meta("phases", {**phases, "workers": cfg.workers})
    store.close()
    summary = build_report(cfg.out, cfg.storage)
    log(summary)
    log(f"finished in {elapsed / 60:.1f} min; report: {os.path.join(cfg.out, 'report.html')}")
    return summary, failed


__all__ = ["LabError", "run_bench", "resolve"]
