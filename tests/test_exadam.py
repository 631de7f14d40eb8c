"""EXAdam: published test vectors, parity with the authors' code (v1 and v2), the ~16·lr first step, v1's
step size. (The three paths, maximize, bad arguments and exact resume: the exadam row of tests/optim_db.py.)"""

import math

import pytest
import torch

import adamlab
from adamlab import EXAdam

from optim_db import exadam_groups as _three_groups
from reference.exadam_ref import RefEXAdam
from trajectory import max_rel, run

LOOP_FOREACH = [dict(foreach=False), dict(foreach=True)]


def _scalar_run(grads, path, **kw):
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = EXAdam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, **kw, **path)
    out = []
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        out.append(p.item())
    return out


@pytest.mark.parametrize("path", LOOP_FOREACH, ids=["loop", "foreach"])
@pytest.mark.parametrize("kw,expected", [
    (dict(weight_decay=0.0), [-0.5952421204, -0.1403748498, -1.0873534468]),
    (dict(weight_decay=0.1), [-0.6052421204, -0.1443224286, -1.0898578013]),
    (dict(dynamic_step_size=True), [-0.1057375781, 0.3017687916, -0.6828245252]),
], ids=["v2", "v2-decay", "v1"])
def test_spec_vectors(kw, expected, path):
    assert _scalar_run([1.0, -0.5, 2.0], path, **kw) == pytest.approx(expected, rel=0, abs=1e-9)


REF_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, dynamic_step_size=True),
    dict(lr=0.005, betas=(0.5, 0.9), eps=1e-5, weight_decay=0.02, dynamic_step_size=True),
]


@pytest.mark.parametrize("groups", [None, _three_groups], ids=["2groups", "3groups"])
@pytest.mark.parametrize("kw", REF_CASES, ids=["v2", "v2-decay", "v1", "v1-decay-betas"])
def test_matches_reference(kw, groups):
    """40 steps on a multi-tensor, multi-group problem: adamlab reproduces the authors' step (< 1e-9)."""
    ref, _ = run(lambda g: RefEXAdam(g, **kw), steps=40, groups=groups)
    for path in LOOP_FOREACH:
        out, _ = run(lambda g: EXAdam(g, **kw, **path), steps=40, groups=groups)
        assert max_rel(out, ref) < 1e-9


def test_loop_reproduces_reference_bit_for_bit():
    """The rule follows the reference's order of operations, so the float64 loop is identical, not just close."""
    for kw in REF_CASES:
        ref, _ = run(lambda g: RefEXAdam(g, **kw), steps=40, groups=_three_groups)
        out, _ = run(lambda g: EXAdam(g, **kw, foreach=False), steps=40, groups=_three_groups)
        assert torch.equal(out, ref), kw


def _first_ratio(opt_cls, g, **kw):
    """(θ₀ − θ₁)/(η·sign g) after one step from θ₀ = 0."""
    p = torch.zeros_like(g, requires_grad=True)
    opt = opt_cls([p], lr=1e-3, **kw)
    p.grad = g.clone()
    opt.step()
    return -p.detach() / (1e-3 * g.sign())


def test_first_update_is_about_16_lr_sign_g():
    """Step 1 moves θ by (1+β₂)(1 + 1/(1−β₁))/√(1+β₁)·η·sign(g) ≈ 15.95·η for the default betas, whatever |g|
    (exactly with ε = 0; to ~ε/v otherwise); Adam's first step is η·sign(g)."""
    g = torch.tensor([-0.3, 1.0, -5.0, 100.0], dtype=torch.float64)
    factor = (1 + 0.999) * (1 + 1 / (1 - 0.9)) / (1 + 0.9) ** 0.5
    assert factor == pytest.approx(15.952, abs=1e-3)
    exact = _first_ratio(EXAdam, g, eps=0.0, foreach=False)
    assert torch.allclose(exact, torch.full_like(g, factor), rtol=1e-14, atol=0)
    assert torch.allclose(_first_ratio(EXAdam, g), torch.full_like(g, factor), rtol=1e-4, atol=0)
    assert torch.allclose(_first_ratio(adamlab.Adam, g), torch.ones_like(g), rtol=1e-4, atol=0)


def test_v1_step_size_grows_like_log_t():
    """The moments do not depend on θ here, so v1's update at step t is v2's times ln(√(t+1)·√2)."""
    grads = [torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) * (1 + 0.3 * t) for t in range(7)]
    deltas = {}
    for dynamic in (False, True):
        p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = EXAdam([p], lr=0.1, dynamic_step_size=dynamic, foreach=False)
        deltas[dynamic] = []
        for g in grads:
            before = p.detach().clone()
            p.grad = g
            opt.step()
            deltas[dynamic].append(p.detach() - before)
    for t, (v2, v1) in enumerate(zip(deltas[False], deltas[True]), start=1):
        assert torch.allclose(v1, v2 * math.log(math.sqrt(t + 1) * math.sqrt(2)), rtol=1e-12, atol=0)


def test_defaults_and_state():
    p = torch.zeros(3, requires_grad=True)
    opt = adamlab.EXAdam([p])
    assert {k: opt.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "dynamic_step_size", "maximize")} \
        == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, dynamic_step_size=False, maximize=False)
    p.grad = torch.ones(3)
    opt.step()
    assert sorted(opt.state[p]) == ["exp_avg", "exp_avg_sq", "step"]
