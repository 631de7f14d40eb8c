"""The lab's comparators: each builds and trains through ``train_model``; the loop honours their capabilities."""

from __future__ import annotations

import io
import math

import optuna
import pytest
import torch

import adamlab
from adamlab.lab import comparators, space, timing
from adamlab.lab.spaces import OneMinusLog
from adamlab.lab.tasks import build_task
from adamlab.lab.tasks.base import train_model
from adamlab.lab.tasks.digits import DigitsCNN, DigitsMLP, DigitsMLPTask

NAMES = comparators.names()


def test_all_optimizers_lists_registry_and_comparators():
    names = space.all_optimizers()
    assert names[:len(adamlab.list_optimizers())] == adamlab.list_optimizers()
    assert set(NAMES) <= set(names)  # (every one is installed here: schedulefree is a dependency)
    assert set(comparators.PAPER_COMPARATORS) <= set(names)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_space_functions_work_for_every_comparator(name):
    sp = space.search_space(name)
    assert "lr" in sp
    d = space.default_params(name)
    assert set(d) <= {space.optuna_key(k, s) for k, s in sp.items()}
    assert space.params_from_optuna(name, d) == pytest.approx(
        {k: v for k, v in comparators.get(name).defaults.items() if k in space.params_from_optuna(name, d)})
    study = optuna.create_study(sampler=optuna.samplers.QMCSampler(seed=0, warn_independent_sampling=False))
    trial = study.ask()
    params = space.suggest(trial, name)
    assert set(params) == set(sp)
    for k, spec in sp.items():
        if isinstance(spec, OneMinusLog):
            assert 1 - spec.high <= params[k] <= 1 - spec.low
        else:
            assert spec.low <= params[k] <= spec.high
    opt = space.build_optimizer(name, DigitsMLP(16), params)
    assert isinstance(opt, torch.optim.Optimizer)
    assert comparators.capabilities(opt) == comparators.get(name).capabilities
    assert space.describe_space(name)


@pytest.mark.parametrize("name", NAMES + ["signum"])
def test_every_comparator_trains_a_task(name):
    task = DigitsMLPTask(steps=6, eval_every=3, batch=32, hidden=16)
    params = space.params_from_optuna(name, space.default_params(name))
    res = task.run(lambda m: space.build_optimizer(name, m, params), seed=0, final=False)
    assert not res.diverged and res.steps == 6
    assert math.isfinite(res.final_val_loss) and all(math.isfinite(v) for _, _, v in res.curves["train_loss"])
    assert res.opt_step_time > 0


@pytest.mark.parametrize("name", NAMES)
def test_every_comparator_takes_a_parameter_list(name):
    """The landscapes hand over a list with one 1-D tensor (Muon then has no matrix: AdamW alone)."""
    task = build_task("quadratic_deep", dict(dim=8, steps=4, eval_every=2, batch=4, val_size=8))
    params = space.params_from_optuna(name, space.default_params(name))
    res = task.run(lambda m: space.build_optimizer(name, list(m.parameters()), params), seed=0, final=False)
    assert not res.diverged and math.isfinite(res.final_val_loss)
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = space.build_optimizer("muon", [p], space.params_from_optuna("muon", space.default_params("muon")))
    assert list(opt.parts) == ["adamw"]


class _Spy:
    """Wraps an optimizer and records the calls the loop makes on it."""

    def __init__(self, opt, log):
        self._opt, self.log = opt, log
        self.lab_capabilities = opt.lab_capabilities

    def __getattr__(self, name):
        attr = getattr(self._opt, name)
        if name in ("train", "eval", "step", "zero_grad") and callable(attr):
            def call(*a, **k):
                self.log.append(name)
                return attr(*a, **k)
            return call
        return attr


def test_schedulefree_train_and_eval_around_every_evaluation():
    model = DigitsMLP(16)
    log: list[str] = []
    evals: list[bool] = []
    opt = _Spy(space.build_optimizer("schedulefree", model, {"lr": 1e-3}), log)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))

    def evaluate(m):
        evals.append(opt._opt.param_groups[0]["train_mode"])
        log.append("evaluate")
        return {"val_loss": float(torch.nn.functional.cross_entropy(m(x), y))}

    train_model(model, opt, steps=4, eval_every=2, batch=lambda s: (x, y),
                loss=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), evaluate=evaluate)
    assert evals == [False, False, False]  # every evaluation in eval mode (the averaged point)
    calls = [c for c in log if c != "zero_grad"]
    assert calls == ["eval", "evaluate", "train", "train", "step", "step", "eval", "evaluate", "train", "step",
                     "step", "eval", "evaluate", "train", "eval"]
    assert opt._opt.param_groups[0]["train_mode"] is False  # the model is left at the evaluation point


def test_sam_gets_a_closure_called_twice_per_step():
    model = DigitsMLP(16)
    opt = space.build_optimizer("sam", model, {"lr": 1e-3, "rho": 0.05})
    calls = []
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))

    def loss(m, b):
        calls.append(1)
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])

    res = train_model(model, opt, steps=3, eval_every=3, batch=lambda s: (x, y), loss=loss,
                      evaluate=lambda m: {"val_loss": 1.0})
    assert len(calls) == 6 and not res.diverged
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def _split_ids(opt):
    return ({id(p) for g in opt.parts["muon"].param_groups for p in g["params"]},
            {id(p) for g in opt.parts["adamw"].param_groups for p in g["params"]})


def test_muon_gets_exactly_the_hidden_matrices():
    mlp = DigitsMLP(16)
    opt = space.build_optimizer("muon", mlp, space.params_from_optuna("muon", space.default_params("muon")))
    assert isinstance(opt.parts["muon"], torch.optim.Muon) and isinstance(opt.parts["adamw"], torch.optim.AdamW)
    muon, adamw = _split_ids(opt)
    net = mlp.net
    assert muon == {id(net[0].weight), id(net[2].weight)}
    assert adamw == {id(net[0].bias), id(net[2].bias), id(net[4].weight), id(net[4].bias)}
    cnn = DigitsCNN(4)  # convolution filters (4-D) and the head: AdamW; no hidden matrix, so no Muon
    opt = space.build_optimizer("muon", cnn, {"lr": 0.02, "adamw_lr": 1e-3})
    assert list(opt.parts) == ["adamw"]
    lm = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8),
                             torch.nn.Linear(8, 20))
    lm[3].weight = lm[0].weight  # a tied head
    opt = space.build_optimizer("muon", lm, {"lr": 0.02, "adamw_lr": 1e-3, "weight_decay": 0.1})
    muon, adamw = _split_ids(opt)
    assert muon == {id(lm[1].weight)}
    assert adamw == {id(lm[0].weight), id(lm[1].bias), id(lm[2].weight), id(lm[2].bias), id(lm[3].bias)}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(lm[0].weight)] == 0.1 and decay[id(lm[2].weight)] == 0.0 and decay[id(lm[1].weight)] == 0.1


def _train(opt, model, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_combined_muon_state_dict_round_trip():
    params = {"lr": 0.02, "adamw_lr": 1e-3, "weight_decay": 0.01}
    torch.manual_seed(0)
    model = DigitsMLP(16)
    opt = space.build_optimizer("muon", model, params)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # reaches both parts
    _train(opt, model, 3, 1)
    sched.step()
    assert opt.parts["muon"].param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt.parts["adamw"].param_groups[0]["lr"] == pytest.approx(5e-4)
    assert len(opt.state) == len(list(model.parameters()))
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    twin = DigitsMLP(16)
    twin.load_state_dict(ck["model"])
    opt2 = space.build_optimizer("muon", twin, params)
    opt2.load_state_dict(ck["opt"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt2.param_groups[0] is opt2.parts["muon"].param_groups[0]
    _train(opt, model, 3, 2)
    _train(opt2, twin, 3, 2)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="parts"):
        opt2.load_state_dict({"parts": {"muon": ck["opt"]["parts"]["muon"]}})


def test_step_time_benchmark_runs_every_comparator():
    task = DigitsMLPTask(steps=2, hidden=16)
    by_opt = {n: space.params_from_optuna(n, space.default_params(n)) for n in NAMES + ["adam"]}
    times = timing.step_times(task, by_opt, rounds=1, steps=2)
    assert set(times) == set(by_opt) and all(t > 0 for t in times.values())


def test_unknown_comparator_and_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="Unknown comparator"):
        comparators.get("nope")
    row = comparators.get("schedulefree")
    monkeypatch.setitem(comparators._BY_NAME, "schedulefree",
                        comparators.Comparator(**{**row.__dict__, "requires": ("no_such_module_here",)}))
    assert not comparators.available("schedulefree")[0]
    assert "schedulefree" not in space.all_optimizers()
    with pytest.raises(ImportError, match="no_such_module_here"):
        comparators.build("schedulefree", DigitsMLP(8), {})
