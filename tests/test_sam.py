"""SAM / ASAM: against a hand-written two-pass reference in float64, the closure contract, schedulers, state dicts.
(Bad arguments: the sam row of WRAPPERS in tests/optim_db.py.)"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import adamlab
from adamlab import SAM


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def _reference(model, x, y, steps, rho, adaptive, lr):
    """SAM written out: g at θ, ε = ρ·T²g/‖Tg‖ (T = |θ| or 1) with the global norm, g' at θ + ε, Adam from θ with
    g' (Adam itself being the plain loop, as the base)."""
    ps = list(model.parameters())
    base = adamlab.Adam(ps, lr=lr, foreach=False)
    for _ in range(steps):
        grads = torch.autograd.grad(_loss(model, x, y), ps)
        with torch.no_grad():
            t = [g * p.abs() if adaptive else g for g, p in zip(grads, ps)]
            norm = torch.sqrt(sum((u * u).sum() for u in t))
            eps = [rho * (u * p.abs() if adaptive else u) / norm for u, p in zip(t, ps)]
            theta = [p.clone() for p in ps]
            for p, e in zip(ps, eps):
                p.add_(e)
        grads2 = torch.autograd.grad(_loss(model, x, y), ps)
        with torch.no_grad():
            for p, th, g in zip(ps, theta, grads2):
                p.copy_(th)
                p.grad = g.clone()
        base.step()
    return [p.detach().clone() for p in ps]


def _closure(opt, model, x, y, calls=None):
    def closure():
        if calls is not None:
            calls.append(1)
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("adaptive,rho", [(False, 0.05), (True, 0.5)], ids=["SAM", "ASAM"])
def test_matches_the_two_pass_reference(adaptive, rho):
    x, y = _data()
    ref = _reference(_model(), x, y, 5, rho, adaptive, 0.01)
    model = _model()
    opt = SAM(model.parameters(), adamlab.Adam, rho=rho, adaptive=adaptive, lr=0.01, foreach=False)
    for _ in range(5):
        opt.step(_closure(opt, model, x, y))
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.detach(), r, rtol=1e-12, atol=1e-14)
    plain = _model()  # and SAM is not the base optimizer alone
    base = adamlab.Adam(plain.parameters(), lr=0.01, foreach=False)
    for _ in range(5):
        _closure(base, plain, x, y)()
        base.step()
    assert not all(torch.allclose(p, q) for p, q in zip(model.parameters(), plain.parameters()))


def test_rho_zero_is_the_base_optimizer():
    x, y = _data()
    a, b = _model(), _model()
    sam = SAM(a.parameters(), adamlab.Adam, rho=0.0, lr=0.01, foreach=False)
    base = adamlab.Adam(b.parameters(), lr=0.01, foreach=False)
    for _ in range(4):
        sam.step(_closure(sam, a, x, y))
        _closure(base, b, x, y)()
        base.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_the_closure_is_called_twice_per_step_and_its_first_loss_returned():
    x, y = _data()
    model = _model()
    opt = SAM(model.parameters(), rho=0.05, lr=0.01)
    calls: list[int] = []
    for k in range(1, 4):
        with torch.no_grad():
            expected = float(_loss(model, x, y))
        loss = opt.step(_closure(opt, model, x, y, calls))
        assert len(calls) == 2 * k
        assert float(loss) == pytest.approx(expected, rel=1e-12)  # the loss at θ, not at θ + ε


def test_a_step_without_a_closure_is_refused():
    model = _model()
    opt = SAM(model.parameters())
    _loss(model, *_data()).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_default_base_is_adam_and_groups_are_shared():
    model = _model()
    opt = SAM(model.parameters(), rho=0.1, lr=0.02)
    assert isinstance(opt.base_optimizer, adamlab.Adam)
    assert opt.param_groups is opt.base_optimizer.param_groups
    g = opt.param_groups[0]
    assert g["rho"] == 0.1 and g["adaptive"] is False and g["lr"] == 0.02
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    opt.step(_closure(opt, model, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.float64))], "rho": 0.2})
    assert len(opt.base_optimizer.param_groups) == 2 and opt.param_groups[1]["rho"] == 0.2


def test_state_dict_round_trip_continues_bit_for_bit():
    x, y = _data()
    model = _model()
    opt = SAM(model.parameters(), adamlab.Adam, rho=0.05, lr=0.01)
    for _ in range(3):
        opt.step(_closure(opt, model, x, y))
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    twin = copy.deepcopy(model)
    twin.load_state_dict(ck["model"])
    opt2 = SAM(twin.parameters(), adamlab.Adam, rho=0.05, lr=0.5)
    opt2.load_state_dict(ck["opt"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups and opt2.param_groups[0]["lr"] == 0.01
    assert opt2.state is opt2.base_optimizer.state and len(opt2.state) == 4
    for _ in range(3):
        opt.step(_closure(opt, model, x, y))
        opt2.step(_closure(opt2, twin, x, y))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_zero_grad_and_a_torch_base():
    x, y = _data()
    model = _model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    opt.step(_closure(opt, model, x, y))
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
