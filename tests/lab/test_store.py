import math
import sqlite3

import pytest
import sqlalchemy as sa

from adamlab.lab.store import SCHEMA_VERSION, SchemaError, Store


def _add(store, trial=0, seed=0, params=None, value=1.0, phase="tune"):
    return store.add_run(task="t", task_hash="h", optimizer="adam", phase=phase, trial=trial, seed=seed,
                         params=params or {"lr": 0.1}, result={"value": value, "final_val_loss": value,
                                                                "diverged": not math.isfinite(value), "steps": 3},
                         curves={"val_loss": [(0, 0.0, 2.0), (1, 0.1, 1.5), (2, 0.2, value)]},
                         extra={"sharpness": 3.5, "bad": float("nan")})


def test_run_roundtrip_duplicates_and_infinities(tmp_path):
    s = Store(str(tmp_path / "x.db"))
    rid = _add(s)
    assert rid is not None
    assert _add(s) is None  # same key: ignored, not duplicated
    assert _add(s, trial=1, value=float("inf")) is not None
    rows = s.runs(task="t")
    assert [r["trial"] for r in rows] == [0, 1]
    assert rows[1]["value"] == math.inf and rows[1]["diverged"] == 1
    assert rows[0]["extra"] == {"sharpness": 3.5, "bad": None}
    steps, times, vals = s.curves(rid)["val_loss"]
    assert steps == [0, 1, 2] and vals == [2.0, 1.5, 1.0] and times == [0.0, 0.1, 0.2]
    assert s.curves(rows[1]["id"])["val_loss"][2][-1] == math.inf
    assert s.has_run(task="t", task_hash="h", optimizer="adam", phase="tune", trial=0, seed=0, params={"lr": 0.1})
    assert not s.has_run(task="t", task_hash="h", optimizer="adam", phase="tune", trial=0, seed=0, params={"lr": 0.2})


def test_failed_write_leaves_nothing(tmp_path):
    s = Store(str(tmp_path / "x.db"))
    bad_curves = {"val_loss": [(0, 0.0, 1.0), ("not-a-step", 0.0, 1.0)]}
    try:
        s.add_run(task="t", task_hash="h", optimizer="adam", phase="tune", trial=0, seed=0, params={},
                  result={}, curves=bad_curves)
    except ValueError:
        pass
    con = sqlite3.connect(str(tmp_path / "x.db"))
    assert con.execute("SELECT COUNT(*) FROM lab_runs").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM lab_curves").fetchone()[0] == 0


def test_delete_unfinished_tune_rows_and_meta(tmp_path):
    s = Store(str(tmp_path / "x.db"))
    for t in range(4):
        _add(s, trial=t)
    _add(s, trial=3, phase="final", seed=1000)
    assert s.delete_tune_runs(task="t", task_hash="h", optimizer="adam", drop_trials={1, 3}) == 2
    rows = s.runs(task="t")
    assert sorted((r["phase"], r["trial"]) for r in rows) == [("final", 3), ("tune", 0), ("tune", 2)]
    con = sqlite3.connect(str(tmp_path / "x.db"))  # curves of deleted runs went with them
    assert con.execute("SELECT COUNT(DISTINCT run_id) FROM lab_curves").fetchone()[0] == 3
    s.put_meta("config", {"a": [1, 2], "x": float("inf")})
    assert s.get_meta("config") == {"a": [1, 2], "x": None}
    assert s.get_meta("missing", 7) == 7


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_one_run_written_by_two_processes_is_stored_once(kind, tmp_path, request):
    """Two benches that ran the same final seed at once: two writers, one row (ON CONFLICT DO NOTHING)."""
    if kind == "sqlite":
        target = str(tmp_path / "x.db")
    else:
        from adamlab.lab.storages import parse
        target = parse(request.getfixturevalue("pg_url")).store
    a, b = Store(target), Store(target)  # the second one finds the tables the first made
    assert _add(a, phase="final", seed=1000) is not None
    assert _add(b, phase="final", seed=1000) is None
    assert len(a.runs(task="t")) == 1 and a.count_runs(phase="final") == 1
    assert a.get_meta("schema_version") == SCHEMA_VERSION
    b.put_meta("step_times/t", {"adam": 1.0}, keep=True)
    a.put_meta("step_times/t", {"adam": 2.0}, keep=True)  # the first writer's numbers stay
    assert b.get_meta("step_times/t") == {"adam": 1.0}
    a.close()
    b.close()


def test_a_newer_schema_is_refused(tmp_path):
    Store(str(tmp_path / "x.db")).close()
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.begin() as c:
        c.execute(sa.text("UPDATE lab_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    eng.dispose()
    with pytest.raises(SchemaError):
        Store(str(tmp_path / "x.db"))
