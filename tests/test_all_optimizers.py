"""One table, the same test bodies for every optimizer (torch's OptimizerInfo database is the model).

Each registry name gets several settings; every test below runs on all of them: the three implementation paths
agree in float64, a resumed run continues bit for bit, a parabola is solved, missing and zero gradients are
handled, and bf16 parameters work.
"""

from __future__ import annotations

import pytest
import torch

import adamlab

from trajectory import fake_grad, make_params, max_rel, resume_matches, run

SETTINGS: dict[str, list[dict]] = {
    "sgd": [dict(lr=0.05), dict(lr=0.05, weight_decay=0.1, maximize=True)],
    "momentum": [dict(lr=0.05), dict(lr=0.05, dampening=0.5, weight_decay=0.01)],
    "nesterov": [dict(lr=0.05), dict(lr=0.05, weight_decay=0.1)],
    "adagrad": [dict(lr=0.1), dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1)],
    "rmsprop": [dict(lr=0.01), dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.1, maximize=True)],
    "adam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, initial_accumulator_value=0.5)],
    "adamw": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.5, betas=(0.5, 0.9))],
    "amsgrad": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)],
    "exadam": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, dynamic_step_size=True)],
    "adamx": [dict(lr=0.01), dict(lr=0.01, weight_decay=0.0, betas=(0.8, 0.9))],
    "ademamix": [dict(lr=0.01), dict(lr=0.01, alpha=8.0, alpha_warmup=10, beta3_warmup=10, weight_decay=0.1),
                 dict(lr=0.01, betas=(0.0, 0.999, 0.999))],
    "adamcm": [dict(lr=0.01), dict(lr=0.01, buffer_size=3, synced=False, weight_decay=0.1)],
    "adamcg": [dict(lr=0.01), dict(lr=0.01, buffer_size=3, aggregation="mean", synced=False, weight_decay=0.1),
               dict(lr=0.01, aggregation="mid")],
    "coupledadam": [dict(lr=0.01), dict(lr=0.01, coupled_scale=0.5, weight_decay=0.0)],
    "signum": [dict(lr=0.01), dict(lr=0.01, momentum=0.0, maximize=True), dict(lr=0.01, momentum=0.5, weight_decay=0.1)],
}
CASES = [(name, kw) for name, kws in SETTINGS.items() for kw in kws]
IDS = [f"{name}-{i}" for name in SETTINGS for i in range(len(SETTINGS[name]))]


def make(name, **extra):
    return lambda groups: adamlab.create_optimizer(name, groups, **extra)


def test_table_covers_every_optimizer():
    assert sorted(SETTINGS) == sorted(adamlab.list_optimizers())


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_foreach_matches_loop(name, kw):
    loop, _ = run(make(name, **kw, foreach=False))
    fe, _ = run(make(name, **kw, foreach=True))
    assert max_rel(fe, loop) <= 1e-12
    start, _ = run(make(name, **kw, foreach=False), steps=0)
    assert not torch.equal(loop, start)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_compiled_matches_loop(name):
    kw = SETTINGS[name][-1]
    loop, _ = run(make(name, **kw, foreach=False), steps=12)
    comp, opt = run(make(name, **kw, compiled=True), steps=12)
    assert opt.implementation == "compiled"
    assert max_rel(comp, loop) <= 1e-12


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_exact_resume(name, kw):
    assert resume_matches(make(name, **kw), k=7, total=16)


LR = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "adagrad": 0.5, "rmsprop": 0.02, "exadam": 0.005, "signum": 0.02}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_solves_a_parabola(name):
    """Every optimizer drives a well-conditioned quadratic 100x below its starting loss."""
    target = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    kw = dict(lr=LR.get(name, 0.05))
    if name in ("adamw", "adamx", "coupledadam"):
        kw["weight_decay"] = 0.0
    opt = adamlab.create_optimizer(name, [x], **kw)
    loss0 = float(((x.detach() - target) ** 2).sum())
    for _ in range(400):
        opt.zero_grad()
        loss = ((x - target) ** 2).sum()
        loss.backward()
        opt.step()
    assert float(((x.detach() - target) ** 2).sum()) < loss0 / 100


@pytest.mark.parametrize("name", list(SETTINGS))
def test_none_and_zero_grads(name, path):
    p, q, r = make_params(shapes=((3,), (4,), (2, 2)))
    q0 = q.detach().clone()
    opt = adamlab.create_optimizer(name, [p, q, r], lr=0.01, **path)
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        r.grad = torch.ones_like(r)
        opt.step()
    assert torch.equal(q.detach(), q0) and q not in opt.state
    assert torch.isfinite(p).all() and torch.isfinite(r).all()


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bf16_params(name):
    """bf16 parameters: the maths runs in fp32 and the result stays close to an fp32 run."""
    ps = make_params(dtype=torch.float32, shapes=((16,), (4, 4)))
    qs = [p.detach().to(torch.bfloat16).requires_grad_() for p in ps]
    a = adamlab.create_optimizer(name, ps, lr=0.01)
    b = adamlab.create_optimizer(name, qs, lr=0.01)
    for t in range(5):
        for p, q in zip(ps, qs):
            p.grad = fake_grad(p, t)
            q.grad = p.grad.to(torch.bfloat16)
        a.step()
        b.step()
    for p, q in zip(ps, qs):
        assert q.dtype == torch.bfloat16
        assert torch.allclose(q.float(), p, rtol=0.05, atol=0.05)
