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
