"""Every use of Optuna's private API in the lab, behind one door: each probed once, each with a fallback that
uses the public API only (and that `tests/lab/test_optuna_door.py` forces, to show the same results).

* ``trial_id`` / ``study_id``: the storage's ids of a trial and a study (Optuna keeps them private as
  ``_trial_id`` / ``_study_id``); fallback: the storage's public lookups by study name and trial number.
* ``BaseHeartbeat`` and ``heartbeat_thread``: the interface through which Optuna's own ``fail_stale_trials`` sees
  a storage's heartbeats, and the thread ``Study.optimize`` runs beside a trial; fallback: a stand-in base class
  (the lab's own sweep then fails stale trials itself) and a thread of our own that records the heartbeat.
"""
from __future__ import annotations

import contextlib
import os
import threading

# ADAMLAB_OPTUNA_PUBLIC=1 takes every fallback (the tests use it to show they give the same results)
_FORCE_PUBLIC = os.environ.get("ADAMLAB_OPTUNA_PUBLIC") == "1"
try:  # probe: Optuna 3.x-4.x keep the heartbeat interface here
    if _FORCE_PUBLIC:
        raise ImportError("ADAMLAB_OPTUNA_PUBLIC=1")
    from optuna.storages._heartbeat import BaseHeartbeat as _PrivateBaseHeartbeat
    from optuna.storages._heartbeat import get_heartbeat_thread as _private_heartbeat_thread
except ImportError:
    _PrivateBaseHeartbeat = _private_heartbeat_thread = None

PRIVATE = {"ids": not _FORCE_PUBLIC, "heartbeat": _PrivateBaseHeartbeat is not None}


class _StandInHeartbeat:
    """What a storage with heartbeats offers when Optuna's interface is not importable."""

    def record_heartbeat(self, trial_id: int) -> None:  # pragma: no cover - subclasses implement it
        raise NotImplementedError

    def get_heartbeat_interval(self) -> int | None:  # pragma: no cover
        return None


BaseHeartbeat = _PrivateBaseHeartbeat if _PrivateBaseHeartbeat is not None else _StandInHeartbeat


def study_id(storage, study) -> int:
    sid = getattr(study, "_study_id", None) if PRIVATE["ids"] else None
    return sid if isinstance(sid, int) else storage.get_study_id_from_name(study.study_name)


def trial_id(storage, study, trial) -> int:
    """The storage's id of `trial` (a FrozenTrial or a live Trial) of `study` (a Study or its storage id)."""
    tid = getattr(trial, "_trial_id", None) if PRIVATE["ids"] else None
    if isinstance(tid, int):
        return tid
    sid = study if isinstance(study, int) else study_id(storage, study)
    return storage.get_trial_id_from_study_id_trial_number(sid, trial.number)


@contextlib.contextmanager
def heartbeat_thread(trial_id: int, storage, interval: float):
    """Record the trial's heartbeat every `interval` seconds while the block runs (Optuna's own thread when
    its private helper is there, else an equivalent one)."""
    if PRIVATE["heartbeat"] and _private_heartbeat_thread is not None:
        with _private_heartbeat_thread(trial_id, storage):
            yield
        return
    stop = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
