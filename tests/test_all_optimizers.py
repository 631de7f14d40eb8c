"""The tests generated from the test database (``optim_db.py``; torch's OptimizerInfo database is the model).

Every row's every setting: the loop and multi-tensor paths agree in float64 (the compiled path too, on the richest
setting), a run saved through torch.save and resumed continues bit for bit, maximising f is minimising −f bit for
bit, the reference implementation is reproduced; every bad argument raises its exception with its message; the
weight decay is the kind the row says; a parabola is solved, missing and zero gradients are handled, and bf16
parameters work.

The problem (``trajectory.trajectory``): five float64 tensors in two or more param groups, gradients whose scale
varies by tensor and step, one tensor that starts late and skips steps, and every lr halved mid-run.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import adamlab

from optim_db import DB, EAGER, ERRORS, IDS, PATHS, SETTING_CASES, WRAPPERS, build
from trajectory import advance, fake_grad, flat, make_params, max_rel, state_equal, trajectory, two_groups

STEPS = 36


def test_db_covers_every_optimizer():
    """A row per registry name and no other; every row states its settings, bad arguments, state memory and
    compile settings; names outside the registry (WRAPPERS) are not registry names."""
    assert sorted(DB) == sorted(adamlab.list_optimizers())
    for name, row in DB.items():
        assert row.settings and row.errors and row.state_bytes and row.compile_kwargs, name
        assert row.weight_decay in ("l2", "decoupled") and set(row.paths) <= set(PATHS), name
    assert not set(WRAPPERS) & set(DB)


# ---------------------------------------------------------------------- the paths agree
@pytest.mark.parametrize("name,setting", SETTING_CASES, ids=IDS)
def test_foreach_matches_loop(name, setting):
    row = DB[name]
    loop, _, _ = trajectory(row.make(**setting.kwargs, foreach=False), STEPS, setting.groups)
    fe, _, _ = trajectory(row.make(**setting.kwargs, foreach=True), STEPS, setting.groups)
    assert max_rel(fe, loop) <= row.tol
    start, _, _ = trajectory(row.make(**setting.kwargs, foreach=False), 0, setting.groups)
    assert not torch.equal(loop, start)


@pytest.mark.parametrize("name", [n for n, r in DB.items() if "compiled" in r.paths])
def test_compiled_matches_loop(name):
    """One compiled configuration per optimizer, its richest setting (each costs an inductor compile)."""
    row = DB[name]
    s = row.richest
    loop, _, _ = trajectory(row.make(**s.kwargs, foreach=False), STEPS, s.groups)
    comp, opt, _ = trajectory(row.make(**s.kwargs, compiled=True), STEPS, s.groups)
    assert opt.implementation == "compiled"
    assert max_rel(comp, loop) <= row.tol


# ---------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("name,setting", SETTING_CASES, ids=IDS)
def test_exact_resume_through_torch_save(name, setting, subtests):
    """On the loop and the multi-tensor path: save at step 8 through torch.save to a BytesIO, load (weights_only)
    into a fresh optimizer built with other settings over fresh parameters: the settings and state are the saved
    ones, and the run continues to step 24 bit for bit (parameters and state) with the uninterrupted one."""
    for path in EAGER:
        with subtests.test(path=path):
            _resume(DB[name], setting, path)


def _resume(row, setting, path, k=8, total=24):
    make = row.make(**setting.kwargs, **PATHS[path])
    _, full, full_ps = trajectory(make, total, setting.groups)
    _, opt, ps = trajectory(make, k, setting.groups)
    if row.at_checkpoint is not None:
        assert row.at_checkpoint(opt)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in ps]}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    qs = [p.clone().requires_grad_() for p in ck["params"]]
    groups = (setting.groups or two_groups)(qs)
    fresh = row.make(**{**setting.kwargs, "lr": 1.0, **row.resume_overrides}, **PATHS[path])(groups)
    fresh.load_state_dict(ck["opt"])
    settings = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    assert [{k: v for k, v in g.items() if k != "params"} for g in fresh.param_groups] == settings
    assert state_equal(opt, fresh, ps, qs)
    advance(fresh, qs, k, total)
    assert torch.equal(flat(qs), flat(full_ps))
    assert state_equal(full, fresh, full_ps, qs)


# ---------------------------------------------------------------------- maximize
MAXIMIZE = [(c, i) for c, i in zip(SETTING_CASES, IDS) if DB[c[0]].maximize]


@pytest.mark.parametrize("name,setting", [c for c, _ in MAXIMIZE], ids=[i for _, i in MAXIMIZE])
def test_maximize_is_minimize_of_negation(name, setting, subtests):
    """maximize=True on gradients g steps exactly as maximize=False on −g: parameters and state, bit for bit, on
    the loop and the multi-tensor path."""
    row = DB[name]
    for path in EAGER:
        with subtests.test(path=path):
            kw = {**setting.kwargs, **PATHS[path]}
            up, a, pa = trajectory(row.make(**{**kw, "maximize": True}), STEPS, setting.groups)
            down, b, pb = trajectory(row.make(**{**kw, "maximize": False}), STEPS, setting.groups, sign=-1.0)
            assert torch.equal(up, down)
            assert state_equal(a, b, pa, pb)


# ---------------------------------------------------------------------- reference implementations
REF_CASES = [(c, i) for c, i in zip(SETTING_CASES, IDS)
             if DB[c[0]].reference is not None and DB[c[0]].reference.accepts(DB[c[0]], c[1])]


@pytest.mark.parametrize("name,setting", [c for c, _ in REF_CASES], ids=[i for _, i in REF_CASES])
def test_matches_reference(name, setting, subtests):
    """The row's reference implementation (an authors' port, a direct transcription or torch.optim's class),
    reproduced on the problem by the loop and the multi-tensor path; the per-optimizer files compare on more
    settings."""
    row = DB[name]
    ref, _, _ = trajectory(lambda g: row.reference.make(row, g, **setting.kwargs), STEPS, setting.groups)
    for path in EAGER:
        with subtests.test(path=path):
            out, _, _ = trajectory(row.make(**setting.kwargs, **PATHS[path]), STEPS, setting.groups)
            assert max_rel(out, ref) <= row.reference.tol


# ---------------------------------------------------------------------- bad arguments
def _group_settings(opt):
    return [({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]]) for g in opt.param_groups]


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments(name, subtests):
    """Each error input of the row: the constructor raises the error with its message; a group setting does the
    same in add_param_group and leaves the param groups as they were."""
    for err in ERRORS[name]:
        with subtests.test(err.id):
            with pytest.raises(err.error, match=err.match):
                build(name, [torch.zeros(2, 2, requires_grad=True)], **err.kwargs)
            opt = build(name, [torch.zeros(2, 2, requires_grad=True)])
            if set(err.kwargs) <= set(opt.defaults):
                before = copy.deepcopy(_group_settings(opt))
                with pytest.raises(err.error, match=err.match):
                    opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], **err.kwargs})
                assert _group_settings(opt) == before


# ---------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("name", list(DB))
def test_weight_decay_is_the_kind_the_row_says(name):
    """A first step with a zero gradient and decay λ: decoupled, θ(1 − ηλ) and nothing else; L2, the step a
    gradient of λθ takes without decay."""
    row = DB[name]
    lr, wd = 0.1, 0.3
    theta = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64)
    p = theta.clone().requires_grad_()
    opt = adamlab.create_optimizer(name, [p], lr=lr, weight_decay=wd, foreach=False)
    p.grad = torch.zeros_like(p)
    opt.step()
    if row.weight_decay == "decoupled":
        torch.testing.assert_close(p.detach(), theta * (1 - lr * wd), rtol=1e-15, atol=0)
    else:
        assert row.weight_decay == "l2"
        q = theta.clone().requires_grad_()
        l2 = adamlab.create_optimizer(name, [q], lr=lr, weight_decay=0.0, foreach=False)
        q.grad = wd * theta
        l2.step()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-15, atol=0)


# ---------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", list(DB))
def test_solves_a_parabola(name):
    """Every optimizer drives a well-conditioned quadratic 100x below its starting loss."""
    row = DB[name]
    target = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    kw = dict(lr=row.parabola_lr)
    if row.signature_default("weight_decay"):  # (a decay that is on by default pulls away from the target)
        kw["weight_decay"] = 0.0
    opt = adamlab.create_optimizer(name, [x], **kw)
    loss0 = float(((x.detach() - target) ** 2).sum())
    for _ in range(400):
        opt.zero_grad()
        loss = ((x - target) ** 2).sum()
        loss.backward()
        opt.step()
    assert float(((x.detach() - target) ** 2).sum()) < loss0 / 100


@pytest.mark.parametrize("name", list(DB))
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


@pytest.mark.parametrize("name", list(DB))
def test_bf16_params(name):
    """bf16 parameters: the maths runs in fp32 and the result stays close to an fp32 run."""
    tol = DB[name].bf16_tol
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
        assert torch.allclose(q.float(), p, rtol=tol, atol=tol)
