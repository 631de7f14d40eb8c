"""Loading state: torch.optim's own checkpoints, state that a setting calls for mid-run, and what a load, a copy
or a pickle gives back. Each test failed on the code before its fix."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import adamlab

from optim_db import CASES, DB, IDS, make, state_keys
from trajectory import fake_grad, make_params


def _steps(opt, ps, start, stop):
    for t in range(start, stop):
        for p in ps:
            p.grad = fake_grad(p, t)
        opt.step()


def _pair(make_a, make_b, k=4, total=9, switch=None):
    """Run A for k steps, load its state dict into B over copies of the parameters, continue both to ``total``
    (``switch(opt)`` edits both optimizers' groups after the load); return both parameter lists."""
    pa = make_params()
    a = make_a(pa)
    _steps(a, pa, 0, k)
    pb = [p.detach().clone().requires_grad_() for p in pa]
    b = make_b(pb)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    if switch is not None:
        switch(a)
        switch(b)
    _steps(a, pa, k, total)
    _steps(b, pb, k, total)
    return pa, pb


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, dampening=0.3, weight_decay=0.1)])
def test_a_torch_sgd_checkpoint_resumes_in_adamlab_sgd(kw):
    """torch.optim.SGD stores no step: loading its state dict failed with KeyError: 'step'."""
    pa, pb = _pair(lambda ps: torch.optim.SGD(ps, lr=0.05, **kw), lambda ps: adamlab.SGD(ps, lr=0.05, **kw))
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True)], ids=["loop", "foreach"])
def test_switching_momentum_on_mid_run_is_what_torch_does(path):
    """Momentum switched on after steps without it: KeyError: 'momentum_buffer' (torch makes it when first needed,
    as a copy of the gradient)."""
    def switch(opt):
        for g in opt.param_groups:
            g["momentum"], g["dampening"] = 0.9, 0.25

    pa, pb = make_params(), make_params()
    a, b = torch.optim.SGD(pa, lr=0.05), adamlab.SGD(pb, lr=0.05, **path)
    for opt, ps in ((a, pa), (b, pb)):
        _steps(opt, ps, 0, 3)
        switch(opt)
        _steps(opt, ps, 3, 8)
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


def test_adamw_loaded_from_adam_keeps_decoupled_decay():
    """adamlab.AdamW loaded from an Adam state dict took its L2 decay; torch's AdamW stays AdamW."""
    def adam_to_adamw(adam_cls, adamw_cls):
        ps = make_params()
        adam = adam_cls(ps, lr=0.01, weight_decay=0.5)
        _steps(adam, ps, 0, 3)
        qs = [p.detach().clone().requires_grad_() for p in ps]
        adamw = adamw_cls(qs, lr=0.01, weight_decay=0.5)
        adamw.load_state_dict(adam.state_dict())
        _steps(adamw, qs, 3, 6)
        return qs, adamw

    ours, opt = adam_to_adamw(adamlab.Adam, adamlab.AdamW)
    theirs, _ = adam_to_adamw(torch.optim.Adam, torch.optim.AdamW)
    assert all(g["decoupled_weight_decay"] is True for g in opt.param_groups)
    for p, q in zip(theirs, ours):
        torch.testing.assert_close(q, p, rtol=1e-14, atol=0)
    back = adamlab.Adam([p.detach().clone() for p in ours], lr=0.01, weight_decay=0.5)
    back.load_state_dict(opt.state_dict())  # and the other way: Adam stays Adam
    assert all(g["decoupled_weight_decay"] is False for g in back.param_groups)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_load_copy_and_pickle_give_back_the_same_state_dict(name, kw):
    """Loading, copy.deepcopy and pickling added a ``differentiable`` key to ``defaults`` and every param group."""
    ps = make_params()
    opt = make(name, **kw)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}])
    _steps(opt, ps, 0, 3)
    saved = opt.state_dict()
    defaults = dict(opt.defaults)
    fresh = make(name, **kw)([{"params": [p.detach().clone() for p in ps[:2]]},
                              {"params": [p.detach().clone() for p in ps[2:]], "lr": 0.03}])
    fresh.load_state_dict(copy.deepcopy(saved))
    for other in (fresh, copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        again = other.state_dict()
        assert again["param_groups"] == saved["param_groups"]
        assert other.defaults == defaults
        assert again["state"].keys() == saved["state"].keys()
        for i, st in saved["state"].items():
            assert again["state"][i].keys() == st.keys()
            for k, v in st.items():
                assert torch.equal(again["state"][i][k], v), (i, k)


def _trained(name, kw=None):
    ps = make_params()
    opt = make(name, **(kw or {}))([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}])
    _steps(opt, ps, 0, 3)
    return ps, opt


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict())


def _same(a, b) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(a["state"][i].keys() == b["state"][i].keys()
               and all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i]) for i in a["state"])


BAD = {
    "another optimizer's state": (lambda sd, other: other, r"parameter 0: state key '\w+' is (not|missing)|"
                                  r"param group 0: Invalid"),
    "a shape that is not the parameter's": (lambda sd, other: _edit(sd, "exp_avg", torch.zeros(2)), "shape"),
    "None where a tensor belongs": (lambda sd, other: _edit(sd, "exp_avg", None), "NoneType"),
    "a negative step": (lambda sd, other: _edit(sd, "step", torch.tensor(-2.0)), "'step'"),
    "a NaN step": (lambda sd, other: _edit(sd, "step", torch.tensor(float("nan"))), "'step'"),
    "a bad setting": (lambda sd, other: sd["param_groups"][0].update(lr=-1.0) or sd, "lr"),
}


def _edit(sd, key, value):
    st = sd["state"][0]
    st[key if key in st or key == "step" else next(k for k in st if k != "step")] = value
    return sd


KEYS = {name: state_keys(name) for name in DB}  # after one step with the row's defaults
#: the tensor edits need a state tensor besides the step
BAD_CASES = [(name, bad) for name in DB for bad in BAD
             if KEYS[name] != {"step"} or bad not in ("a shape that is not the parameter's", "None where a tensor belongs")]


def _other(name: str) -> str:
    """Another optimizer whose state this one must refuse: another class with other state keys (the most keys)."""
    cls = DB[name].cls
    return max((n for n in DB if DB[n].cls is not cls and KEYS[n] != KEYS[name]), key=lambda n: len(KEYS[n]))


@pytest.mark.parametrize("name,bad", BAD_CASES)
def test_a_bad_state_dict_is_refused_and_changes_nothing(name, bad):
    """load_state_dict accepted another class's state, wrong shapes, None entries and a negative or NaN step, and
    failed at the next step() after the optimizer was overwritten (Adam <- AdamCM even ran silently)."""
    edit, match = BAD[bad]
    _, opt = _trained(name)
    other = _snapshot(_trained(_other(name))[1])
    sd = edit(_snapshot(opt), other)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert _same(opt.state_dict(), before)
