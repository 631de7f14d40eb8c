"""The report: always written for what ran, whatever the stored numbers, and it says what it means."""
import math
import os
import re

import pytest

from adamlab.cli import main
from adamlab.lab.report import build_report, html_table, md_table
from adamlab.lab.store import Store
from adamlab.lab.tasks import build_task

from .test_claims import OPTS, results  # noqa: F401 - the synthetic results folder


def _add_task(db, name, family, description, finals, has_accuracy=False):
    """Add a task to a results database: one tuning trial per optimizer and the given final runs."""
    s = Store(db)
    tasks = s.get_meta("tasks")
    tasks[name] = {"hash": "h", "description": description, "family": family, "has_accuracy": has_accuracy}
    s.put_meta("tasks", tasks)
    for opt in OPTS:
        for trial in (0, 1):
            s.add_run(task=name, task_hash="h", optimizer=opt, phase="tune", trial=trial, seed=0,
                      params={"lr": 0.1}, result={"value": math.inf, "diverged": True}, curves={},
                      extra={"default": trial == 0, "error": "RuntimeError: boom"})
        for seed, (result, curves) in enumerate(finals):
            s.add_run(task=name, task_hash="h", optimizer=opt, phase="final", trial=0, seed=1000 + seed,
                      params={"lr": 0.1}, result=result, curves=curves, extra={})
    s.close()


ERRORED = {"value": math.inf, "initial_val_loss": math.nan, "final_val_loss": math.inf, "best_val_loss": math.inf,
           "diverged": True, "steps": 0}


@pytest.mark.parametrize("family", ["lm", "landscape", "vision"])
def test_report_survives_nan_inf_and_missing_numbers(results, family):  # noqa: F811
    db = os.path.join(results, "adamlab.db")
    name = {"lm": "char_gpt", "landscape": "rosenbrock", "vision": "digits_mlp"}[family]
    # every run of this task failed: no initial loss, no curves, infinite losses
    _add_task(db, name, family, "all runs failed", [(ERRORED, {}), (ERRORED, {})], has_accuracy=family == "vision")
    # and one whose curves hold only non-finite values
    inf_curve = {"val_loss": [(0, 0.0, math.inf), (5, math.nan, math.nan)],
                 "early_batch_loss": [(1, 0.0, math.inf)], "unseen_batch_loss": [(1, 0.0, math.nan)]}
    _add_task(db, "quadratic_deep", "lm", "non-finite curves",
              [({**ERRORED, "initial_val_loss": math.inf, "best_val_loss": math.nan}, inf_curve)] * 2)
    build_report(results)
    for png in ("curves", "lr_sensitivity", "profiles"):
        assert os.path.getsize(os.path.join(results, f"{png}.png")) > 1000
    html = open(os.path.join(results, "report.html"), encoding="utf-8").read()
    md = open(os.path.join(results, "summary.md"), encoding="utf-8").read()
    assert f"Task: {name}" in html and f"## Task: {name}" in md and "all runs failed" in md
    assert main(["report", results]) == 0  # the CLI rebuilds it too


def test_bold_winners_keep_their_names(results):  # noqa: F811
    build_report(results)
    html = open(os.path.join(results, "report.html"), encoding="utf-8").read()
    assert "<b></b>" not in html
    bold = set(re.findall(r"<td><b>([^<]*)</b></td>", html))
    assert {"adam", "coupledadam", "exadam"} <= bold  # all tie on digits_cnn: every name in the top group
    assert bold <= set(OPTS)
    assert html_table(["h"], [["**coupledadam**"], ["a**b"]]) == \
        "<table><tr><th>h</th></tr><tr><td><b>coupledadam</b></td></tr><tr><td>ab</td></tr></table>"
    assert "| **coupledadam** |" in md_table(["h"], [["**coupledadam**"]])


def test_report_cites_no_document_the_user_does_not_have(results):  # noqa: F811
    build_report(results)
    for f in ("report.html", "summary.md"):
        text = open(os.path.join(results, f), encoding="utf-8").read()
        assert not re.search(r"\bSPEC\b|section \d", text), f


def test_file_names_in_the_summary_are_escaped(results, tmp_path):  # noqa: F811
    p = tmp_path / "<img src=x onerror=alert(1)>.txt"
    p.write_text("to be or not to be " * 200, encoding="utf-8")
    desc = build_task("char_gpt", {"steps": 10}, text=str(p)).description
    assert "<img src=x onerror=alert(1)>.txt" in desc
    db = os.path.join(results, "adamlab.db")
    s = Store(db)
    tasks = s.get_meta("tasks")
    tasks["word_lm"]["description"] = desc
    s.put_meta("tasks", tasks)
    s.put_meta("skipped", {"cifar10_cnn": f"no CIFAR-10 python batches in <b>{p}</b>"})
    s.close()
    build_report(results)
    md = open(os.path.join(results, "summary.md"), encoding="utf-8").read()
    html = open(os.path.join(results, "report.html"), encoding="utf-8").read()
    assert not re.search(r"(?<!\\)<", md) and "<img src=x" not in html  # no raw HTML: every < is escaped
    assert r"\<img src=x onerror=alert(1)\>.txt" in md  # shown literally by a Markdown viewer
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in html


def test_claims_table_shows_effect_power_and_protocol(results):  # noqa: F811
    from adamlab.lab.analysis import load
    from adamlab.lab.claims import ledger

    build_report(results)
    md = open(os.path.join(results, "summary.md"), encoding="utf-8").read()
    table = md.split("## Claims ledger")[1].split("## ")[0]
    assert "| seed | claim | verdict | effect [CI] | MDE | seeds needed | protocol | measured | rule |" in table
    ex = next(c for c in ledger(load(results)["tasks"]) if c.claim.startswith("higher test accuracy"))
    line = next(x for x in table.splitlines() if "higher test accuracy than Adam on a CNN" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:7] == ["not supported", f"{ex.effect:+.3g} [{ex.lo:+.3g}, {ex.hi:+.3g}]", f"{ex.mde:.2g}",
                          f"{ex.seeds_needed:.0f}", "tuned"]
    html = open(os.path.join(results, "report.html"), encoding="utf-8").read()
    assert "<td class='notsupported'>not supported</td>" in html


def test_claims_after_repeated_looks_use_the_spent_alpha(results):  # noqa: F811
    s = Store(os.path.join(results, "adamlab.db"))
    s.put_meta("config", {**s.get_meta("config"), "looks": 2, "max_looks": 3})
    s.close()
    build_report(results)
    md = open(os.path.join(results, "summary.md"), encoding="utf-8").read()
    line = next(x for x in md.splitlines() if "| Coupled Adam | more isotropic" in x)
    assert "(99.2 %)" in line  # alpha 0.05 / 3 looks, Holm over two comparisons: 1 - 0.0167 / 2
