"""The tuning protocol: an equal quasi-random budget per optimizer and task, then the best setting over seeds.

Per (task, optimizer) there is one Optuna study (QMCSampler over the optimizer's whole registry search
space; trial 0 is the registry default). The best of the first `trials` completed trials is re-run over
`seeds` fresh seeds (1000, 1001, ...), never the tuning seed, so the reported numbers are not the lucky draw
the tuner picked. Every run goes to the Store in one transaction.

Resumability: `recover` runs before any work. A trial left RUNNING by a killed process is marked FAIL and
its parameters are enqueued again (same point, not a new one), and any stored run of a trial that never
completed is deleted, so no finished trial is lost or counted twice.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import signal
import traceback
import warnings
from dataclasses import asdict, dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from . import space
from .store import Store
from .suites import suite as get_suite
from .tasks import DataError, Task, build_task

TUNE_SEED = 0
FINAL_SEED0 = 1000
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class BenchConfig:
    out: str = "adamlab-results"
    suite: str = "default"
    tasks: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    trials: int = 0
    seeds: int = 0
    storage: str | None = None
    workers: int = 1
    threads: int = 1
    text: str | None = None
    cifar_dir: str | None = None

    @property
    def db_path(self) -> str:
        return os.path.join(self.out, "adamlab.db")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{os.path.abspath(self.db_path)}"


def make_tasks(cfg: BenchConfig) -> dict[str, Task]:
    spec = get_suite(cfg.suite)["tasks"]
    return {n: build_task(n, spec[n], text=cfg.text, cifar_dir=cfg.cifar_dir) for n in cfg.tasks}


def study_name(task: Task, opt: str) -> str:
    return f"{task.name}@{task.hash}/{opt}"


def open_storage(url: str):
    if not url.startswith("sqlite"):
        return optuna.storages.get_storage(url)
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 300}})

    def pragmas(dbapi_con, _record):  # WAL: readers never block the writer; NORMAL: no fsync per commit in WAL
        dbapi_con.execute("PRAGMA journal_mode=WAL")
        dbapi_con.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()
    return storage


def sampler() -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # QMCSampler is "experimental" since Optuna 3.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=0, warn_independent_sampling=False)


def load_study(storage, task: Task, opt: str) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=study_name(task, opt), direction="minimize",
                               sampler=sampler(), load_if_exists=True)


def completed_trials(study: optuna.Study, limit: int | None = None) -> list:
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    return done[:limit] if limit else done


def recover(storage, store: Store, tasks: dict[str, Task], optimizers: list[str]) -> dict[str, int]:
    """Make the storage consistent after a crash; enqueue the defaults as trial 0 of fresh studies."""
    stats = {"failed_running": 0, "deleted_rows": 0}
    for task in tasks.values():
        for opt in optimizers:
            study = load_study(storage, task, opt)
            trials = study.get_trials(deepcopy=False)
            if not trials:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    study.enqueue_trial(space.default_params(opt), user_attrs={"default": True})
                continue
            names = {space.optuna_key(k, spec) for k, spec in space.search_space(opt).items()}
            used_ids = {t.user_attrs["qmc_id"] for t in trials if "qmc_id" in t.user_attrs}
            for t in trials:
                if t.state == TrialState.RUNNING:
                    storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                    # an enqueued trial killed before its first suggest has no params yet: its point is in the
                    # enqueued 'fixed_params' (the registry default of trial 0, or an earlier retry)
                    point = {**t.system_attrs.get("fixed_params", {}), **t.params}
                    if not names <= point.keys():
                        # killed inside ask/suggest (workers take turns there, so at most one such trial):
                        # if it had drawn its quasi-random index, hand the index back so that the retry
                        # completes the same point instead of taking the next one
                        _rewind_qmc_counter(storage, study, used_ids)
                    study.enqueue_trial(point, user_attrs={"retry_of": t.number,
                                                                    **({"default": True} if t.user_attrs.get("default") else {})})
                    stats["failed_running"] += 1
            keep = {t.number for t in completed_trials(study)}
            stats["deleted_rows"] += store.delete_tune_runs(task=task.name, task_hash=task.hash, optimizer=opt,
                                                            keep_trials=keep)
    return stats


def _qmc_counter(storage, study: optuna.Study) -> tuple[int, str, int] | None:
    """QMCSampler's index of the last quasi-random point it handed out (a study system attribute), as
    (study id, attribute key, index)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    found = [(k, v) for k, v in storage.get_study_system_attrs(study_id).items() if k.startswith("qmc:")]
    return (study_id, *found[0]) if len(found) == 1 else None


def _rewind_qmc_counter(storage, study: optuna.Study, used_ids: set[int]) -> None:
    counter = _qmc_counter(storage, study)
    if counter is not None and counter[2] not in used_ids:  # drawn, but no trial got to record it
        storage.set_study_system_attr(counter[0], counter[1], counter[2] - 1)


# ---------------------------------------------------------------------------------------------- workers
_CTX: dict = {}


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL this worker when the parent dies (kill -9 of the bench kills its workers too)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass


def init_worker(cfg_dict: dict, child: bool = True, ask_lock=None) -> None:
    if child:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = BenchConfig(**cfg_dict)
    torch.set_num_threads(max(1, cfg.threads))
    warnings.filterwarnings("ignore", category=UserWarning)
    _CTX.clear()
    _CTX.update(cfg=cfg, tasks=make_tasks(cfg), store=Store(cfg.db_path), storage=open_storage(cfg.storage_url),
                ask_lock=ask_lock if ask_lock is not None else contextlib.nullcontext())


def execute(task: Task, opt: str, params: dict, seed: int, final: bool):
    """One training run; an exception inside the optimizer counts as a diverged run (recorded, not hidden).
    A data problem is no divergence: DataError propagates (the bench checks the data before any run)."""
    try:
        res = task.run(lambda m: space.build_optimizer(opt, m, params), seed, final)
    except DataError:
        raise
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
        from .tasks.base import RunResult
        res = RunResult(curves={}, initial_val_loss=math.nan, final_val_loss=math.inf, best_val_loss=math.inf,
                        diverged=True, extra={"error": f"{type(e).__name__}: {e}"[:500],
                                              "traceback": traceback.format_exc(limit=3)[-1500:]})
    return res


def tune_job(job: tuple[str, str]) -> dict:
    task_name, opt = job
    task, store, storage = _CTX["tasks"][task_name], _CTX["store"], _CTX["storage"]
    key = (task_name, opt)
    if key not in _CTX.setdefault("studies", {}):
        _CTX["studies"][key] = load_study(storage, task, opt)
    study = _CTX["studies"][key]
    # Optuna's pop of an enqueued trial and QMCSampler's sample counter are read-modify-write on the storage:
    # workers take turns asking, so no two get the same trial or the same quasi-random point.
    with _CTX["ask_lock"], warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = _qmc_counter(storage, study)
        trial = study.ask()
        params = space.suggest(trial, opt)
        after = _qmc_counter(storage, study)
        if after is not None and after != before:  # this trial drew quasi-random index after[2]: say so
            trial.set_user_attr("qmc_id", after[2])
    res = execute(task, opt, params, TUNE_SEED, final=False)
    value = res.final_val_loss if math.isfinite(res.final_val_loss) else math.inf
    store.add_run(task=task.name, task_hash=task.hash, optimizer=opt, phase="tune", trial=trial.number,
                  seed=TUNE_SEED, params=params, result={**res.summary(), "value": value}, curves=res.curves,
                  extra={**res.extra, "default": bool(trial.user_attrs.get("default"))})
    study.tell(trial, value)
    return {"task": task_name, "optimizer": opt, "value": value, "error": res.extra.get("error")}


def final_job(job: tuple[str, str, dict, int, int]) -> dict:
    task_name, opt, params, trial_number, seed = job
    task, store = _CTX["tasks"][task_name], _CTX["store"]
    res = execute(task, opt, params, seed, final=True)
    store.add_run(task=task.name, task_hash=task.hash, optimizer=opt, phase="final", trial=trial_number,
                  seed=seed, params=params, result={**res.summary(), "value": res.final_val_loss}, curves=res.curves,
                  extra=res.extra)
    return {"task": task_name, "optimizer": opt, "value": res.final_val_loss, "error": res.extra.get("error")}


def tuning_jobs(storage, tasks: dict[str, Task], optimizers: list[str], trials: int) -> list[tuple[str, str]]:
    jobs = []
    for task in tasks.values():
        for opt in optimizers:
            n = len(completed_trials(load_study(storage, task, opt)))
            jobs += [(task.name, opt)] * max(0, trials - n)
    # longest tasks first (better packing over workers), round-robin over optimizers within a task
    return sorted(jobs, key=lambda j: -tasks[j[0]].cost())


def final_jobs(storage, store: Store, tasks: dict[str, Task], optimizers: list[str], trials: int,
               seeds: int) -> list[tuple]:
    jobs = []
    for task in tasks.values():
        for opt in optimizers:
            done = completed_trials(load_study(storage, task, opt), trials)
            if not done:
                continue
            best = min(done, key=lambda t: (t.value, t.number))
            params = space.params_from_optuna(opt, best.params)
            for s in range(seeds):
                seed = FINAL_SEED0 + s
                if not store.has_run(task=task.name, task_hash=task.hash, optimizer=opt, phase="final",
                                     trial=best.number, seed=seed, params=params):
                    jobs.append((task.name, opt, params, best.number, seed))
    return sorted(jobs, key=lambda j: -tasks[j[0]].cost())


class Runner:
    """Runs jobs in this process (workers=1) or in a pool of `workers` spawned processes kept for all phases."""

    def __init__(self, cfg: BenchConfig, quiet: bool = False):
        self.cfg, self.quiet, self.pool = cfg, quiet, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            if exc[0] is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def map(self, fn, jobs: list, desc: str) -> list[dict]:
        from tqdm import tqdm

        out: list[dict] = []
        if not jobs:
            return out
        with tqdm(total=len(jobs), desc=desc, unit="run", disable=self.quiet, dynamic_ncols=True,
                  smoothing=0.05) as bar:
            if self.cfg.workers <= 1:
                if _CTX.get("cfg") != self.cfg:
                    init_worker(asdict(self.cfg), child=False)
                it = map(fn, jobs)
            else:
                if self.pool is None:
                    ctx = mp.get_context("spawn")
                    self.pool = ctx.Pool(self.cfg.workers, initializer=init_worker,
                                         initargs=(asdict(self.cfg), True, ctx.Lock()))
                it = self.pool.imap_unordered(fn, jobs)
            for r in it:
                out.append(r)
                bar.update()
        return out
