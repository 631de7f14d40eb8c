"""Where the studies and the runs live, and how many processes on many machines share them safely.

`--storage` takes what users have:

* nothing: ``sqlite:///OUT/adamlab.db`` (studies and runs in one file, as before);
* ``sqlite:///PATH``: the studies and the runs in that file (one machine);
* ``postgresql://USER:PASSWORD@HOST/DB`` (psycopg 3, ``pip install "adamlab[postgres]"``) or
  ``postgresql+psycopg2://...``: Optuna's RDB storage; the lab's run tables live in the same database;
* ``journal:PATH``: Optuna's journal file storage (machines sharing a file system, no server); the runs go to
  the SQLite file ``PATH.adamlab.db`` beside the journal (rollback journal, not WAL, so that it works on a
  network file system with POSIX locks).

Liveness is Optuna's heartbeat: every running trial's process records a heartbeat every `heartbeat` seconds
(RDBStorage(heartbeat_interval, grace_period); on the journal, the same BaseHeartbeat interface written as a
trial system attribute), and only a trial whose heartbeat is older than the grace period is failed
(optuna.storages.fail_stale_trials) and queued again. Asking for a trial (pop of a queued retry, the
quasi-random sampler's counter) is one critical section across all processes: `ask_lock()`, a PostgreSQL
advisory lock, a MySQL named lock, or a POSIX lock on a file beside a SQLite or journal file. Every process
records its trial's first heartbeat before it leaves that section, so a running trial without a heartbeat
seen inside it belongs to a process that died there. A trial also records its owner (boot id, pid namespace,
pid and start time): a process on the same machine that is certainly gone is dead at once, without waiting
for the grace period (a bench killed and restarted at once resumes at once).
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from dataclasses import dataclass

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from ..errors import LabError
from ._optuna import BaseHeartbeat, trial_id

HEARTBEAT = 10  # seconds between heartbeats; a trial silent for GRACE_FACTOR times that is dead
GRACE_FACTOR = 3
HB_ATTR = "adamlab:heartbeat"
OWNER_ATTR = "adamlab:owner"
SERVERS = ("postgresql", "mysql", "mariadb")  # servers whose own lock `ServerLock` uses
LOCK_KEY = 0x6164616D6C6162  # "adamlab": the advisory lock's key
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*heartbeat_interval.* is an experimental feature")

DRIVERS = {  # DBAPI module -> what to install
    "psycopg": 'pip install "adamlab[postgres]"  (psycopg 3)',
    "psycopg2": "pip install psycopg2-binary",
    "pymysql": "pip install pymysql",
    "MySQLdb": "pip install mysqlclient",
    "pg8000": "pip install pg8000",
    "asyncpg": "pip install asyncpg",
}


def mask(url: str) -> str:
    """The URL with its password replaced by ***, for every message and for what is stored."""
    if url.startswith("journal:"):
        return url
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: mask by hand
        return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", url)


def scrub(message: str, url: str) -> str:
    """`message` with the URL and its password (if any) masked."""
    message = message.replace(url, mask(url))
    try:
        password = sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001
        m = re.search(r"://[^/@:]*:([^@/]*)@", url)
        password = m.group(1) if m else None
    if password:
        message = message.replace(str(password), "***")
    return message


@dataclass
class Target:
    kind: str          # "sqlite", "rdb" (a server) or "journal"
    url: str           # the URL as given (with credentials: never printed or stored)
    optuna_url: str    # for RDBStorage (a SQLAlchemy URL, driver explicit) or the journal's path
    store: str         # the lab's run tables: a SQLAlchemy URL
    lock_file: str | None = None  # the ask lock's file (SQLite, journal)
    wal: bool = True

    @property
    def shown(self) -> str:
        return mask(self.url)


def parse(url: str) -> Target:
    """Read a storage URL; LabError (one line, password masked) if it cannot be used."""
    if url.startswith("journal:"):
        path = os.path.abspath(os.path.expanduser(url[len("journal:"):]))
        if not url[len("journal:"):]:
            raise LabError("--storage journal:PATH: the journal file's path is missing")
        return Target("journal", url, path, f"sqlite:///{path}.adamlab.db", f"{path}.adamlab.lock", wal=False)
    try:
        u = sa.engine.make_url(url)
    except Exception:  # noqa: BLE001
        raise LabError(f"--storage {mask(url)}: not a storage URL (sqlite:///PATH, postgresql://USER@HOST/DB, "
                       "journal:PATH)") from None
    if u.drivername in ("postgresql", "postgres"):  # SQLAlchemy's default driver differs between versions
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            raise LabError(f"--storage {mask(url)}: an in-memory database cannot be shared; give a file")
        path = os.path.abspath(u.database)
        return Target("sqlite", url, f"sqlite:///{path}", f"sqlite:///{path}", f"{path}.adamlab.lock")
    if u.get_backend_name() not in SERVERS:
        raise LabError(f"--storage: cannot open storage {mask(url)}: adamlab shares studies on PostgreSQL, MySQL, "
                       f"SQLite or a journal file, not {u.get_backend_name()!r}")
    try:
        dialect = u.get_dialect()
    except Exception:  # noqa: BLE001
        raise LabError(f"--storage: cannot open storage {mask(url)}: unknown database {u.drivername!r}") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        mod = getattr(e, "name", None) or str(e).rsplit(" ", 1)[-1].strip("'\"")
        mod = mod.split(".")[0]
        hint = DRIVERS.get(mod, f"pip install the Python driver {mod!r}")
        raise LabError(f"--storage {mask(url)}: the database driver {mod!r} is not installed; {hint}") from None
    full = u.render_as_string(hide_password=False)
    return Target("rdb", url, full, full)


# ------------------------------------------------------------------------------------------------ owners
def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def _where() -> str | None:
    """This boot of this machine and this pid namespace: where a pid means the same process. The environment
    variable ADAMLAB_MACHINE_ID replaces it (tests: benches on one computer that act as separate machines)."""
    if os.environ.get("ADAMLAB_MACHINE_ID"):
        return "id:" + os.environ["ADAMLAB_MACHINE_ID"]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def owner() -> dict:
    """What a trial records about the process running it."""
    return {"where": _where(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def owner_is_dead(o) -> bool:
    """True only when certain: the owner ran in this machine's boot and pid namespace and is gone. Anywhere
    else (another machine), only its heartbeat can tell."""
    if not isinstance(o, dict) or o.get("where") is None or o.get("where") != _where() or o.get("start") is None:
        return False
    return _proc_start(int(o["pid"])) != o["start"]


def _dead_owners(storage, study_id: int, trials) -> set[int]:
    return {trial_id(storage, study_id, t) for t in trials if owner_is_dead(t.system_attrs.get(OWNER_ATTR))}


# ------------------------------------------------------------------------------------------------ locks
class FileLock:
    """POSIX lock (fcntl.lockf) on a file: released by the kernel when the holder dies; works on NFS."""

    def __init__(self, path: str):
        self.path, self.fd = path, None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None


class ServerLock:
    """A database server's own lock (PostgreSQL advisory lock, MySQL named lock) on a connection of its own:
    released by the server when the holder's connection goes (its process died)."""

    def __init__(self, url: str):
        self.url, self.engine, self.conn = url, None, None

    def __enter__(self):
        if self.engine is None:
            self.engine = sa.create_engine(self.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        self.conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            # a machine that dies holding the lock (power, network) loses its session, and so the lock, within
            # about 30 s: the server probes the idle connection (per-session keepalive settings)
            self.conn.execute(sa.text("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                                      "SET tcp_keepalives_count = 4"))
            self.conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        elif self.engine.dialect.name in ("mysql", "mariadb"):
            self.conn.execute(sa.text("SELECT GET_LOCK('adamlab', 86400)"))
        self.conn.commit()
        return self

    def __exit__(self, *exc):
        try:
            if self.engine.dialect.name == "postgresql":
                self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            elif self.engine.dialect.name in ("mysql", "mariadb"):
                self.conn.execute(sa.text("SELECT RELEASE_LOCK('adamlab')"))
            self.conn.commit()
        finally:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------------------------------------- storages
class LabRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with heartbeats, plus the ask lock and the dead-trial test the lab needs."""

    def __init__(self, target: Target, heartbeat: int):
        # a server: few connections per process (the trial's thread and its heartbeat thread), so that many
        # workers on many machines stay within the server's max_connections
        kwargs: dict = {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 4} if target.kind == "rdb" \
            else {"connect_args": {"timeout": 300}}
        if target.kind == "sqlite":
            os.makedirs(os.path.dirname(target.lock_file), exist_ok=True)
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna 5.1
            warnings.simplefilter("ignore")
            super().__init__(target.optuna_url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                             grace_period=GRACE_FACTOR * heartbeat)
        self.target = target
        if target.kind == "sqlite":
            def pragmas(dbapi_con, _record):  # WAL: readers never block the writer
                dbapi_con.execute("PRAGMA journal_mode=WAL")
                dbapi_con.execute("PRAGMA synchronous=NORMAL")

            sa.event.listen(self.engine, "connect", pragmas)
            self.engine.dispose()
        self._lock = FileLock(target.lock_file) if target.lock_file else ServerLock(target.optuna_url)

    def ask_lock(self):
        return self._lock

    def dead_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose heartbeat is stale, or that have none (only meaningful inside ask_lock), or
        whose process on this machine is gone (no need to wait out the grace period)."""
        stale = set(self._get_stale_trial_ids(study_id))
        stale |= _dead_owners(self, study_id, self.get_all_trials(study_id, deepcopy=False,
                                                                  states=(TrialState.RUNNING,)))
        q = sa.text("SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                    "WHERE t.study_id = :s AND t.state = 'RUNNING' AND h.trial_id IS NULL")
        with self.engine.connect() as c:
            stale |= {r[0] for r in c.execute(q, {"s": study_id})}
        return sorted(stale)


class LabJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage with Optuna's heartbeat interface: the heartbeat is a trial system
    attribute holding the writer's clock (machines sharing a journal need synchronised clocks, e.g. NTP;
    the grace period is 3 heartbeats)."""

    def __init__(self, target: Target, heartbeat: int):
        from optuna.storages.journal import JournalFileBackend

        os.makedirs(os.path.dirname(target.optuna_url), exist_ok=True)
        super().__init__(JournalFileBackend(target.optuna_url))
        self.target, self.heartbeat_interval, self.grace_period = target, heartbeat, GRACE_FACTOR * heartbeat
        self._lock = FileLock(target.lock_file)

    def ask_lock(self):
        return self._lock

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HB_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):  # told, or failed by another process
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [trial_id(self, study_id, t)
                for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if HB_ATTR in t.system_attrs and now - t.system_attrs[HB_ATTR] > self.grace_period]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return None

    def dead_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return sorted(set(self._get_stale_trial_ids(study_id)) | _dead_owners(self, study_id, running) |
                      {trial_id(self, study_id, t) for t in running if HB_ATTR not in t.system_attrs})


def open_storage(url: str, heartbeat: int = HEARTBEAT):
    """The Optuna storage for `url` (LabError, one line and masked, if it cannot be used)."""
    target = parse(url)
    try:
        if target.kind == "journal":
            return LabJournalStorage(target, heartbeat)
        for attempt in range(8):
            try:
                return LabRDBStorage(target, heartbeat)
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                # benches started at once on a fresh database race to create Optuna's tables: one wins, and
                # the others find them on the next try
                if attempt == 7:
                    raise
                time.sleep(0.25 * (attempt + 1))
    except LabError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to open is a user error here
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(scrub(f"cannot open storage {target.shown}: {msg}", url)) from None


@contextlib.contextmanager
def no_lock():
    yield
