"""The tuning protocol: an equal quasi-random budget per optimizer and task, then the best setting over seeds.

Per (task, optimizer) there is one Optuna study (QMCSampler over the optimizer's whole registry search
space; trial 0 is the registry default). The best of the first `trials` completed trials is re-run over
`seeds` fresh seeds (1000, 1001, ...), never the tuning seed, so the reported numbers are not the lucky draw
the tuner picked. Every run goes to the Store in one transaction.

Any number of processes, on one machine or many, share the studies (see `storages`): a worker claims a
trial inside the storage's ask lock, where `sweep` first fails the trials of dead workers (Optuna's
heartbeat and `fail_stale_trials`, plus a running trial with no heartbeat at all, which inside the lock can
only belong to a process that died there) and queues each failed trial's point again (the same point, not
a new one; the quasi-random counter is handed back if a worker died after drawing an index but before
recording it); it then asks only while fewer than `trials` trials are complete or running. A live worker's
trial is never failed: its heartbeat thread keeps it fresh. So every point of the sequence is evaluated
exactly once, by whichever process, and the results do not depend on how many processes there were.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import random
import signal
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from ..errors import DataError
from . import _optuna, protocols, space
from .storages import HEARTBEAT, OWNER_ATTR, open_storage, owner
from .store import Store
from .suites import suite as get_suite
from .tasks import Task, build_task

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
    heartbeat: int = HEARTBEAT
    protocols: list[str] | None = None  # the papers' protocols run beside the tuned one (None: the suite's)
    until_decided: int = 0  # > 0: add seeds where a claim's comparison is open, up to this many seeds
    budgets: list[int] = field(default_factory=list)  # other tuning budgets, on the suite's budget tasks
    budget_tasks: list[str] = field(default_factory=list)

    def trials_for(self, task: str) -> int:
        """Tuning trials of `task`'s studies: the largest budget on the budget-axis tasks (the first `trials`
        points of the sequence are the same, so every smaller budget is read off the same study)."""
        return max([self.trials, *self.budgets]) if task in self.budget_tasks else self.trials

    def budgets_for(self, task: str) -> list[int]:
        return sorted({self.trials, *self.budgets}) if task in self.budget_tasks else [self.trials]

    @property
    def db_path(self) -> str:
        return os.path.join(self.out, "adamlab.db")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{os.path.abspath(self.db_path)}"

    def open(self):
        """(Optuna storage, Store) of this configuration: the run tables live where the studies live."""
        storage = open_storage(self.storage_url, self.heartbeat)
        return storage, Store(storage.target.store, wal=storage.target.wal)


def make_tasks(cfg: BenchConfig) -> dict[str, Task]:
    spec = get_suite(cfg.suite)["tasks"]
    return {n: build_task(n, spec[n], text=cfg.text, cifar_dir=cfg.cifar_dir) for n in cfg.tasks}


def study_name(task: Task, opt: str) -> str:
    return f"{task.name}@{task.hash}/{opt}"


def sampler() -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # QMCSampler is "experimental" since Optuna 3.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=0, warn_independent_sampling=False)


_STUDIES: dict = {}


def load_study(storage, task: Task, opt: str) -> optuna.Study:
    """The study (created if new), one object per storage and name: the progress line and the tuning loop
    read every study every few seconds."""
    key = (id(storage), study_name(task, opt))
    hit = _STUDIES.get(key)
    if hit is not None and hit[0] is storage:
        return hit[1]
    study = optuna.create_study(storage=storage, study_name=study_name(task, opt), direction="minimize",
                                sampler=sampler(), load_if_exists=True)
    _STUDIES[key] = (storage, study)
    return study


def point_rank(t) -> tuple:
    """The order of the points, whatever the trial numbers: the registry default, then the quasi-random
    sequence (a retried point keeps its `qmc_id`); the trial number only for trials without either."""
    if t.user_attrs.get("default"):
        return (-1, t.number)
    q = t.user_attrs.get("qmc_id")
    return (q, t.number) if q is not None else (1 << 30, t.number)


def completed_trials(study: optuna.Study, limit: int | None = None) -> list:
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=point_rank)
    return done[:limit] if limit else done


def best_trial(done: list):
    """Lowest value; ties go to the earlier point (not to whichever process numbered its trial first)."""
    return min(done, key=lambda t: (t.value, point_rank(t)))


MAX_RETRIES = 3  # a point whose worker died this many times in a row is given up (a new point replaces it)


def sweep(storage, study: optuna.Study, opt: str) -> dict[str, list[int]]:
    """Inside the ask lock: enqueue the defaults of a fresh study; fail dead workers' trials; queue every
    failed trial's point again once; hand back a quasi-random index drawn by a worker that died before
    recording it. Returns {"failed": trial numbers failed now, "queued": trial numbers queued again}."""
    out: dict[str, list[int]] = {"failed": [], "queued": []}
    trials = study.get_trials(deepcopy=False)
    if not trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.enqueue_trial(space.default_params(opt), user_attrs={"default": True})
        return out
    dead = set(storage.dead_trial_ids(_optuna.study_id(storage, study)))
    if dead:
        with warnings.catch_warnings():  # Optuna's own: fails the trials whose heartbeat is stale
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        for t in trials:  # and those with no heartbeat at all (died inside the ask lock)
            tid = _optuna.trial_id(storage, study, t)
            if tid in dead:
                try:
                    storage.set_trial_state_values(tid, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass
                out["failed"].append(t.number)
        trials = study.get_trials(deepcopy=False)
    names = {space.optuna_key(k, spec) for k, spec in space.search_space(opt).items()}
    retried = {t.user_attrs.get("retry_of") for t in trials}
    by_number = {t.number: t for t in trials}
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried:
            continue
        # an enqueued trial killed before its first suggest has no params yet: its point is in the
        # enqueued 'fixed_params' (the registry default of trial 0, or an earlier retry)
        point = {**t.system_attrs.get("fixed_params", {}), **t.params}
        chain, n = 0, t.number
        while n is not None and n in by_number and chain <= MAX_RETRIES:
            n, chain = by_number[n].user_attrs.get("retry_of"), chain + 1
        recorded = t.user_attrs.get("default") or "qmc_id" in t.user_attrs
        if not recorded or not names <= point.keys() or chain > MAX_RETRIES:
            # killed inside suggest (the point was never whole) or before it recorded its quasi-random index:
            # that index is handed back below, and the next ask draws the same point again
            continue
        attrs = {"retry_of": t.number, **{k: t.user_attrs[k] for k in ("default", "qmc_id") if k in t.user_attrs}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.enqueue_trial(point, user_attrs=attrs)
        out["queued"].append(t.number)
    used_ids = {t.user_attrs["qmc_id"] for t in trials if "qmc_id" in t.user_attrs}
    _rewind_qmc_counter(storage, study, used_ids)
    return out


def counts(study: optuna.Study) -> dict[TrialState, int]:
    c = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        c[t.state] += 1
    return c


def recover(storage, store: Store, tasks: dict[str, Task], optimizers: list[str]) -> dict[str, int]:
    """At start-up: `sweep` every study (only dead workers' trials are failed, never a live bench's), and
    drop the run rows of failed trials (a process killed between writing its row and telling Optuna)."""
    stats = {"failed_running": 0, "deleted_rows": 0}
    for task in tasks.values():
        for opt in optimizers:
            study = load_study(storage, task, opt)
            with storage.ask_lock():
                stats["failed_running"] += len(sweep(storage, study, opt)["failed"])
            failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
            stats["deleted_rows"] += store.delete_tune_runs(task=task.name, task_hash=task.hash, optimizer=opt,
                                                            drop_trials=failed)
    return stats


def _qmc_counter(storage, study: optuna.Study) -> tuple[int, str, int] | None:
    """QMCSampler's index of the last quasi-random point it handed out (a study system attribute), as
    (study id, attribute key, index)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    found = [(k, v) for k, v in storage.get_study_system_attrs(study_id).items() if k.startswith("qmc:")]
    return (study_id, *found[0]) if len(found) == 1 else None


def _rewind_qmc_counter(storage, study: optuna.Study, used_ids: set[int]) -> None:
    counter = _qmc_counter(storage, study)
    if counter is not None and counter[2] >= 0 and counter[2] not in used_ids:  # drawn, never recorded
        storage.set_study_system_attr(counter[0], counter[1], counter[2] - 1)


# ---------------------------------------------------------------------------------------------- workers
_CTX: dict = {}

# A pool worker's first code, run before anything heavy is imported (the spawned child does not import the
# parent's main module, see Runner): die with the parent (Linux PDEATHSIG), and if the parent is already
# gone (it died while this child started), exit at once.
_WORKER_BOOT = """
import ctypes, os, signal
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    os._exit(1)
signal.signal(signal.SIGINT, signal.SIG_IGN)
from adamlab.lab.protocol import init_worker
init_worker(cfg, child=True)
"""


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL this worker when the parent dies (kill -9 of the bench kills its workers too)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass


def init_worker(cfg_dict: dict, child: bool = True) -> None:
    if child:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = BenchConfig(**cfg_dict)
    torch.set_num_threads(max(1, cfg.threads))
    warnings.filterwarnings("ignore", category=UserWarning)
    storage, store = cfg.open()
    _CTX.clear()
    _CTX.update(cfg=cfg, tasks=make_tasks(cfg), store=store, storage=storage)


def execute(task: Task, opt: str, params: dict, seed: int, final: bool):
    """One training run; an exception inside the optimizer counts as a diverged run (recorded, not hidden).
    A data problem is no divergence: DataError propagates (the bench checks the data before any run)."""
    t0 = time.perf_counter()
    try:
        res = task.run(lambda m: space.build_optimizer(opt, m, params), seed, final)
    except DataError:
        raise
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
        from .tasks.base import RunResult
        res = RunResult(curves={}, initial_val_loss=math.nan, final_val_loss=math.inf, best_val_loss=math.inf,
                        diverged=True, extra={"error": f"{type(e).__name__}: {e}"[:500],
                                              "traceback": traceback.format_exc(limit=3)[-1500:]})
    res.extra["wall"] = time.perf_counter() - t0  # the whole run: data, model, training, evaluation, metrics
    return res


def _study(task_name: str, opt: str) -> optuna.Study:
    key = (task_name, opt)
    if key not in _CTX.setdefault("studies", {}):
        _CTX["studies"][key] = load_study(_CTX["storage"], _CTX["tasks"][task_name], opt)
    return _CTX["studies"][key]


def claim(storage, study: optuna.Study, opt: str, trials: int):
    """Inside the ask lock: sweep, then take the next trial if fewer than `trials` are complete or running.
    Returns (trial, params, trial numbers failed by the sweep) or (None, None, failed)."""
    with storage.ask_lock(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        failed = sweep(storage, study, opt)["failed"]
        c = counts(study)
        if c[TrialState.COMPLETE] + c[TrialState.RUNNING] >= trials:
            return None, None, failed
        before = _qmc_counter(storage, study)
        trial = study.ask()
        params = space.suggest(trial, opt)
        after = _qmc_counter(storage, study)
        if after is not None and after != before:  # this trial drew quasi-random index after[2]: say so
            trial.set_user_attr("qmc_id", after[2])
        tid = _optuna.trial_id(storage, study, trial)
        storage.set_trial_system_attr(tid, OWNER_ATTR, owner())
        storage.record_heartbeat(tid)  # before leaving the lock: "no heartbeat" means "died here"
    return trial, params, failed


def tune_job(job: tuple[str, str]) -> dict:
    """Claim and run one trial of a study, or nothing when every trial is complete or running elsewhere."""
    task_name, opt = job
    task, store, storage, cfg = _CTX["tasks"][task_name], _CTX["store"], _CTX["storage"], _CTX["cfg"]
    study = _study(task_name, opt)
    trial, params, failed = claim(storage, study, opt, cfg.trials_for(task_name))
    if failed:  # rows of a dead worker's trials, written before it could tell Optuna
        store.delete_tune_runs(task=task.name, task_hash=task.hash, optimizer=opt, drop_trials=set(failed))
    if trial is None:
        return {"task": task_name, "optimizer": opt, "idle": True}
    tid = _optuna.trial_id(storage, study, trial)
    with _optuna.heartbeat_thread(tid, storage, cfg.heartbeat):  # as study.optimize beats beside a trial
        res = execute(task, opt, params, TUNE_SEED, final=False)
        value = res.final_val_loss if math.isfinite(res.final_val_loss) else math.inf
        store.add_run(task=task.name, task_hash=task.hash, optimizer=opt, phase="tune", trial=trial.number,
                      seed=TUNE_SEED, params=params, result={**res.summary(), "value": value}, curves=res.curves,
                      extra={**res.extra, "default": bool(trial.user_attrs.get("default")),
                             "qmc_id": trial.user_attrs.get("qmc_id")})
    try:
        study.tell(trial, value)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        # another process took this worker for dead (its heartbeat stalled past the grace period) and queued
        # the point again: the retry's row counts, this one goes
        store.delete_tune_runs(task=task.name, task_hash=task.hash, optimizer=opt, drop_trials={trial.number})
        return {"task": task_name, "optimizer": opt, "lost": True}
    return {"task": task_name, "optimizer": opt, "value": value, "error": res.extra.get("error")}


def final_job(job: tuple[str, str, dict, int, int]) -> dict:
    task_name, opt, params, trial_number, seed = job
    task, store = _CTX["tasks"][task_name], _CTX["store"]
    key = {"task": task.name, "task_hash": task.hash, "optimizer": opt, "phase": "final", "trial": trial_number,
           "seed": seed, "params": params}
    if store.has_run(**key):  # another process ran it meanwhile
        return {"task": task_name, "optimizer": opt, "skipped": True}
    res = execute(task, protocols.split(opt)[0], params, seed, final=True)
    store.add_run(**key, result={**res.summary(), "value": res.final_val_loss}, curves=res.curves, extra=res.extra)
    return {"task": task_name, "optimizer": opt, "value": res.final_val_loss, "error": res.extra.get("error")}


def _each(x, *key):
    """A per-task (or per-run) setting given as a constant or as a function of the key."""
    return x(*key) if callable(x) else x


def tuning_state(storage, tasks: dict[str, Task], optimizers: list[str], trials) -> tuple[list, int]:
    """(jobs: one per trial that is neither complete nor running anywhere, number of complete trials, capped
    at `trials` per study): the study-wide picture, whatever process did the work. `trials` is a number or
    a function of the task name (the budget-axis tasks tune longer)."""
    jobs, done = [], 0
    for task in tasks.values():
        n = _each(trials, task.name)
        for opt in optimizers:
            c = counts(load_study(storage, task, opt))
            done += min(n, c[TrialState.COMPLETE])
            jobs += [(task.name, opt)] * max(0, n - c[TrialState.COMPLETE] - c[TrialState.RUNNING])
    # longest tasks first (better packing over workers), round-robin over optimizers within a task
    return sorted(jobs, key=lambda j: -tasks[j[0]].cost()), done


def tuning_jobs(storage, tasks: dict[str, Task], optimizers: list[str], trials) -> list[tuple[str, str]]:
    return tuning_state(storage, tasks, optimizers, trials)[0]


def _shuffled(jobs: list, tasks: dict[str, Task]) -> list:
    random.Random(os.getpid()).shuffle(jobs)  # benches sharing a storage start on different runs
    return sorted(jobs, key=lambda j: -tasks[j[0]].cost())


def tuned_params(storage, task: Task, optimizers: list[str], trials: int) -> dict[str, tuple[int, dict]]:
    """{optimizer: (trial number, create_optimizer kwargs)} of the best of the first `trials` points."""
    out = {}
    for opt in optimizers:
        done = completed_trials(load_study(storage, task, opt), trials)
        if done:
            best = best_trial(done)
            out[opt] = (best.number, space.params_from_optuna(opt, best.params))
    return out


def final_jobs(storage, store: Store, tasks: dict[str, Task], optimizers: list[str], trials, seeds: int,
               budgets=None, more_seeds: dict | None = None) -> list[tuple]:
    """One job per final run not stored yet: the best of the first `trials` points of every study over
    `seeds` seeds (`more_seeds[(task, optimizer)]` where `--until-decided` added seeds to an open comparison),
    and the best point of each other tuning budget in `budgets(task)` over `seeds` seeds."""
    jobs = []
    for task in tasks.values():
        n_main = _each(trials, task.name)
        for k in sorted({n_main, *(budgets(task.name) if budgets else ())}):
            for opt, (number, params) in tuned_params(storage, task, optimizers, k).items():
                n = (more_seeds or {}).get((task.name, opt), seeds) if k == n_main else seeds
                jobs += _missing(store, task, opt, params, number, n)
    return _shuffled(jobs, tasks)


def _missing(store: Store, task: Task, opt: str, params: dict, trial: int, n_seeds: int) -> list[tuple]:
    out = []
    for s in range(n_seeds):
        seed = FINAL_SEED0 + s
        if not store.has_run(task=task.name, task_hash=task.hash, optimizer=opt, phase="final", trial=trial,
                             seed=seed, params=params):
            out.append((task.name, opt, params, trial, seed))
    return out


def protocol_jobs(storage, store: Store, tasks: dict[str, Task], cfg: BenchConfig) -> list[tuple]:
    """The papers' protocols (see `protocols`): fixed settings, some built on a tuned one, over the final
    seeds; stored as final runs of `OPT~PROTOCOL`."""
    jobs = []
    for task in tasks.values():
        tuned = {o: p for o, (_, p) in tuned_params(storage, task, cfg.optimizers, cfg.trials).items()}
        for proto in cfg.protocols or []:
            for opt, params in protocols.settings(proto, task, tuned, cfg.optimizers).items():
                jobs += _missing(store, task, protocols.variant(opt, proto), params, protocols.TRIAL, cfg.seeds)
    return _shuffled(jobs, tasks)


_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def _light_children():
    """While the pool starts its workers: a spawned child does not import the parent's main module (the CLI,
    which imports torch), so its first code is _WORKER_BOOT, run seconds earlier than the first heavy import."""
    from multiprocessing import spawn

    orig = spawn.get_preparation_data

    def light(name):
        d = orig(name)
        d.pop("init_main_from_name", None)
        d.pop("init_main_from_path", None)
        return d

    with _SPAWN_LOCK:
        spawn.get_preparation_data = light
        try:
            yield
        finally:
            spawn.get_preparation_data = orig


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

    def start_pool(self):
        ctx = mp.get_context("spawn")
        with _light_children():
            self.pool = ctx.Pool(self.cfg.workers, initializer=exec,
                                 initargs=(_WORKER_BOOT, {"cfg": asdict(self.cfg), "parent": os.getpid()}))

    def map(self, fn, jobs: list, on_result=None) -> list[dict]:
        out: list[dict] = []
        if not jobs:
            return out
        if self.cfg.workers <= 1:
            if _CTX.get("cfg") != self.cfg:
                init_worker(asdict(self.cfg), child=False)
            it = map(fn, jobs)
        else:
            if self.pool is None:
                self.start_pool()
            it = self.pool.imap_unordered(fn, jobs)
        for r in it:
            out.append(r)
            if on_result is not None:
                on_result(r)
        return out
