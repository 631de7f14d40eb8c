"""Signum: hand-derived vectors, a plain reference trajectory on every path, momentum switched on mid-run, its
registry row. (Resume, maximize and bad arguments: the signum row of tests/optim_db.py.)"""

from __future__ import annotations

import pytest
import torch

import adamlab
from adamlab.lab.spaces import SEARCH_SPACES, LogFloat, OneMinusLog
from adamlab.optim._base import compiler_available
from adamlab.registry import get_optimizer_info

from conftest import PATH_IDS, PATHS
from trajectory import fake_grad, make_params, max_rel

EAGER, EAGER_IDS = PATHS[:2], PATH_IDS[:2]

G = [1.0, -0.5, 2.0]
SEQ = [G, [-2.0, 1.0, -1.0], [0.5, 0.5, -3.0]]

# θ after three steps from θ₀ = 1 with η = 0.1, derived by hand (see the comments):
HAND = [
    # constant g: sign(m_t) = sign(g) whatever β, so θ₃ = 1 − 3·0.1·sign(g) without decay; with λ = 0.1 each step
    # is θ ← 0.99·θ ∓ 0.1: 0.89, 0.7811, 0.673289 (g > 0) and 1.09, 1.1791, 1.267309 (g < 0)
    ([G] * 3, 0.9, 0.0, [0.7, 1.3, 0.7]),
    ([G] * 3, 0.0, 0.0, [0.7, 1.3, 0.7]),
    ([G] * 3, 0.9, 0.1, [0.673289, 1.267309, 0.673289]),
    ([G] * 3, 0.0, 0.1, [0.673289, 1.267309, 0.673289]),
    # a changing g, β = 0.9: m₁ = (.1, −.05, .2), m₂ = (−.11, .055, .08), m₃ = (−.049, .0995, −.228): signs
    # (+,−,+), (−,+,+), (−,+,−), summing to (−1, 1, 1); β = 0 (signSGD): signs of g, summing to (1, 1, −1)
    (SEQ, 0.9, 0.0, [1.1, 0.9, 0.9]),
    (SEQ, 0.0, 0.0, [0.9, 0.9, 1.1]),
    # with λ = 0.1: θ₁ = .99 − .1·s₁, θ₂ = .99·θ₁ − .1·s₂, θ₃ = .99·θ₂ − .1·s₃
    (SEQ, 0.9, 0.1, [1.071289, 0.869309, 0.873289]),
    (SEQ, 0.0, 0.1, [0.871289, 0.869309, 1.071289]),
]


@pytest.mark.parametrize("path", EAGER, ids=EAGER_IDS)
@pytest.mark.parametrize("grads,beta,wd,want", HAND)
def test_hand_derived_vectors(grads, beta, wd, want, path):
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = adamlab.Signum([p], lr=0.1, momentum=beta, weight_decay=wd, **path)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    assert torch.allclose(p.detach(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-10)
    st = opt.state[p]
    assert float(st["step"]) == 3
    if beta:  # m₃ = 0.271·g for a constant g
        m = torch.tensor([-0.049, 0.0995, -0.228] if grads is SEQ else [0.271, -0.1355, 0.542], dtype=torch.float64)
        assert torch.allclose(st["momentum_buffer"], m, rtol=0, atol=1e-12)
    else:
        assert set(st) == {"step"}  # signSGD keeps no buffer


def _reference(params, grad_seq, lr, beta, wd, maximize=False):
    """Signum written out directly, one tensor at a time."""
    ps = [p.detach().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    for grads in grad_seq:
        for p, m, g in zip(ps, ms, grads):
            g = -g if maximize else g
            p.mul_(1 - lr * wd)
            if beta:
                m.mul_(beta).add_(g, alpha=1 - beta)
                d = m
            else:
                d = g
            p.add_(torch.sign(d), alpha=-lr)
    return ps


def _grads(ps, steps):
    """θ-independent gradients, so that a reference and an optimizer see the same ones."""
    return [[fake_grad(p, t) * (1 + 0.3 * t) for p in ps] for t in range(steps)]


SETTINGS = [dict(lr=0.01, momentum=0.9, weight_decay=0.0), dict(lr=0.02, momentum=0.5, weight_decay=0.1),
            dict(lr=0.01, momentum=0.0, weight_decay=0.05, maximize=True)]


@pytest.mark.parametrize("kw", SETTINGS)
@pytest.mark.parametrize("path", EAGER, ids=EAGER_IDS)
def test_reference_trajectory(kw, path):
    ps = make_params(3, shapes=((6, 5), (7,), (1,), (2, 3, 4)))
    grads = _grads(ps, 12)
    want = _reference(ps, grads, kw["lr"], kw["momentum"], kw["weight_decay"], kw.get("maximize", False))
    opt = adamlab.Signum([{"params": ps[:2]}, {"params": ps[2:]}], **kw, **path)
    for row in grads:
        for p, g in zip(ps, row):
            p.grad = g.clone()
        opt.step()
    for p, w in zip(ps, want):
        assert max_rel(p.detach().flatten(), w.flatten()) <= 1e-12


def test_compiled_reference_trajectory():
    """One compiled configuration (momentum and decay both on) against the reference."""
    kw = SETTINGS[1]
    ps = make_params(4, shapes=((6, 5), (7,), (1,), (2, 3, 4)) + tuple((3 + i,) for i in range(6)))
    grads = _grads(ps, 8)
    want = _reference(ps, grads, kw["lr"], kw["momentum"], kw["weight_decay"])
    opt = adamlab.Signum(ps, **kw, compiled=True)
    for row in grads:
        for p, g in zip(ps, row):
            p.grad = g.clone()
        opt.step()
    assert opt.implementation == ("compiled" if compiler_available() else "foreach")
    for p, w in zip(ps, want):
        assert max_rel(p.detach().flatten(), w.flatten()) <= 1e-12


def test_momentum_switched_on_mid_run_makes_its_buffer():
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = adamlab.Signum([p], lr=0.1, momentum=0.0)
    p.grad = torch.tensor(G, dtype=torch.float64)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    opt.step()
    assert "momentum_buffer" in opt.state[p]
    assert torch.allclose(p.detach(), torch.tensor([0.8, 1.2, 0.8], dtype=torch.float64), atol=1e-12)


def test_registry_row():
    info = get_optimizer_info("signum")
    assert info.cls is adamlab.Signum
    sp = SEARCH_SPACES["signum"]
    assert isinstance(sp["lr"], LogFloat) and isinstance(sp["momentum"], OneMinusLog)
    assert "weight_decay" in sp
    opt = adamlab.create_optimizer("signum", torch.nn.Linear(3, 2), momentum=0.5)
    assert isinstance(opt, adamlab.Signum) and opt.defaults["momentum"] == 0.5
    d = adamlab.Signum([torch.ones(1, requires_grad=True)]).defaults
    assert d == dict(lr=1e-3, momentum=0.9, weight_decay=0.0, maximize=False)
