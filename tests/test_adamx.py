"""AdamX (alias AdamNX): published test vectors, parity with the authors' code, its defining behaviour (m is
Adam's m̂; v is a front-weighted average that freezes, leaving momentum SGD). (The three paths, maximize, bad
arguments and exact resume: the adamx row of tests/optim_db.py.)"""

import math

import pytest
import torch

import adamlab
from adamlab import AdamX
from adamlab.optim.adamx import adamx_betas

from optim_db import adamx_groups as _three_groups
from reference.adamnx_ref import RefAdamNX
from trajectory import max_rel, run

LOOP_FOREACH = [dict(foreach=False), dict(foreach=True)]


@pytest.mark.parametrize("path", LOOP_FOREACH, ids=["loop", "foreach"])
@pytest.mark.parametrize("wd,expected", [
    (0.0, [0.9000000010, 0.8733706962, 0.8075388317]),
    (0.01, [0.8990000010, 0.8714716962, 0.8047683600]),
])
def test_spec_vectors(wd, expected, path):
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = AdamX([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, **path)
    out = []
    for g in (1.0, -0.5, 2.0):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        out.append(p.item())
    assert out == pytest.approx(expected, rel=0, abs=1e-9)


REF_CASES = [
    dict(lr=0.01),  # reference defaults: betas (0.9, 0.99), weight_decay 1e-2
    dict(lr=0.01, weight_decay=0.0),
    dict(lr=0.02, betas=(0.5, 0.9), eps=1e-5, weight_decay=0.1),
    dict(lr=0.01, betas=(0.0, 0.999)),
]
REF_IDS = ["defaults", "no-decay", "betas-decay", "beta1-0"]


@pytest.mark.parametrize("groups", [None, _three_groups], ids=["2groups", "3groups"])
@pytest.mark.parametrize("kw", REF_CASES, ids=REF_IDS)
def test_matches_reference(kw, groups):
    """40 steps on a multi-tensor, multi-group problem: adamlab reproduces the authors' step (< 1e-9)."""
    ref, _ = run(lambda g: RefAdamNX(g, **kw), steps=40, groups=groups)
    for path in LOOP_FOREACH:
        out, _ = run(lambda g: AdamX(g, **kw, **path), steps=40, groups=groups)
        assert max_rel(out, ref) < 1e-9


def test_loop_reproduces_reference_bit_for_bit():
    for kw in REF_CASES:
        ref, _ = run(lambda g: RefAdamNX(g, **kw), steps=40, groups=_three_groups)
        out, _ = run(lambda g: AdamX(g, **kw, foreach=False), steps=40, groups=_three_groups)
        assert torch.equal(out, ref), kw


def test_alias():
    assert adamlab.AdamNX is AdamX and adamlab.optim.AdamNX is AdamX


def test_coefficients_start_at_zero_and_beta2_t_tends_to_one():
    """β1_1 = β2_1 = 0 (the first step is m = g, v = g²); β2_t rises to 1 (reached in float64 for small β2)."""
    for b1, b2 in ((0.9, 0.99), (0.0, 0.5), (0.5, 0.999)):
        assert adamx_betas(b1, b2, 1) == (0.0, 0.0)
        b2_late = [adamx_betas(b1, b2, t)[1] for t in (10, 100, 1000)]
        assert all(x < y or y == 1.0 for x, y in zip(b2_late, b2_late[1:])) and b2_late[-1] <= 1.0


def _fixed_grads(n, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(steps)]


def test_m_is_adams_bias_corrected_m_and_v_is_a_front_weighted_average():
    """m_t = Adam's m̂_t; v_t = (1−γ)/(1−γᵗ)·Σ_k γ^(k−1) g_k² with γ = β₂^(1−β₂) (older gradients weigh more)."""
    b1, b2 = 0.9, 0.9
    grads = _fixed_grads(6, 25)
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = AdamX([p], lr=0.01, betas=(b1, b2), weight_decay=0.0, foreach=False)
    adam = torch.optim.Adam([q], lr=0.01, betas=(b1, b2))
    gamma = b2 ** (1 - b2)
    for t, g in enumerate(grads, start=1):
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        adam.step()
        m_hat = adam.state[q]["exp_avg"] / (1 - b1 ** t)
        assert torch.allclose(opt.state[p]["exp_avg"], m_hat, rtol=1e-12, atol=1e-15)
        v = (1 - gamma) / (1 - gamma ** t) * sum(gamma ** (k - 1) * gk ** 2 for k, gk in enumerate(grads[:t], 1))
        assert torch.allclose(opt.state[p]["exp_avg_sq"], v, rtol=1e-10, atol=0)


def test_v_freezes_and_the_update_becomes_momentum_sgd():
    """After many multiples of 1/((1−β₂)|ln β₂|) steps (≈ 2.9 for β₂ = 0.5) v no longer moves, and each update is
    −η·m̂_t/(√v_frozen + ε): heavy-ball momentum with a fixed per-coordinate preconditioner. Adam's v keeps moving."""
    b1, b2, lr, eps = 0.9, 0.5, 0.01, 1e-8
    horizon = 1 / ((1 - b2) * abs(math.log(b2)))
    grads = _fixed_grads(8, 150, seed=1)
    p = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    opt = AdamX([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0, foreach=False)
    adam = torch.optim.Adam([q], lr=lr, betas=(b1, b2), eps=eps)
    late = int(40 * horizon)  # ≈ 115 steps: the newest gradient's weight is γ^(t−1)(1−γ) < 1e-16
    buf = torch.zeros(8, dtype=torch.float64)  # plain EMA of g, bias-corrected below: the SGD momentum
    for t, g in enumerate(grads, start=1):
        if t == late:
            v_frozen = opt.state[p]["exp_avg_sq"].clone()
            adam_v = adam.state[q]["exp_avg_sq"].clone()
        before = p.detach().clone()
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        adam.step()
        buf.mul_(b1).add_(g, alpha=1 - b1)
        if t > late:
            assert torch.allclose(opt.state[p]["exp_avg_sq"], v_frozen, rtol=1e-13, atol=0)
            sgd_step = -lr * (buf / (1 - b1 ** t)) / (v_frozen.sqrt() + eps)
            assert torch.allclose(p.detach() - before, sgd_step, rtol=1e-9, atol=1e-18)
    assert not torch.allclose(adam.state[q]["exp_avg_sq"], adam_v, rtol=0.1)


def test_defaults_and_state():
    p = torch.zeros(3, requires_grad=True)
    opt = adamlab.AdamNX([p])
    assert {k: opt.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "maximize")} \
        == dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2, maximize=False)
    p.grad = torch.ones(3)
    opt.step()
    assert sorted(opt.state[p]) == ["exp_avg", "exp_avg_sq", "step"]
