"""The claims ledger and the analysis, computed from a synthetic database with known answers."""
import pytest

from adamlab.lab.analysis import lattice, leaderboard, load
from adamlab.lab.claims import directional, ledger
from adamlab.lab.report import build_report
from adamlab.lab.store import Store

OPTS = ["adam", "adamw", "coupledadam", "exadam", "adamcm"]
TASKS = {"word_lm": ("lm", False), "digits_cnn": ("vision", True), "sharp_flat": ("landscape", False)}


def _data(task, opt):
    """(final losses, accuracies, extras) for 3 seeds."""
    base = {"word_lm": [5.0, 5.01, 5.02], "digits_cnn": [0.3, 0.31, 0.32], "sharp_flat": [0.3, 0.31, 0.32]}[task]
    losses, accs = list(base), [0.95, 0.951, 0.949]
    extras = [{} for _ in range(3)]
    if task == "word_lm":
        iso = {"coupledadam": [0.80, 0.82, 0.81]}.get(opt, [0.30, 0.31, 0.29])
        ratio = {"coupledadam": [0.02, 0.03, 0.025]}.get(opt, [0.6, 0.62, 0.61])
        extras = [{"isotropy": i, "mean_embedding_ratio": r} for i, r in zip(iso, ratio)]
        if opt == "coupledadam":
            losses = [5.5, 5.51, 5.52]
    if task == "digits_cnn" and opt == "exadam":
        accs = [0.90, 0.91, 0.905]
    if task == "sharp_flat":
        extras = [{"escaped_sharp": opt == "adamcm"} for _ in range(3)]
        if opt == "adam":
            losses = [0.1, 0.11, 0.12]  # the specialisation wins clearly: a lattice violation vs adamcm
    return losses, accs, extras


@pytest.fixture
def results(tmp_path):
    s = Store(str(tmp_path / "adamlab.db"))
    s.put_meta("config", {"suite": "test", "optimizers": OPTS, "trials": 2, "seeds": 3, "storage": "nosuch://"})
    s.put_meta("tasks", {t: {"hash": "h", "description": t, "family": f, "has_accuracy": a}
                         for t, (f, a) in TASKS.items()})
    for task, (_fam, has_acc) in TASKS.items():
        for opt in OPTS:
            losses, accs, extras = _data(task, opt)
            esc = {"escaped_sharp": opt == "adamcm"} if task == "sharp_flat" else {}
            for trial, value in ((0, 9.0), (1, 1.0)):
                s.add_run(task=task, task_hash="h", optimizer=opt, phase="tune", trial=trial, seed=0,
                          params={"lr": 10.0 ** -trial}, result={"value": value}, curves={},
                          extra={**esc, "default": trial == 0})
            for seed, (lo, acc, ex) in enumerate(zip(losses, accs, extras)):
                curve = [(0, 0.0, 10.0), (50, 1.0, lo * 2), (100, 2.0, lo)]
                s.add_run(task=task, task_hash="h", optimizer=opt, phase="final", trial=1, seed=1000 + seed,
                          params={"lr": 0.1}, curves={"val_loss": curve},
                          result={"value": lo, "initial_val_loss": 10.0, "final_val_loss": lo, "best_val_loss": lo,
                                  "final_val_acc": acc if has_acc else None, "steps": 100, "step_time": 0.01,
                                  "opt_step_time": 0.001},
                          extra=ex)
    s.close()
    return str(tmp_path)


def test_directional_rule():
    assert directional([1.0, 1.1, 1.2], [0.0, 0.1, 0.2], 0.5)[0] == "supported"
    assert directional([0.0, 0.1, 0.2], [1.0, 1.1, 1.2], 0.0)[0] == "not supported"
    assert directional([0.0, 0.5, 1.0], [0.1, 0.4, 0.9], 0.0)[0] == "inconclusive"
    # significantly better, but by less than the claimed effect: the claimed size is ruled out
    assert directional([0.11, 0.111, 0.112], [0.10, 0.101, 0.102], 0.05)[0] == "supported"
    assert directional([0.10, 0.101, 0.102], [0.10, 0.101, 0.102], 0.05)[0] == "not supported"
    # a run that blew up (-inf: higher is better) on one side: no CI, the sign decides
    assert directional([0.1, -float("inf"), 0.2], [0.1, 0.2, 0.3], 0.0)[0] == "not supported"
    assert directional([0.1, 0.2, 0.3], [0.1, -float("inf"), 0.2], 0.0)[0] == "supported"
    assert directional([-float("inf")] * 3, [-float("inf")] * 3, 0.0)[0] == "inconclusive"
    # paired by seed: a mapping pairs its values with the other's of the same seed, whatever the order
    assert directional({1: 1.0, 2: 2.0, 3: 3.0}, {3: 2.9, 1: 0.9, 2: 1.9}, 0.0)[0] == "supported"
    assert directional([1.0, 2.0, 3.0], [2.9, 0.9, 1.9], 0.0)[0] == "inconclusive"  # the same, unpaired


def test_ledger_verdicts_from_synthetic_db(results):
    data = load(results)
    tasks = data["tasks"]
    assert tasks["word_lm"].opts["adam"].best_trial == 1  # best of the tuning trials is re-run
    assert tasks["word_lm"].target == pytest.approx(10 - 0.9 * (10 - 5.01))  # best mean of best losses
    rows = {(c.seed, c.claim.split(" (")[0]): c for c in ledger(tasks)}
    v = {k: c.verdict for k, c in rows.items()}
    assert v[("Coupled Adam", "more isotropic embeddings")] == "supported"
    assert v[("Coupled Adam", "mean-embedding ratio nearer 0")] == "supported"
    assert v[("Coupled Adam", "slightly lower loss than AdamW")] == "not supported"
    assert v[("EXAdam", "higher test accuracy than Adam on a CNN")] == "not supported"
    assert v[("AdamCM", "escapes sharp minima on toy landscapes")] == "supported"
    assert "5/5" in rows[("AdamCM", "escapes sharp minima on toy landscapes")].measured
    assert v[("Notes", "a tuned generalisation never underperforms its specialisation")] == "not supported"
    assert v[("AdEMAMix", "reaches AdamW's loss with far fewer steps")] == "not tested"
    lat = [r for r in lattice(tasks) if r["status"] == "VIOLATION"]
    # adam clearly beats adamw and adamcm on sharp_flat; adamw beats coupledadam on word_lm
    assert sorted((r["special"], r["general"], r["task"]) for r in lat) == [
        ("adam", "adamcm", "sharp_flat"), ("adam", "adamw", "sharp_flat"), ("adamw", "coupledadam", "word_lm")]
    board = leaderboard(tasks)
    assert board[0]["optimizer"] == "adam"  # best on sharp_flat, tied elsewhere


def test_report_from_synthetic_db(results):
    summary = build_report(results)
    md = open(f"{results}/summary.md", encoding="utf-8").read()
    assert "| Coupled Adam | more isotropic embeddings" in md and "| supported |" in md
    assert "Claims:" in summary and "supported" in summary


def test_lattice_ignores_significant_but_negligible_differences():
    from adamlab.lab.analysis import OptResult, TaskResult
    from adamlab.lab.stats import mean_ci

    def opt(name, losses):
        o = OptResult(name, [], [], [], 0, {})
        o.losses, o.final_loss = losses, mean_ci(losses)
        return o

    t = TaskResult("t", "", "landscape", False, 10, {}, initial=1.0, best_any=0.0)
    t.opts = {"sgd": opt("sgd", [0.0, 0.0, 0.0]), "momentum": opt("momentum", [1e-17, 1e-17, 1e-17]),
              "adam": opt("adam", [0.5, 0.51, 0.52])}
    rows = {(r["special"], r["general"]): r["status"] for r in lattice({"t": t})}
    assert rows[("sgd", "momentum")] == "within noise"  # p = 0 but 1e-17 of a loss range of 1
    assert rows[("sgd", "adam")] == "VIOLATION" and rows[("momentum", "adam")] == "VIOLATION"


def _task(name, family, accs_by_opt):
    """A TaskResult whose optimizers' final runs have the given accuracies keyed by seed."""
    from adamlab.lab.analysis import OptResult, TaskResult
    from adamlab.lab.stats import mean_ci

    opts = {}
    for opt, accs in accs_by_opt.items():
        o = OptResult(opt, [{"seed": s, "extra": {}} for s in accs], [{} for _ in accs], [], 0, {})
        o.accs, o.losses = list(accs.values()), [1 - a for a in accs.values()]
        o.final_loss, o.final_acc = mean_ci(o.losses), mean_ci(o.accs)
        opts[opt] = o
    return TaskResult(name, "", family, True, 10, opts, initial=2.0, best_any=0.0)


def _row(rows, seed, start):
    return next(c for c in rows if c.seed == seed and c.claim.startswith(start))


def test_claim_rows_are_structured_with_power_and_missing_comparators(results):
    from scipy import stats as st

    from adamlab.lab.stats import mde, seeds_needed

    tasks = load(results)["tasks"]
    ex = _row(ledger(tasks), "EXAdam", "higher test accuracy than Adam on a CNN")
    a, b = [0.90, 0.91, 0.905], [0.95, 0.951, 0.949]
    ref = st.ttest_rel(a, b)
    d = [x - y for x, y in zip(a, b)]
    sd = float(st.tstd(d))
    assert ex.protocol == "tuned" and ex.comparators == ["adam", "signum", "adafactor", "ademamix"]
    assert ex.effect == pytest.approx(sum(d) / 3)
    assert (ex.lo, ex.hi) == pytest.approx(tuple(ref.confidence_interval()), rel=1e-9)
    assert ex.mde == pytest.approx(mde(sd, 3)) and ex.seeds_needed == seeds_needed(0.0117, sd) and ex.claimed == 0.0117
    assert ex.verdict == "not supported"  # EXAdam is 4.5 pt worse: the claimed +1.17 pt is ruled out
    for x in ("signum", "adafactor", "ademamix"):
        assert f"not tested: no runs of {x}" in ex.measured
    assert "the verdict covers only the comparisons above" in ex.measured
    cm = _row(ledger(tasks), "AdamCM", "better accuracy")
    assert "not tested: no runs of sam" in cm.measured and "not tested: no runs of adamcg" in cm.measured
    iso = _row(ledger(tasks), "Coupled Adam", "more isotropic")
    assert iso.level == pytest.approx(1 - 0.05 / 2)  # Holm over two comparisons: the smaller p at alpha/2
    late = _row(ledger(tasks, looks=1, max_looks=3), "Coupled Adam", "more isotropic")
    assert late.hi - late.lo > iso.hi - iso.lo  # the first of three looks spends only part of alpha


def test_open_comparisons_are_the_inconclusive_ones(results):
    from adamlab.lab.claims import open_comparisons

    tasks = load(results)["tasks"]
    # adamcm and adam tie exactly on digits_cnn and word_lm: "better" is neither shown nor ruled out
    assert open_comparisons(tasks, 1, 3) == {"digits_cnn": {"adam", "adamcm"}, "word_lm": {"adam", "adamcm"}}
    assert open_comparisons(tasks, 3, 3) == {}  # no look left


def test_pairing_by_seed_decides_where_welch_cannot():
    from adamlab.lab.stats import welch

    # the seed moves both optimizers by up to 5 pt; EXAdam is 2 pt better on every seed
    base = {1000: 0.90, 1001: 0.95, 1002: 0.85, 1003: 0.92}
    ex = {s: v + 0.02 + 0.001 * (s % 2) for s, v in base.items()}
    tasks = {"digits_cnn": _task("digits_cnn", "vision", {"exadam": ex, "adam": base})}
    row = _row(ledger(tasks), "EXAdam", "higher test accuracy than Adam on a CNN")
    assert welch(list(ex.values()), list(base.values())).lo < 0  # unpaired: inconclusive
    assert row.verdict == "supported" and row.lo > 0 and "paired t, n = 4" in row.measured
    # the same values on different seeds cannot pair: Welch, and the row says so
    moved = {s + 10: v for s, v in ex.items()}
    tasks = {"digits_cnn": _task("digits_cnn", "vision", {"exadam": moved, "adam": base})}
    row = _row(ledger(tasks), "EXAdam", "higher test accuracy than Adam on a CNN")
    assert row.verdict == "inconclusive" and "Welch (0 common seeds)" in row.measured


def test_an_underpowered_row_says_how_many_seeds_would_decide():
    base = {1000: 0.90, 1001: 0.95, 1002: 0.85}
    ex = {1000: 0.93, 1001: 0.93, 1002: 0.87}  # +1.3 pt on average, but +3/-2/+2 pt per seed
    tasks = {"digits_cnn": _task("digits_cnn", "vision", {"exadam": ex, "adam": base})}
    row = _row(ledger(tasks), "EXAdam", "higher test accuracy than Adam on a CNN")
    assert row.verdict == "inconclusive" and row.mde > 0.0117
    assert f"Underpowered: needs ~{row.seeds_needed:.0f} seeds to detect the claimed effect" in row.measured
    assert row.seeds_needed > 3


def _add_protocol_runs(db, task, opt, protocol, accs=None, losses=None, extras=None):
    s = Store(db)
    for seed in range(3):
        lo = (losses or [0.3, 0.31, 0.32])[seed]
        s.add_run(task=task, task_hash="h", optimizer=f"{opt}~{protocol}", phase="final", trial=-1, seed=1000 + seed,
                  params={"lr": 1e-4}, curves={"val_loss": [(0, 0.0, 10.0), (100, 2.0, lo)]},
                  result={"value": lo, "initial_val_loss": 10.0, "final_val_loss": lo, "best_val_loss": lo,
                          "final_val_acc": (accs or [None] * 3)[seed], "steps": 100, "step_time": 0.01,
                          "opt_step_time": 0.001}, extra=(extras or [{}] * 3)[seed])
    s.close()


def test_protocol_claims_use_the_protocol_runs(results):
    """Under the untuned protocol EXAdam wins by 5 pt (paired by seed) although it loses when tuned; AdamCM's toy
    setting escapes on every seed where tuned Adam does not. Each row names its protocol."""
    from adamlab.lab import axes

    db = f"{results}/adamlab.db"
    s = Store(db)
    s.put_meta("config", {**s.get_meta("config"), "protocols": ["untuned-lr1e-4", "adamcm-toy"]})
    s.close()
    _add_protocol_runs(db, "digits_cnn", "adam", "untuned-lr1e-4", accs=[0.80, 0.82, 0.81])
    _add_protocol_runs(db, "digits_cnn", "exadam", "untuned-lr1e-4", accs=[0.85, 0.871, 0.859])
    _add_protocol_runs(db, "sharp_flat", "adamcm", "adamcm-toy", extras=[{"escaped_sharp": True}] * 3)
    before = ledger(load(results)["tasks"])
    data = load(results)
    axes.attach_protocols(data, results)
    after = ledger(data["tasks"])
    assert [c for c in after if c.protocol == "tuned"] == before  # the tuned rows do not change
    rows = {(c.seed, c.protocol): c for c in after if c.protocol != "tuned"}
    assert set(rows) == {("EXAdam", "untuned-lr1e-4"), ("AdamCM", "adamcm-toy")}
    untuned = rows[("EXAdam", "untuned-lr1e-4")]
    assert untuned.verdict == "supported"
    assert untuned.effect == pytest.approx(0.05, abs=1e-9)  # paired mean of the per-seed gains over Adam
    assert "not tested: no runs of signum" in untuned.measured
    tuned = next(c for c in ledger(data["tasks"]) if c.seed == "EXAdam" and c.protocol == "tuned"
                 and c.claim.startswith("higher test accuracy"))
    assert tuned.verdict == "not supported"  # the tuned runs say the opposite: the protocol matters
    toy = rows[("AdamCM", "adamcm-toy")]
    assert "AdamCM 3/3 vs Adam 0/3 runs (escaped_sharp, seeds" in toy.measured
    assert toy.verdict == "inconclusive"  # 3 of 3 against 0 of 3: Fisher p = 0.05, not below it
    md = (build_report(results) and open(f"{results}/summary.md").read())
    assert "untuned-lr1e-4" in md and "adamcm-toy" in md
