import math

import optuna
import pytest
import torch

from adamlab import list_optimizers
from adamlab.lab import space
from adamlab.lab.spaces import SEARCH_SPACES, OneMinusLog
from adamlab.lab.tasks import TASK_NAMES, build_task
from adamlab.lab.tasks.charlm import DataError, read_text
from adamlab.lab.tasks.landscapes import LANDSCAPES, LandscapeTask
from adamlab.lab.tasks.quadratic import QuadraticDeep, deep_spectrum_hessian


@pytest.mark.parametrize("name", list_optimizers())
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_search_space_suggestions_are_in_range(name):
    study = optuna.create_study(sampler=optuna.samplers.QMCSampler(seed=0, warn_independent_sampling=False))
    sp = SEARCH_SPACES[name]
    for _ in range(4):
        trial = study.ask()
        params = space.suggest(trial, name)
        assert set(params) == set(sp)
        for k, spec in sp.items():
            if isinstance(spec, OneMinusLog):
                assert 1 - spec.high - 1e-12 <= params[k] <= 1 - spec.low + 1e-12
            elif hasattr(spec, "low"):
                assert spec.low <= params[k] <= spec.high
        assert space.params_from_optuna(name, trial.params) == pytest.approx(params)
        study.tell(trial, 1.0)


def test_default_params_are_the_registry_defaults():
    d = space.params_from_optuna("adam", space.default_params("adam"))
    assert d["lr"] == pytest.approx(1e-3) and d["beta1"] == pytest.approx(0.9) and d["beta2"] == pytest.approx(0.999)
    m = space.params_from_optuna("momentum", space.default_params("momentum"))
    assert m["momentum"] == pytest.approx(0.9)


def test_landscapes_have_their_known_minima():
    for name, spec in LANDSCAPES.items():
        t = LandscapeTask(name, steps=5)
        at_min = float(t.value(torch.tensor(spec.minimum, dtype=torch.float64)))
        assert at_min == pytest.approx(0.0, abs=1e-2 if name == "sharp_flat" else 1e-5), name
        assert float(t.value(t.start(0))) > 0.1
    assert LandscapeTask("goldstein_price").f_star == pytest.approx(3.0)


def test_landscape_run_records_path_and_escape():
    t = LandscapeTask("sharp_flat", steps=50)
    res = t.run(lambda p: torch.optim.SGD(p, lr=1e-3), seed=0, final=True)
    assert res.extra["escaped_sharp"] is False and res.extra["reached_global"] is False  # stuck in the sharp basin
    assert len(res.extra["path"]) > 10
    # stuck at the sharp minimum: its curvature is about depth / width^2 = 1 / 0.1^2 (plus the bowl)
    assert 80 < res.extra["sharpness"] < 120
    r = LandscapeTask("beale", steps=300).run(lambda p: torch.optim.Adam(p, lr=0.1), seed=0, final=True)
    assert r.extra["reached_global"] and r.final_val_loss < 1e-3


def test_quadratic_deep_spectrum():
    H = deep_spectrum_hessian(100)
    ev = torch.linalg.eigvalsh(H)
    assert (ev[:90] < 1).all() and (ev[90:] > 30).all() and (ev < 60).all()
    t = QuadraticDeep(steps=50, dim=100)
    res = t.run(lambda m: torch.optim.SGD(m.parameters(), lr=0.01), 0, False)
    assert res.final_val_loss < res.initial_val_loss


def test_text_option_errors_and_custom_corpus(tmp_path):
    with pytest.raises(DataError):
        read_text(str(tmp_path / "missing.txt"))
    p = tmp_path / "t.txt"
    p.write_text("to be or not to be, that is the question. " * 200)
    t = build_task("char_gpt", dict(steps=6, eval_every=3, d=8, layers=1, block=8, batch=4, val_batch=4), text=str(p))
    res = t.run(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), 0, True)
    assert res.final_val_loss < res.initial_val_loss and 0 < res.extra["isotropy"] <= 1
    assert {"early_batch_loss", "unseen_batch_loss"} <= set(res.curves)


def test_every_task_runs_tiny_and_is_deterministic():
    cfgs = {"quadratic_deep": dict(steps=4, dim=20), "digits_mlp": dict(steps=4, eval_every=2),
            "digits_cnn": dict(steps=4, eval_every=2),
            "char_gpt": dict(steps=4, eval_every=2, d=8, layers=1, block=8, batch=4, val_batch=4, max_chars=20000),
            "word_lm": dict(steps=4, eval_every=2, vocab=100, d=8, batch=8, val_batch=32, max_words=5000)}
    for name in TASK_NAMES:
        if name == "cifar10_cnn":
            continue
        t = build_task(name, cfgs.get(name, dict(steps=10)))
        a = t.run(lambda m: space.build_optimizer("adam", m, {"lr": 1e-2}), 3, True)
        b = t.run(lambda m: space.build_optimizer("adam", m, {"lr": 1e-2}), 3, True)
        assert math.isfinite(a.final_val_loss) and a.final_val_loss == b.final_val_loss, name
        assert [(s, v) for s, _, v in a.curves["val_loss"]] == [(s, v) for s, _, v in b.curves["val_loss"]]
