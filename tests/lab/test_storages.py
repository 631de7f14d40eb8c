"""Storage URLs, credentials, missing drivers, the --out lock and pool workers that die with their parent."""
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from adamlab.lab.files import LabError
from adamlab.lab.storages import mask, parse, scrub

from .conftest import ROOT


def test_mask_hides_passwords_in_every_kind_of_url():
    assert mask("postgresql://bob:s3cret@db.example:5432/lab") == "postgresql://bob:***@db.example:5432/lab"
    assert mask("postgresql+psycopg2://bob:p%40ss@h/lab") == "postgresql+psycopg2://bob:***@h/lab"
    assert mask("mysql+pymysql://bob:pw@h/lab") == "mysql+pymysql://bob:***@h/lab"
    assert mask("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask("journal:/shared/j.log") == "journal:/shared/j.log"
    assert "s3cret" not in mask("not a url://bob:s3cret@h/x")
    msg = scrub("could not connect to postgresql://bob:s3cret@h/lab (password s3cret rejected)",
                "postgresql://bob:s3cret@h/lab")
    assert "s3cret" not in msg and "bob:***@h/lab" in msg


def test_urls_map_to_explicit_drivers_and_the_runs_live_beside_the_studies(tmp_path):
    t = parse("postgresql://bob:pw@h/lab")  # psycopg 3, whatever SQLAlchemy's default for postgresql:// is
    assert t.kind == "rdb" and t.optuna_url.startswith("postgresql+psycopg://") and t.store == t.optuna_url
    assert parse("postgres://bob:pw@h/lab").optuna_url.startswith("postgresql+psycopg://")
    assert parse("postgresql+psycopg2://bob:pw@h/lab").optuna_url.startswith("postgresql+psycopg2://")
    t = parse(f"journal:{tmp_path}/j.log")
    assert t.kind == "journal" and t.store == f"sqlite:///{tmp_path}/j.log.adamlab.db" and not t.wal
    t = parse(f"sqlite:///{tmp_path}/s.db")
    assert t.kind == "sqlite" and t.store == t.optuna_url == f"sqlite:///{tmp_path}/s.db"
    for bad in ("journal:", "sqlite://", "nosuchdb://x/y", "mssql+pyodbc://bob:pw@h/lab"):
        with pytest.raises(LabError):
            parse(bad)


def test_a_missing_driver_says_what_to_install_without_the_password():
    with pytest.raises(LabError) as e:
        parse("postgresql+pg8000://bob:s3cret@h/lab")
    assert "pip install pg8000" in str(e.value) and "s3cret" not in str(e.value) and "\n" not in str(e.value)


def _cli(*args, env_extra=None, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "adamlab.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_cli_without_psycopg_is_one_line_naming_the_extra(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "psycopg.py").write_text("raise ImportError(\"No module named 'psycopg'\", name='psycopg')\n")
    path = os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])
    r = _cli("bench", "--suite", "smoke", "--out", str(tmp_path / "o"), "--quiet",
             "--storage", "postgresql://bob:s3cret@127.0.0.1:1/lab", env_extra={"PYTHONPATH": path})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert 'pip install "adamlab[postgres]"' in lines[0] and "s3cret" not in r.stderr + r.stdout


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    r = _cli("bench", "--suite", "smoke", "--out", str(tmp_path / "o"), "--quiet",
             "--storage", "postgresql+psycopg2://bob:s3cret@127.0.0.1:1/lab")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "cannot open storage" in lines[0], r.stderr
    assert "s3cret" not in r.stderr + r.stdout and "bob:***@127.0.0.1:1/lab" in lines[0]


def test_a_second_bench_on_the_same_out_refuses_at_once(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    fd = os.open(out / ".adamlab.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running bench holds
    try:
        r = _cli("bench", "--suite", "smoke", "--tasks", "sharp_flat", "--optimizers", "sgd", "--out", str(out),
                 "--quiet")
    finally:
        os.close(fd)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "another adamlab bench is using this folder" in lines[0], r.stderr
    assert not (out / "adamlab.db").exists()  # nothing written


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == pid and b"--multiprocessing-fork" in cmd:
            kids.append(int(d))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _rows(db: str) -> int:
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM lab_runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG is Linux")
def test_pool_workers_killed_while_starting_die_with_the_bench(tmp_path):
    """kill -9 of the bench while its spawned workers are still importing: they exit instead of living on and
    storing trials (they set PDEATHSIG before any heavy import, then check their parent is still there)."""
    out = str(tmp_path / "o")
    p = subprocess.Popen([sys.executable, "-m", "adamlab.cli", "bench", "--suite", "smoke", "--tasks", "digits_mlp",
                          "--optimizers", "sgd,adam", "--trials", "20", "--seeds", "2", "--workers", "2", "--out", out,
                          "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    kids: list[int] = []
    deadline = time.monotonic() + 120
    while len(kids) < 2 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
        kids = _children(p.pid)
    assert len(kids) == 2, "the bench never started its two workers"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    rows_at_kill = _rows(os.path.join(out, "adamlab.db"))
    deadline = time.monotonic() + 60
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [k for k in kids if _alive(k)]
    for k in alive:  # leave nothing behind, whatever the outcome
        os.kill(k, signal.SIGKILL)
    assert alive == []
    assert _rows(os.path.join(out, "adamlab.db")) == rows_at_kill


def test_progress_is_a_few_plain_lines_with_the_study_wide_count_when_not_a_terminal(capsys):
    from adamlab.lab.bench import Progress

    done = [0]
    bar = Progress("tuning", 40, lambda: done[0], quiet=False, log=print)
    for i in range(1000):  # a thousand finished runs, most of them by other machines
        done[0] = min(40, i // 25)
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["adamlab: tuning 0/40 (all machines)", "adamlab: tuning 39/40 (all machines)"]
    quiet = Progress("tuning", 40, lambda: 40, quiet=True, log=print)
    quiet.update()
    quiet.close()
    assert capsys.readouterr().err == ""
