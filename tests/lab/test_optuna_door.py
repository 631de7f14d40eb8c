"""The lab's one door to Optuna's private API (`adamlab.lab._optuna`): with every private use switched to its
public fallback (ADAMLAB_OPTUNA_PUBLIC=1, in a subprocess), a bench gives the same trials, values and final runs,
and its heartbeats are still recorded."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUN = """
import json, sys
from adamlab.lab import _optuna
from adamlab.lab.bench import run_bench
from adamlab.lab.protocol import BenchConfig
from adamlab.lab.storages import open_storage
from adamlab.lab.store import Store
out, url = sys.argv[1], sys.argv[2]
cfg = BenchConfig(out=out, suite="smoke", tasks=["sharp_flat"], optimizers=["sgd", "adam"], trials=3, seeds=2,
                  workers=1, protocols=[], storage=url, heartbeat=1)
run_bench(cfg, quiet=True, log=lambda *a: None)
storage = open_storage(url)
trials = {}
for s in storage.get_all_studies():
    sid = storage.get_study_id_from_name(s.study_name)
    trials[s.study_name] = [(t.number, t.params, t.value, t.state.name) for t in storage.get_all_trials(sid)]
st = Store(storage.target.store, wal=storage.target.wal)
finals = sorted((r["optimizer"], r["seed"], r["final_val_loss"]) for r in st.runs(phase="final"))
beats = sum(1 for s in storage.get_all_studies() for t in storage.get_all_trials(
    storage.get_study_id_from_name(s.study_name)) if "adamlab:heartbeat" in t.system_attrs)
print(json.dumps({"trials": trials, "finals": finals, "stand_in": _optuna.BaseHeartbeat.__name__,
                  "journal_beats": beats}))
"""
def _run(tmp_path, name, kind, private):
    out = tmp_path / name
    url = f"journal:{out}/journal.log" if kind == "journal" else f"sqlite:///{out}/adamlab.db"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "ADAMLAB_OPTUNA_PUBLIC": "0" if private else "1"}
    r = subprocess.run([sys.executable, "-c", RUN, str(out), url], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_public_fallbacks_give_the_same_bench(tmp_path, kind):
    private = _run(tmp_path, "private", kind, True)
    public = _run(tmp_path, "public", kind, False)
    assert private["stand_in"] == "BaseHeartbeat" and public["stand_in"] == "_StandInHeartbeat"
    assert public["trials"] == private["trials"]
    assert public["finals"] == private["finals"]
    assert len(public["finals"]) == 2 * 2  # two optimizers x two seeds
    if kind == "journal":  # the heartbeat thread of our own recorded every trial's heartbeat
        assert public["journal_beats"] == private["journal_beats"] == 2 * 3
