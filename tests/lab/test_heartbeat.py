"""Only a dead worker's trials are failed and queued again: a live one's survive a second bench's start-up."""
import datetime
import time

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from adamlab.lab import _optuna
from adamlab.lab.protocol import BenchConfig, claim, load_study, make_tasks, recover
from adamlab.lab.storages import HB_ATTR


def _storage_url(kind, tmp_path, request):
    if kind == "sqlite":
        return None  # the default: OUT/adamlab.db
    if kind == "journal":
        return f"journal:{tmp_path}/shared/journal.log"
    return request.getfixturevalue("pg_url")


def _make_stale(storage, trial_id):
    """What an hour without heartbeats looks like to the storage (no sleeping in tests)."""
    if hasattr(storage, "engine"):
        with storage.engine.begin() as c:
            c.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id = :i"),
                      {"t": datetime.datetime(2000, 1, 1), "i": trial_id})
    else:
        storage.set_trial_system_attr(trial_id, HB_ATTR, time.time() - 3600)


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_fresh_heartbeat_survives_stale_heartbeat_is_failed_and_requeued(kind, tmp_path, request):
    cfg = BenchConfig(out=str(tmp_path / "o"), suite="smoke", tasks=["sharp_flat"], optimizers=["adam"], trials=4,
                      seeds=2, heartbeat=60, storage=_storage_url(kind, tmp_path, request))
    # (a long interval: the live trial must stay fresh however loaded the machine is; the dead one is made stale
    # by hand. With 1 s, a CPU-starved run once saw both as stale)
    storage, store = cfg.open()
    tasks = make_tasks(cfg)
    recover(storage, store, tasks, ["adam"])  # fresh study: the defaults queued as trial 0
    study = load_study(storage, tasks["sharp_flat"], "adam")
    live, _, _ = claim(storage, study, "adam", cfg.trials)  # bench A, alive: heartbeat fresh
    dead, dead_params, _ = claim(storage, study, "adam", cfg.trials)  # bench A's other worker, dies
    assert live.user_attrs["default"] and dead.user_attrs["qmc_id"] == 0
    _make_stale(storage, _optuna.trial_id(storage, study, dead))

    stats = recover(storage, store, tasks, ["adam"])  # bench B starts on the same storage
    assert stats["failed_running"] == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.RUNNING, 1: TrialState.FAIL, 2: TrialState.WAITING}
    study.tell(live, 1.5)  # the live trial was left alone: A can still tell it

    retry, retry_params, _ = claim(storage, study, "adam", cfg.trials)  # B takes the queued point
    assert retry.number == 2 and retry_params == dead_params and retry.user_attrs["qmc_id"] == 0
    assert retry.user_attrs["retry_of"] == 1
    nxt, _, _ = claim(storage, study, "adam", cfg.trials)  # the sequence goes on where it was
    assert nxt.user_attrs["qmc_id"] == 1
    # 1 complete + 2 running of 4: one more may be claimed, then nothing until one of them finishes
    assert claim(storage, study, "adam", cfg.trials)[0] is not None
    assert claim(storage, study, "adam", cfg.trials)[0] is None
    store.close()


def test_a_running_trial_without_heartbeat_after_the_lock_is_dead(tmp_path):
    """A worker records its trial's heartbeat before it leaves the ask lock; a trial seen without one from
    inside the lock belongs to a process that died there, and is failed at once."""
    cfg = BenchConfig(out=str(tmp_path / "o"), suite="smoke", tasks=["sharp_flat"], optimizers=["adam"], trials=3,
                      seeds=2)
    storage, store = cfg.open()
    tasks = make_tasks(cfg)
    recover(storage, store, tasks, ["adam"])
    study = load_study(storage, tasks["sharp_flat"], "adam")
    with storage.ask_lock():
        study.ask()  # ... and the process dies before its first heartbeat
    assert recover(storage, store, tasks, ["adam"])["failed_running"] == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_trial_whose_process_on_this_machine_is_gone_is_dead_at_once(tmp_path):
    """No grace period to wait out when the owner ran here and its process no longer exists (kill -9 and an
    immediate restart); an owner that is alive, or on another machine, is left to its heartbeat."""
    import subprocess

    from adamlab.lab.storages import OWNER_ATTR, owner

    cfg = BenchConfig(out=str(tmp_path / "o"), suite="smoke", tasks=["sharp_flat"], optimizers=["adam"], trials=5,
                      seeds=2)
    storage, store = cfg.open()
    tasks = make_tasks(cfg)
    recover(storage, store, tasks, ["adam"])
    study = load_study(storage, tasks["sharp_flat"], "adam")
    _here, gone, elsewhere = (claim(storage, study, "adam", cfg.trials)[0] for _ in range(3))
    p = subprocess.Popen(["true"])
    p.wait()
    dead_owner = {**owner(), "pid": p.pid, "start": "1"}
    storage.set_trial_system_attr(_optuna.trial_id(storage, study, gone), OWNER_ATTR, dead_owner)
    storage.set_trial_system_attr(_optuna.trial_id(storage, study, elsewhere), OWNER_ATTR, {**dead_owner, "where": "another-machine"})
    assert recover(storage, store, tasks, ["adam"])["failed_running"] == 1  # heartbeats all fresh
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    store.close()
