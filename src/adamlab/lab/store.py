"""Run storage: every run's summary and curves in SQLite tables beside Optuna's (same file by default).

Each run is written in one transaction (summary row + all curve points), so a reader never sees half a
run, and a UNIQUE key makes re-running a finished run a no-op. WAL mode lets worker processes write
while others read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS lab_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lab_runs (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL, task_hash TEXT NOT NULL, optimizer TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('tune', 'final')),
    trial INTEGER NOT NULL, seed INTEGER NOT NULL, params_hash TEXT NOT NULL, params TEXT NOT NULL,
    value REAL, initial_val_loss REAL, final_val_loss REAL, best_val_loss REAL,
    final_val_acc REAL, best_val_acc REAL, diverged INTEGER NOT NULL DEFAULT 0,
    steps INTEGER, train_time REAL, step_time REAL, opt_step_time REAL,
    extra TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
    UNIQUE (task, task_hash, optimizer, phase, trial, seed, params_hash)
);
CREATE TABLE IF NOT EXISTS lab_curves (
    run_id INTEGER NOT NULL REFERENCES lab_runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL, step INTEGER NOT NULL, time REAL, value REAL
);
CREATE INDEX IF NOT EXISTS lab_curves_run ON lab_curves(run_id, name);
"""

RUN_FIELDS = ("value", "initial_val_loss", "final_val_loss", "best_val_loss", "final_val_acc", "best_val_acc",
              "diverged", "steps", "train_time", "step_time", "opt_step_time")


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _num(x):
    """Non-finite numbers are stored as NULL (read back as inf for losses: they mean divergence)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


class Store:
    def __init__(self, path: str):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=300, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _tx(self, fn):
        """Run fn(conn) inside BEGIN IMMEDIATE ... COMMIT (rolled back on any error)."""
        for attempt in range(50):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:  # pragma: no cover - heavy contention only
                if "locked" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.2)
        try:
            out = fn(self.conn)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return out

    # -- meta ---------------------------------------------------------------------------------------------
    def put_meta(self, key: str, value: Any) -> None:
        txt = json.dumps(_jsonable(value), sort_keys=True)
        self._tx(lambda c: c.execute("INSERT OR REPLACE INTO lab_meta(key, value) VALUES (?, ?)", (key, txt)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM lab_meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- runs ---------------------------------------------------------------------------------------------
    def add_run(self, *, task: str, task_hash: str, optimizer: str, phase: str, trial: int, seed: int,
                params: dict, result: dict, curves: dict[str, Iterable[tuple[int, float, float]]],
                extra: dict | None = None) -> int | None:
        """Insert one finished run with its curves atomically; returns its id, or None if it was already there."""
        ph = params_hash(params)
        extra_txt = json.dumps(_jsonable(extra or {}))

        def write(c):
            cur = c.execute(
                "INSERT OR IGNORE INTO lab_runs(task, task_hash, optimizer, phase, trial, seed, params_hash, params, "
                + ", ".join(RUN_FIELDS) + ", extra, created) VALUES (" + ", ".join("?" * (10 + len(RUN_FIELDS))) + ")",
                (task, task_hash, optimizer, phase, trial, seed, ph, json.dumps(params, sort_keys=True),
                 *[_num(result.get(f)) if f != "diverged" else int(bool(result.get(f))) for f in RUN_FIELDS],
                 extra_txt, time.time()))
            if cur.rowcount == 0:
                return None
            rid = cur.lastrowid
            c.executemany("INSERT INTO lab_curves(run_id, name, step, time, value) VALUES (?, ?, ?, ?, ?)",
                          [(rid, name, int(s), _num(t), _num(v)) for name, pts in curves.items() for s, t, v in pts])
            return rid

        return self._tx(write)

    def has_run(self, *, task: str, task_hash: str, optimizer: str, phase: str, trial: int, seed: int,
                params: dict) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM lab_runs WHERE task=? AND task_hash=? AND optimizer=? AND phase=? AND trial=? AND seed=? "
            "AND params_hash=?", (task, task_hash, optimizer, phase, trial, seed, params_hash(params))).fetchone()
        return row is not None

    def runs(self, **where) -> list[dict]:
        cond = " AND ".join(f"{k} = ?" for k in where) or "1"
        rows = self.conn.execute(f"SELECT * FROM lab_runs WHERE {cond} ORDER BY id", tuple(where.values())).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["params"] = json.loads(d["params"])
            d["extra"] = json.loads(d["extra"])
            for f in ("value", "final_val_loss", "best_val_loss", "initial_val_loss"):
                if d[f] is None:  # non-finite losses are stored as NULL: they mean divergence
                    d[f] = math.inf
            out.append(d)
        return out

    def curves(self, run_id: int) -> dict[str, tuple[list[int], list[float], list[float]]]:
        out: dict[str, tuple[list, list, list]] = {}
        for name, step, t, v in self.conn.execute(
                "SELECT name, step, time, value FROM lab_curves WHERE run_id=? ORDER BY name, step", (run_id,)):
            s, ts, vs = out.setdefault(name, ([], [], []))
            s.append(step)
            ts.append(t if t is not None else math.nan)
            vs.append(v if v is not None else math.inf)
        return out

    def delete_tune_runs(self, *, task: str, task_hash: str, optimizer: str, keep_trials: set[int]) -> int:
        """Drop tuning rows whose Optuna trial did not complete (a process killed between write and tell)."""
        rows = self.conn.execute(
            "SELECT id, trial FROM lab_runs WHERE task=? AND task_hash=? AND optimizer=? AND phase='tune'",
            (task, task_hash, optimizer)).fetchall()
        doomed = [r[0] for r in rows if r[1] not in keep_trials]
        if doomed:
            self._tx(lambda c: c.executemany("DELETE FROM lab_runs WHERE id=?", [(i,) for i in doomed]))
        return len(doomed)
