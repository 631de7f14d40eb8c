import os
import re
import shutil
import sqlite3

import pytest

from .test_cifar import make_cifar


@pytest.mark.parametrize("args, message", [
    (["--tasks", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["--optimizers", "adam,nosuchopt"], "unknown optimizer 'nosuchopt'"),
    (["--text", "/nonexistent/file.txt"], "text file not found"),
    (["--cifar-dir", "/nonexistent/dir"], "CIFAR-10 directory not found"),
    (["--storage", "nosuchdb://x/y"], "cannot open storage"),
    (["--suite", "smoke", "--seeds", "1"], "--seeds >= 2"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, args, message):
    r = cli("bench", "--out", str(tmp_path / "o"), "--quiet", *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_cifar_dir_without_batches_is_an_error(cli, tmp_path):
    r = cli("bench", "--suite", "smoke", "--cifar-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2 and "no CIFAR-10 python batches" in r.stderr


def test_help_explains_every_option(cli):
    r = cli("bench", "--help")
    assert r.returncode == 0
    for opt in ("--suite", "--tasks", "--optimizers", "--out", "--storage", "--workers", "--threads", "--trials",
                "--seeds", "--text", "--cifar-dir", "--download-cifar", "--quiet"):
        assert re.search(re.escape(opt) + r"\b", r.stdout), opt
    assert cli("report", "--help").returncode == 0


@pytest.mark.slow
def test_smoke_suite_end_to_end_then_report_rebuilds(cli, tmp_path):
    """(How long the smoke suite takes is measured by benchmarks, not asserted here.)"""
    out = str(tmp_path / "res")
    cifar = make_cifar(str(tmp_path / "cifar"), n=64)
    r = cli("bench", "--suite", "smoke", "--out", out, "--cifar-dir", cifar, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    md = open(os.path.join(out, "summary.md"), encoding="utf-8").read()
    assert html.count("data:image/png;base64,") >= 6
    assert not re.search(r"""(src|href)=["']?(https?:|//|[^"'d#])""", html)  # nothing to fetch: opens offline
    from adamlab import list_optimizers
    for name in list_optimizers():
        assert f"| {name} |" in md, name
    for section in ("Leaderboard", "Claims ledger", "Inclusion lattice", "cifar10_cnn", "word_lm", "char_gpt"):
        assert section in md
    ledger = md.split("## Claims ledger")[1].split("## ")[0]
    assert len(re.findall(r"\| (supported|not supported|inconclusive|not tested) \|", ledger)) == 16
    assert "Claims:" in r.stdout and "Leaderboard" in r.stdout
    for png in ("curves.png", "landscapes.png", "profiles.png", "lr_sensitivity.png"):
        assert os.path.getsize(os.path.join(out, png)) > 5000
    # the database alone rebuilds the report
    for f in os.listdir(out):
        if f != "adamlab.db" and not f.startswith("adamlab.db"):
            os.remove(os.path.join(out, f))
    r2 = cli("report", out)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert open(os.path.join(out, "summary.md"), encoding="utf-8").read().split("Generated")[1].split("\n", 1)[1] == \
        md.split("Generated")[1].split("\n", 1)[1]
    # a second bench on the finished folder runs nothing new
    def runs():
        with sqlite3.connect(os.path.join(out, "adamlab.db")) as db:
            return db.execute("SELECT COUNT(*), MAX(rowid) FROM lab_runs").fetchone()

    before = runs()
    r3 = cli("bench", "--suite", "smoke", "--out", out, "--cifar-dir", cifar, "--quiet")
    assert r3.returncode == 0 and runs() == before and before[0] > 0
    shutil.rmtree(out)


def test_report_of_missing_folder(cli, tmp_path):
    r = cli("report", str(tmp_path))
    assert r.returncode == 2 and "no adamlab.db" in r.stderr
