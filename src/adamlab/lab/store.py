"""Run storage: every run's summary and curves in the lab's own tables, beside Optuna's (same database).

The tables (lab_meta, lab_runs, lab_curves, and a `schema_version` row in lab_meta) are SQLAlchemy Core, so
one code path serves the default SQLite file in `--out`, a SQLite file beside a journal storage, and a
PostgreSQL (or other) server given with `--storage`: every machine's bench writes its runs where every
machine's report reads them.

Each run is written in one transaction (summary row + all curve points), so a reader never sees half a
run, and a UNIQUE key with INSERT ... ON CONFLICT DO NOTHING makes writing a finished run again (a resumed
bench, or two benches that ran the same final seed at once) a no-op: it is stored once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

SCHEMA_VERSION = 1

META = sa.MetaData()
lab_meta = sa.Table("lab_meta", META, sa.Column("key", sa.String(255), primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
lab_runs = sa.Table(
    "lab_runs", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(100), nullable=False), sa.Column("task_hash", sa.String(100), nullable=False),
    sa.Column("optimizer", sa.String(100), nullable=False),
    sa.Column("phase", sa.String(10), sa.CheckConstraint("phase IN ('tune', 'final')"), nullable=False),
    sa.Column("trial", sa.Integer, nullable=False), sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("params_hash", sa.String(40), nullable=False), sa.Column("params", sa.Text, nullable=False),
    *[sa.Column(f, sa.Float) for f in ("value", "initial_val_loss", "final_val_loss", "best_val_loss",
                                       "final_val_acc", "best_val_acc")],
    sa.Column("diverged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("steps", sa.Integer), *[sa.Column(f, sa.Float) for f in ("train_time", "step_time", "opt_step_time")],
    sa.Column("extra", sa.Text, nullable=False, server_default="{}"), sa.Column("created", sa.Float, nullable=False),
    sa.UniqueConstraint("task", "task_hash", "optimizer", "phase", "trial", "seed", "params_hash"),
)
lab_curves = sa.Table(
    "lab_curves", META,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("lab_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False), sa.Column("step", sa.Integer, nullable=False),
    sa.Column("time", sa.Float), sa.Column("value", sa.Float),
    sa.Index("lab_curves_run", "run_id", "name"),
)

RUN_FIELDS = ("value", "initial_val_loss", "final_val_loss", "best_val_loss", "final_val_acc", "best_val_acc",
              "diverged", "steps", "train_time", "step_time", "opt_step_time")


class SchemaError(Exception):
    """The database holds lab tables of a newer adamlab."""


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


def sqlite_engine(path: str, *, wal: bool = True) -> sa.Engine:
    """A SQLite engine whose write transactions are BEGIN IMMEDIATE (no lock upgrade deadlocks), 300 s busy
    timeout; WAL unless the file may sit on a network file system (wal=False: the journal storage's run file)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 300}, poolclass=sa.pool.NullPool)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_con, _record):
        dbapi_con.isolation_level = None  # the driver's implicit BEGIN off: SQLAlchemy's begin event decides
        dbapi_con.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
        dbapi_con.execute("PRAGMA synchronous=NORMAL" if wal else "PRAGMA synchronous=FULL")
        dbapi_con.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


class Store:
    """`target`: a file path (SQLite) or a SQLAlchemy URL / Engine (the database of `--storage`)."""

    def __init__(self, target, *, wal: bool = True):
        if isinstance(target, sa.Engine):
            self.engine = target
        else:
            target = os.fspath(target)
            if "://" in target and not target.startswith("sqlite"):
                self.engine = sa.create_engine(target, pool_pre_ping=True, pool_size=1, max_overflow=2)
            else:
                path = target.split(":///", 1)[1] if target.startswith("sqlite") else target
                self.engine = sqlite_engine(path, wal=wal)
        self.dialect = self.engine.dialect.name
        self._create()

    def _create(self) -> None:
        for attempt in range(5):  # two processes creating the tables at once: one wins, the other sees them
            try:
                with self._write() as c:
                    META.create_all(c, checkfirst=True)
                    row = c.execute(sa.select(lab_meta.c.value).where(lab_meta.c.key == "schema_version")).first()
                    if row is None:
                        self._insert_ignore(c, lab_meta, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
                    elif int(json.loads(row[0])) > SCHEMA_VERSION:
                        raise SchemaError(f"the lab tables have schema version {row[0]}; this adamlab reads "
                                          f"version {SCHEMA_VERSION} (upgrade adamlab)")
                return
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self):
        """A write transaction (BEGIN IMMEDIATE on SQLite), committed at the end, rolled back on any error."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(write=True)
            with conn.begin():
                yield conn

    def _insert_ignore(self, conn, table, rows: list[dict], returning=None):
        """INSERT ... ON CONFLICT DO NOTHING; returns the new row's `returning` column, or None if it existed."""
        if self.dialect in ("sqlite", "postgresql"):
            mod = sqlite_dialect if self.dialect == "sqlite" else pg_dialect
            stmt = mod.insert(table).on_conflict_do_nothing()
            if returning is not None:
                row = conn.execute(stmt.returning(returning), rows[0]).first()
                return None if row is None else row[0]
            conn.execute(stmt, rows)
            return None
        try:  # other databases: a savepoint, and the UNIQUE key's error means "already there"
            with conn.begin_nested():
                res = conn.execute(table.insert(), rows[0] if returning is not None else rows)
            return res.inserted_primary_key[0] if returning is not None else None
        except sa.exc.IntegrityError:
            return None

    # -- meta ---------------------------------------------------------------------------------------------
    def put_meta(self, key: str, value: Any, *, keep: bool = False) -> None:
        """Set a meta value; with `keep`, only if the key is not there yet (the first writer wins)."""
        txt = json.dumps(_jsonable(value), sort_keys=True)
        with self._write() as c:
            if keep or c.execute(sa.update(lab_meta).where(lab_meta.c.key == key).values(value=txt)).rowcount == 0:
                self._insert_ignore(c, lab_meta, [{"key": key, "value": txt}])

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as c:
            row = c.execute(sa.select(lab_meta.c.value).where(lab_meta.c.key == key)).first()
        return json.loads(row[0]) if row else default

    # -- runs ---------------------------------------------------------------------------------------------
    def add_run(self, *, task: str, task_hash: str, optimizer: str, phase: str, trial: int, seed: int,
                params: dict, result: dict, curves: dict[str, Iterable[tuple[int, float, float]]],
                extra: dict | None = None) -> int | None:
        """Insert one finished run with its curves atomically; returns its id, or None if it was already there."""
        row = {"task": task, "task_hash": task_hash, "optimizer": optimizer, "phase": phase, "trial": int(trial),
               "seed": int(seed), "params_hash": params_hash(params), "params": json.dumps(params, sort_keys=True),
               **{f: _num(result.get(f)) if f != "diverged" else int(bool(result.get(f))) for f in RUN_FIELDS},
               "extra": json.dumps(_jsonable(extra or {})), "created": time.time()}
        if row["steps"] is not None:
            row["steps"] = int(row["steps"])
        points = [{"name": name, "step": int(s), "time": _num(t), "value": _num(v)}
                  for name, pts in curves.items() for s, t, v in pts]  # a bad point fails here, before writing
        with self._write() as c:
            rid = self._insert_ignore(c, lab_runs, [row], returning=lab_runs.c.id)
            if rid is not None and points:
                c.execute(lab_curves.insert(), [{**p, "run_id": rid} for p in points])
        return rid

    def has_run(self, *, task: str, task_hash: str, optimizer: str, phase: str, trial: int, seed: int,
                params: dict) -> bool:
        r = lab_runs.c
        q = sa.select(r.id).where(r.task == task, r.task_hash == task_hash, r.optimizer == optimizer,
                                  r.phase == phase, r.trial == trial, r.seed == seed,
                                  r.params_hash == params_hash(params))
        with self.engine.connect() as c:
            return c.execute(q).first() is not None

    def runs(self, **where) -> list[dict]:
        q = sa.select(lab_runs).where(*[lab_runs.c[k] == v for k, v in where.items()]).order_by(lab_runs.c.id)
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
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

    def count_runs(self, **where) -> int:
        q = sa.select(sa.func.count()).select_from(lab_runs).where(*[lab_runs.c[k] == v for k, v in where.items()])
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def curves(self, run_id: int) -> dict[str, tuple[list[int], list[float], list[float]]]:
        out: dict[str, tuple[list, list, list]] = {}
        cv = lab_curves.c
        q = sa.select(cv.name, cv.step, cv.time, cv.value).where(cv.run_id == run_id).order_by(cv.name, cv.step)
        with self.engine.connect() as c:
            for name, step, t, v in c.execute(q):
                s, ts, vs = out.setdefault(name, ([], [], []))
                s.append(step)
                ts.append(t if t is not None else math.nan)
                vs.append(v if v is not None else math.inf)
        return out

    def delete_tune_runs(self, *, task: str, task_hash: str, optimizer: str, drop_trials: set[int]) -> int:
        """Drop tuning rows of trials that can never complete (FAIL: a process killed between write and tell,
        or a trial another process took as dead). Rows of running trials are never touched: their process
        may be alive and about to tell."""
        if not drop_trials:
            return 0
        r = lab_runs.c
        with self._write() as c:
            ids = [i for (i,) in c.execute(sa.select(r.id).where(
                r.task == task, r.task_hash == task_hash, r.optimizer == optimizer, r.phase == "tune",
                r.trial.in_(sorted(drop_trials))))]
            if ids:
                c.execute(sa.delete(lab_curves).where(lab_curves.c.run_id.in_(ids)))
                c.execute(sa.delete(lab_runs).where(r.id.in_(ids)))
        return len(ids)
