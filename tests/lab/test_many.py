"""Two benches with two workers each on one storage (PostgreSQL, a journal file), one killed with kill -9 mid-run
and restarted: every trial done exactly once, every run stored once, and the report equal to one process's."""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from optuna.trial import TrialState

from adamlab.lab.storages import open_storage
from adamlab.lab.store import Store

from .conftest import ROOT
from .pg import PASSWORD

TASKS, OPTS, TRIALS, SEEDS = ["sharp_flat", "digits_mlp"], ["sgd", "adam"], 12, 2  # enough trials for a kill to land in one
ARGS = ["--suite", "smoke", "--tasks", ",".join(TASKS), "--optimizers", ",".join(OPTS), "--trials", str(TRIALS),
        "--seeds", str(SEEDS), "--quiet"]
WAIT = 240  # seconds: the bound on every wait (the whole test takes well under a minute here)


def _bench(out, *extra, machine=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if machine:  # acts as a machine of its own: only heartbeats can tell another machine that it died
        env["ADAMLAB_MACHINE_ID"] = machine
    return subprocess.Popen([sys.executable, "-m", "adamlab.cli", "bench", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def _finish(p) -> str:
    try:
        out, err = p.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert p.returncode == 0, err
    return out + err


def _screen(text: str) -> list[str]:
    """The leaderboard and claims the bench or `adamlab report` printed (not the file paths)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Leaderboard"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("Report:"))
    return lines[start:end]


def _audit(url: str) -> dict:
    """Per study: each point (default, then the quasi-random sequence) complete exactly once; nothing left
    running or queued; one tune row per complete trial and none for failed ones; the final rows."""
    storage = open_storage(url)
    store = Store(storage.target.store, wal=storage.target.wal)
    out: dict = {"failed": 0, "studies": {}, "finals": []}
    try:
        studies = storage.get_all_studies()
        assert len(studies) == len(TASKS) * len(OPTS)
        for s in studies:
            trials = storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False)
            assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            failed = [t for t in trials if t.state == TrialState.FAIL]
            out["failed"] += len(failed)
            info = [(t.number, t.state.name, t.user_attrs, t.system_attrs.get("fixed_params") is not None)
                    for t in trials]
            points = sorted(-1 if t.user_attrs.get("default") else t.user_attrs.get("qmc_id", -99) for t in done)
            assert points == list(range(-1, TRIALS - 1)), (points, info)  # the default, then indices 0..T-2: once each
            task, opt = s.study_name.split("@")[0], s.study_name.split("/")[-1]
            rows = store.runs(task=task, optimizer=opt, phase="tune")
            assert sorted(r["trial"] for r in rows) == sorted(t.number for t in done)  # once each, none failed
            out["studies"][s.study_name] = sorted(
                (-1 if t.user_attrs.get("default") else t.user_attrs["qmc_id"], tuple(sorted(t.params.items())),
                 round(t.value, 9)) for t in done)
            finals = store.runs(task=task, optimizer=opt, phase="final")
            assert sorted(r["seed"] for r in finals) == list(range(1000, 1000 + SEEDS))
            out["finals"] += [(task, opt, r["seed"], round(r["value"], 9)) for r in finals]
        out["finals"].sort()
        meta = [store.get_meta(k) for k in ("config", "tasks", "spaces")]
        assert PASSWORD not in repr(meta)
    finally:
        store.close()
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same suite in one process with one worker: what every shared run must reproduce."""
    out = tmp_path_factory.mktemp("one")
    text = _finish(_bench(out, "--workers", "1"))
    return _screen(text), _audit(f"sqlite:///{out}/adamlab.db")


class _Rows:
    """Counts the stored tuning rows (cheaply: one engine, opened once the tables exist)."""

    def __init__(self, url: str):
        from adamlab.lab.storages import parse
        self.target, self.store = parse(url), None

    def __call__(self) -> int:
        try:
            if self.store is None:
                self.store = Store(self.target.store, wal=self.target.wal)
            return self.store.count_runs(phase="tune")
        except Exception:  # noqa: BLE001 - not created yet
            return 0

    def wait(self, n: int, p) -> None:
        deadline = time.monotonic() + WAIT
        while self() < n:
            assert time.monotonic() < deadline, f"fewer than {n} trials stored in {WAIT} s"
            assert p.poll() is None, p.communicate()[1]
            time.sleep(0.25)

    def close(self):
        if self.store is not None:
            self.store.close()


def _freeze_while_running(url: str, p) -> list[int]:
    """Stop p and its workers (SIGSTOP) at a moment when the storage holds a digits_mlp trial running in one of
    them, and return the workers' pids. Frozen, no trial can finish between the look and the kill: a trial seen
    running just before an unfrozen kill finished first once (CI, a machine loaded past its cores)."""
    from adamlab.lab.storages import OWNER_ATTR

    from .test_storages import _children

    storage = open_storage(url)

    def running_in(kids: set[int], young: bool) -> bool:
        now = datetime.now()
        for s in storage.get_all_studies():
            if s.study_name.startswith("digits_mlp"):
                for t in storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False, states=(TrialState.RUNNING,)):
                    if (t.system_attrs.get(OWNER_ATTR) or {}).get("pid") in kids and t.datetime_start is not None \
                            and (not young or (now - t.datetime_start).total_seconds() < 0.5):
                        return True
        return False

    deadline = time.monotonic() + WAIT
    while True:
        assert time.monotonic() < deadline, "no trial of the bench ran in time"
        assert p.poll() is None, p.communicate()[1]
        kids = set(_children(p.pid))
        if kids and running_in(kids, young=True):  # a trial just started: likely still running once frozen
            for pid in (p.pid, *kids):
                os.kill(pid, signal.SIGSTOP)
            if running_in(kids, young=False):  # the stored state can no longer change under us
                return sorted(kids)
            for pid in (p.pid, *kids):
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_two_benches_one_killed_and_restarted_match_one_process(kind, tmp_path, request, one_process):
    """PostgreSQL: three machines as far as the benches can tell (A, B, then A's replacement C), so A's
    trials come back through their stale heartbeats only; journal: one machine, A restarted in place (its
    dead processes are seen at once)."""
    url = request.getfixturevalue("pg_url") if kind == "postgresql" else f"journal:{tmp_path}/shared/journal.log"
    extra = ["--storage", url, "--workers", "2", "--heartbeat", "2"]
    ids = ("A", "B", "C") if kind == "postgresql" else (None, None, None)
    t0, rows = time.monotonic(), _Rows(url)
    a = _bench(tmp_path / "a", *extra, machine=ids[0])  # machine A
    try:
        rows.wait(3, a)
        b = _bench(tmp_path / "b", *extra, machine=ids[1])  # machine B joins while A runs
        try:
            rows.wait(6, a)  # digits_mlp goes first (the longest task): most of its trials are still to run
            kids = _freeze_while_running(url, a)
            for pid in (a.pid, *kids):  # A dies with trials running: the whole machine, all at once
                os.kill(pid, signal.SIGKILL)
            a.wait(timeout=WAIT)
            assert rows() < len(TASKS) * len(OPTS) * TRIALS  # killed mid-run
            rows.close()
            a = _bench(tmp_path / "a", *extra, machine=ids[2])  # ... and is started again, B still running
            text_b = _finish(b)
        finally:
            if b.poll() is None:
                b.kill()
        text_a = _finish(a)
    finally:
        if a.poll() is None:
            a.kill()
    elapsed = time.monotonic() - t0
    screen, audit = one_process
    shared = _audit(url)
    assert shared["studies"] == audit["studies"]  # the same points with the same results
    assert shared["finals"] == audit["finals"]  # the same best settings re-run over the same seeds
    assert shared["failed"] >= 1  # the kill landed on running trials, and they were done again
    assert _screen(text_a) == screen and _screen(text_b) == screen
    r = subprocess.run([sys.executable, "-m", "adamlab.cli", "report", "--storage", url, str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=WAIT, cwd=ROOT, check=False,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    assert _screen(r.stdout) == screen  # a third machine's report sees all the work
    assert PASSWORD not in text_a + text_b + r.stdout + r.stderr
    print(f"\n{kind}: two benches, one killed and restarted: {elapsed:.1f} s")

