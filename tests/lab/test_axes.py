"""The lab's paired design, the papers' protocols, the tuning-budget axis, the profile score and the time split."""
import math
import sqlite3

import pytest
import torch

from adamlab.lab import axes, protocols
from adamlab.lab.analysis import OptResult, TaskResult, load
from adamlab.lab.bench import run_bench
from adamlab.lab.protocol import FINAL_SEED0, BenchConfig
from adamlab.lab.suites import SUITES
from adamlab.lab.tasks import build_task

SMOKE = SUITES["smoke"]["tasks"]


@pytest.mark.parametrize("name", [n for n in SMOKE if build_task(n, SMOKE[n]).available()[0]])
def test_a_seed_fixes_initialisation_and_data_order_for_every_optimizer(name):
    """With lr 0 no optimizer moves the weights, so the training losses are those of the initial weights on the
    batches in the order the seed draws them: equal for SGD and Adam under one seed, different under another."""
    task = build_task(name, {**SMOKE[name], "steps": 6, "eval_every": 1})

    def curve(make, seed):
        res = task.run(lambda m: make(m.parameters() if isinstance(m, torch.nn.Module) else m), seed, False)
        return res.initial_val_loss, [v for _, _, v in res.curves.get("train_loss", res.curves["val_loss"])]

    sgd = curve(lambda p: torch.optim.SGD(p, lr=0.0), FINAL_SEED0)
    adam = curve(lambda p: torch.optim.Adam(p, lr=0.0), FINAL_SEED0)
    other = curve(lambda p: torch.optim.SGD(p, lr=0.0), FINAL_SEED0 + 1)
    assert len(sgd[1]) >= 6
    assert sgd == adam
    assert other != sgd


def _runs(out, where=""):
    con = sqlite3.connect(f"{out}/adamlab.db")
    try:
        return con.execute("SELECT task, optimizer, trial, seed, params FROM lab_runs WHERE phase = 'final' "
                           + where).fetchall()
    finally:
        con.close()


def test_protocols_and_budgets_run_beside_the_tuned_protocol(tmp_path):
    cfg = BenchConfig(out=str(tmp_path), suite="smoke", tasks=["sharp_flat", "digits_mlp"],
                      optimizers=["sgd", "adam", "adamcm"], trials=2, seeds=2, workers=1,
                      protocols=["adamcm-toy"], budgets=[1, 3], budget_tasks=["digits_mlp"])
    run_bench(cfg, quiet=True, log=lambda *a: None)
    data = load(str(tmp_path))
    # the budget-axis task tuned 3 trials, the other the bench's 2
    assert {len(o.tune) for o in data["tasks"]["digits_mlp"].opts.values()} == {2}  # the main analysis: 2
    three = load(str(tmp_path), trials=3)["tasks"]
    assert {len(o.tune) for o in three["digits_mlp"].opts.values()} == {3}
    assert {len(o.tune) for o in three["sharp_flat"].opts.values()} == {2}
    # every budget's best point ran over the final seeds
    for k in (1, 2, 3):
        for o in load(str(tmp_path), trials=k)["tasks"]["digits_mlp"].opts.values():
            assert sorted(r["seed"] for r in o.runs) == [FINAL_SEED0, FINAL_SEED0 + 1]
    # the protocol: AdamCM on Adam's tuned setting with C = 5, λ = 0.7, on the landscape only, same seeds
    rows = _runs(tmp_path, "AND optimizer LIKE '%~%'")
    assert {(t, o, tr) for t, o, tr, _, _ in rows} == {("sharp_flat", "adamcm~adamcm-toy", protocols.TRIAL)}
    assert sorted(s for *_, s, _ in rows) == [FINAL_SEED0, FINAL_SEED0 + 1]
    adam = data["tasks"]["sharp_flat"].opts["adam"].params
    import json
    assert json.loads(rows[0][4]) == {**adam, "buffer_size": 5, "priority_decay": 0.7}
    md = (tmp_path / "summary.md").read_text()
    assert "## Protocols" in md and "adamcm-toy" in md
    assert "## Tuning budget" in md and "| 1 trials | 2 trials | 3 trials |" in md
    assert "## Where the time went" in md


def test_protocol_settings_are_data():
    class T:
        family, name, config = "lm", "char_gpt", {"steps": 40}
    tuned = {"adamw": {"lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-7, "weight_decay": 0.1}}
    p = protocols.settings("ademamix-paper", T, tuned, ["adamw", "ademamix"])
    assert p == {"ademamix": {**tuned["adamw"], "alpha": 8.0, "beta3": 0.9999, "alpha_warmup": 40,
                              "beta3_warmup": 40}}
    assert protocols.settings("ademamix-short", T, tuned, ["adamw", "ademamix"])["ademamix"]["beta3"] == 0.999
    assert "beta3_warmup" not in protocols.settings("ademamix-short", T, tuned, ["adamw", "ademamix"])["ademamix"]
    assert protocols.settings("ademamix-paper", T, {}, ["ademamix"]) == {}  # nothing to build on
    assert protocols.settings("adamcm-toy", T, tuned, ["adam", "adamcm"]) == {}  # not a landscape
    T.family, T.name = "vision", "digits_cnn"
    assert protocols.settings("untuned-lr1e-4", T, {}, ["adam", "exadam"]) == {"adam": {"lr": 1e-4},
                                                                               "exadam": {"lr": 1e-4}}
    T.name = "digits_mlp"
    assert protocols.settings("untuned-lr1e-4", T, {}, ["adam"]) == {}
    assert protocols.split(protocols.variant("adamcm", "adamcm-toy")) == ("adamcm", "adamcm-toy")
    assert protocols.split("adam") == ("adam", None)


def _task(name, steps: dict) -> TaskResult:
    opts = {}
    for o, s in steps.items():
        r = OptResult(o, [], [], [], 0, {})
        r.steps_to_target = s
        opts[o] = r
    return TaskResult(name, "", "quadratic", False, 100, opts)


def test_profile_score_is_the_normalised_area_under_the_profile():
    tasks = {"a": _task("a", {"fast": 10, "half": 20, "never": math.inf, "mixed": 10}),
             "b": _task("b", {"fast": 10, "half": 20, "never": math.inf, "mixed": 80})}
    s = axes.profile_scores(tasks, tau_max=4.0)
    assert s["fast"] == pytest.approx(1.0)
    assert s["half"] == pytest.approx(1 - math.log(2) / math.log(4), abs=0.01)  # solved from τ = 2 on
    assert s["never"] == 0.0
    assert s["mixed"] == pytest.approx(0.5)  # one task at τ = 1, the other never within 4×


def test_time_split_adds_up():
    t = _task("a", {"adam": 1})
    t.opts["adam"].runs = [{"train_time": 2.0, "extra": {"wall": 5.0}}, {"train_time": 1.0, "extra": {"wall": 1.0}}]
    rows = axes.time_split({"a": t}, {"tuning": 6.0, "seeds": 2.0, "step timing": 1.0, "workers": 2}, 10.0)
    worker = {r[0].split(" (")[0]: float(r[1]) * 60 for r in rows if r[1]}
    assert worker["training"] == pytest.approx(3.0, rel=1e-2)
    assert worker["rest of each run"] == pytest.approx(3.0, rel=1e-2)
    assert worker["orchestration"] == pytest.approx((6.0 + 2.0) * 2 - 6.0, rel=1e-2)  # the pool's phases


def test_until_decided_adds_seeds_only_where_a_comparison_is_open(tmp_path):
    from adamlab.lab.claims import open_comparisons

    cfg = BenchConfig(out=str(tmp_path), suite="smoke", tasks=["sharp_flat", "digits_mlp"],
                      optimizers=["adam", "adamcm", "adamcg", "exadam"], trials=1, seeds=2, workers=1,
                      protocols=[], until_decided=6)
    logs = []
    run_bench(cfg, quiet=True, log=logs.append)
    data = load(str(tmp_path))
    assert data["meta"]["looks"]["max_looks"] == 3  # 2 seeds, then up to 2 more rounds of 2
    look = data["meta"]["looks"]["look"]
    assert 1 <= look <= 3
    seeds = {(n, o): sorted(r["seed"] for r in opt.runs) for n, t in data["tasks"].items()
             for o, opt in t.opts.items()}
    # every final set has the first 2 seeds, and a set with more got them in whole rounds, in order
    assert all(s[:2] == [FINAL_SEED0, FINAL_SEED0 + 1] and s == list(range(FINAL_SEED0, FINAL_SEED0 + len(s)))
               and len(s) in (2, 4, 6) for s in seeds.values())
    grown = {k for k, s in seeds.items() if len(s) > 2}
    if look > 1:  # the sets that grew are exactly those open at the previous look, seen from the 2-seed data
        assert grown and any("still open" in str(m) for m in logs)
    else:
        assert not grown
    # once the last look is reached nothing is open any more
    assert open_comparisons(data["tasks"], looks=3, max_looks=3) == {}


@pytest.mark.parametrize("proto", sorted(protocols.PROTOCOLS))
def test_every_optimizer_builds_under_every_protocol(proto):
    """A protocol's settings are partial (lr 1e-4 and the defaults, say): every optimizer the bench runs, the
    comparators included, builds from them and steps."""
    from adamlab.lab import space
    from adamlab.lab.tasks.digits import DigitsCNN

    names = space.all_optimizers()
    tuned = {o: space.params_from_optuna(o, space.default_params(o)) for o in names}
    family = protocols.PROTOCOLS[proto].families[0]
    task_name = {"vision": "digits_cnn", "lm": "char_gpt", "landscape": "sharp_flat"}[family]
    task = build_task(task_name, SUITES["default"]["tasks"][task_name])
    settings = protocols.settings(proto, task, tuned, names)
    assert settings
    for opt, params in settings.items():
        model = DigitsCNN(4)
        model(torch.randn(2, 1, 8, 8)).sum().backward()
        o = space.build_optimizer(opt, model, params)
        o.step(lambda: model(torch.randn(2, 1, 8, 8)).sum())
