"""A smoke test of ``adamlab speed`` (no timing assertions: a benchmark measures, a test checks)."""

import json

import pytest

from adamlab import speed


def test_quick_run_writes_table_json_and_plot(tmp_path):
    rc = speed.main(["--quick", "--optimizers", "adam,ademamix", "--paths", "loop,foreach", "--sets", "gpt",
                     "--repeats", "2", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "speed.json").read_text())
    rows = {(r["optimizer"], r["impl"]): r for r in data["rows"]}
    for name in ("adam", "ademamix"):
        for impl in ("loop", "foreach"):
            r = rows[(name, impl)]
            assert r["error"] is None and r["ms"] > 0 and r["gbps"] > 0 and r["frac_ceiling"] > 0
    assert rows[("adam", "loop")]["bytes_per_param"] == 28  # read p, g, m, v; write p, m, v (fp32)
    assert rows[("ademamix", "loop")]["bytes_per_param"] == 36
    assert rows[("adam", "loop")]["state_bytes_per_param"] == 8
    assert "torch-fused" in rows[("adam", "loop")]["vs"]
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert "ms/step" in (tmp_path / "speed.txt").read_text()


def test_traffic_model_counts_the_buffer_once_and_one_slot():
    ps = speed.make_params([(4, 3), (5,)])
    opt = speed.make_adamlab("adamcm", ps, "loop", buffer_size=3)
    opt.step()
    r, w, n = speed.traffic(opt, "adamcm")
    assert n == 17
    # read p, g (+ g again for the priority norm), m, v and the 3 slots; write p, m, v and one slot
    assert (r / n, w / n) == (4 * (2 + 1 + 2 + 3), 4 * (1 + 2 + 1))


def test_bad_path_is_rejected():
    with pytest.raises(SystemExit):
        speed.main(["--quick", "--paths", "fast"])
