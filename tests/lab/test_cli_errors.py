"""Every bad input: one line on stderr naming the argument or the file, exit status 2, nothing overwritten."""
import os
import pathlib
import pickle
import shutil
import sqlite3
import subprocess

import pytest

from adamlab.cli import main
from adamlab.lab.tasks.cifar import TEST_FILE, TRAIN_FILES

from .test_cifar import make_cifar
from .test_claims import results  # noqa: F401 - a synthetic results folder
from .test_data import Evil

ZH = "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。" * 200
TINY = ["--suite", "smoke", "--optimizers", "sgd", "--trials", "1", "--seeds", "2", "--workers", "1", "--quiet"]


def run(capsys, *argv):
    """main() in this process: (exit status, non-empty stderr lines)."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip()]


def one_line_error(code, lines, *words):
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("adamlab") and ": error: " in lines[0], lines
    for w in words:
        assert w in lines[0], (w, lines)


@pytest.fixture
def lock():
    """lock(folder): make an existing folder read-only, for root too (the immutable attribute); undone after."""
    locked = []

    def make(d):
        d.chmod(0o555)
        locked.append(d)
        try:
            (d / ".probe").touch()
        except OSError:
            return d
        (d / ".probe").unlink()
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(d)]).returncode != 0:
            pytest.skip("cannot make a read-only folder here")
        return d

    yield make
    for d in locked:
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)
        d.chmod(0o755)


@pytest.fixture
def readonly_dir(tmp_path, lock):
    (tmp_path / "ro").mkdir()
    return lock(tmp_path / "ro")


# ---------------------------------------------------------------------------------------------- bench
def test_out_naming_a_file(capsys, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    one_line_error(*run(capsys, "bench", *TINY, "--out", str(f)), "--out", str(f), "not a directory")
    one_line_error(*run(capsys, "bench", *TINY, "--out", str(f / "sub")), "--out", str(f / "sub"))
    assert f.read_text() == "keep me"


def test_out_in_a_read_only_folder(capsys, readonly_dir):
    one_line_error(*run(capsys, "bench", *TINY, "--out", str(readonly_dir / "sub")), "--out", "cannot create")
    one_line_error(*run(capsys, "bench", *TINY, "--out", str(readonly_dir)), "--out", "not writable")
    assert os.listdir(readonly_dir) == []


def test_bench_on_a_garbage_database(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "adamlab.db").write_bytes(b"this is not a database" * 100)
    one_line_error(*run(capsys, "bench", *TINY, "--tasks", "sharp_flat", "--out", str(out)), "adamlab.db")
    assert (out / "adamlab.db").read_bytes() == b"this is not a database" * 100


@pytest.mark.parametrize("args, words", [
    (["--workers", "many"], ["--workers"]),
    (["--suite", "huge"], ["--suite"]),
    (["--tasks", "nosuchtask"], ["--tasks", "nosuchtask"]),
    (["--optimizers", "adam,nosuchopt"], ["--optimizers", "nosuchopt"]),
    (["--text", "/nonexistent/file.txt"], ["--text", "/nonexistent/file.txt"]),
    (["--cifar-dir", "/nonexistent/dir"], ["--cifar-dir", "/nonexistent/dir"]),
    (["--trials", "-3"], ["--trials"]),
    (["--seeds", "1"], ["--seeds"]),
    (["--threads", "0"], ["--threads"]),
])
def test_bad_bench_arguments_are_named(capsys, tmp_path, args, words):
    one_line_error(*run(capsys, "bench", *TINY, "--out", str(tmp_path / "o"), *args), *words)
    assert not (tmp_path / "o").exists()


def test_data_that_cannot_make_the_only_task(capsys, tmp_path):
    text = tmp_path / "zh.txt"
    text.write_text(ZH, encoding="utf-8")
    one_line_error(*run(capsys, "bench", *TINY, "--tasks", "word_lm", "--text", str(text), "--out",
                        str(tmp_path / "o")), "word_lm", str(text), "a-z")
    assert not (tmp_path / "o").exists()


def test_a_crafted_cifar_batch_never_runs_through_the_cli(capsys, tmp_path):
    marker = tmp_path / "PWNED"
    root = make_cifar(str(tmp_path / "c"), n=8, files=TRAIN_FILES[:1])
    with open(os.path.join(root, TEST_FILE), "wb") as f:
        pickle.dump({b"data": Evil(marker), b"labels": [0]}, f, protocol=2)
    one_line_error(*run(capsys, "bench", *TINY, "--tasks", "cifar10_cnn", "--cifar-dir", root, "--out",
                        str(tmp_path / "o")), "cifar10_cnn", TEST_FILE)
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_broken_data_fails_its_task_the_others_run_and_the_report_is_written(cli, tmp_path):
    text = tmp_path / "zh.txt"
    text.write_text(ZH, encoding="utf-8")
    out = tmp_path / "o"
    r = cli("bench", *TINY, "--tasks", "sharp_flat,word_lm", "--text", str(text), "--out", str(out))
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "word_lm" in lines[0] and str(text) in lines[0] and "a-z" in lines[0], r.stderr
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "Task: sharp_flat" in html and "## Task: sharp_flat" in md
    assert "word_lm" in md.split("\n## ")[0] and "a-z" in md.split("\n## ")[0]  # said up front: not run, and why
    con = sqlite3.connect(out / "adamlab.db")
    assert con.execute("SELECT DISTINCT task FROM lab_runs").fetchall() == [("sharp_flat",)]
    con.close()


# ---------------------------------------------------------------------------------------------- report
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_report_on_a_damaged_database(capsys, results, damage):  # noqa: F811
    db = os.path.join(results, "adamlab.db")
    con = sqlite3.connect(db)  # fold the WAL in, so that the main file holds everything
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    raw = open(db, "rb").read()
    assert len(raw) > 8192
    new = {"garbage": os.urandom(len(raw)), "truncated": raw[:len(raw) // 2], "empty": b""}[damage]
    with open(db, "wb") as f:
        f.write(new)
    with open(os.path.join(results, "report.html"), "wb") as f:
        f.write(b"<html>the previous report</html>")
    one_line_error(*run(capsys, "report", results), db)
    assert open(os.path.join(results, "report.html"), "rb").read() == b"<html>the previous report</html>"
    assert not os.path.exists(os.path.join(results, "summary.md"))
    assert open(db, "rb").read() == new


def test_report_into_a_read_only_folder(capsys, results, lock):  # noqa: F811
    before = sorted(os.listdir(results))
    lock(pathlib.Path(results))
    one_line_error(*run(capsys, "report", results), results, "not writable")
    assert sorted(os.listdir(results)) == before


# ---------------------------------------------------------------------------------------------- speed
@pytest.mark.parametrize("args, words", [
    (["--sets", "bogus"], ["--sets", "bogus"]),
    (["--sets", ","], ["--sets"]),
    (["--repeats", "-1"], ["--repeats"]),
    (["--repeats", "0"], ["--repeats"]),
    (["--optimizers", "bogus"], ["--optimizers", "bogus"]),
    (["--optimizers", "adam,"], []),  # a stray comma is fine ...
    (["--paths", "fast"], ["--paths", "fast"]),
    (["--threads", "-1"], ["--threads"]),
    (["--threads", "0"], ["--threads"]),
    (["--device", "nosuchdevice"], ["--device"]),
    (["--repeats", "x"], ["--repeats"]),
])
def test_bad_speed_arguments(capsys, tmp_path, args, words):
    out = tmp_path / "s"
    argv = ["speed", "--quick", "--no-plot", "--no-baselines", "--paths", "loop", "--sets", "small",
            "--optimizers", "adam", "--repeats", "1", "--out", str(out), *args]
    if not words:  # ... the control: these arguments are good, and the run writes its files
        code, _ = run(capsys, *argv)
        assert code == 0 and (out / "speed.json").exists()
        return
    one_line_error(*run(capsys, *argv), *words)
    assert not out.exists()


def test_speed_out_naming_a_file(capsys, tmp_path):
    f = tmp_path / "speed.json"
    f.write_text("keep me")
    one_line_error(*run(capsys, "speed", "--quick", "--optimizers", "adam", "--out", str(f)), "--out", str(f))
    assert f.read_text() == "keep me"
