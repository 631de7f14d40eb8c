"""Property-based tests (hypothesis) of the invariants every optimizer keeps, on drawn shapes, gradients, step
counts and settings (the settings of the test database ``optim_db``, so a new optimizer is covered by its row there):

* finite gradients give finite parameters and state wherever Adam's are finite (gradients up to 1e30, float32
  and float64);
* the plain loop and the multi-tensor path agree in float64;
* a ``state_dict`` saved at any step and loaded into a fresh optimizer continues bit for bit;
* maximising f is minimising −f: ``maximize=True`` with gradient g steps exactly as ``maximize=False`` with −g.

The compiled path is covered against the loop by the table tests (compiling per drawn example would take minutes).
Examples are bounded; under CI they are derandomised (the same examples every run).
"""

from __future__ import annotations

import io
import os

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import adamlab

from optim_db import CASES

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

case = st.sampled_from(CASES)
shapes = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3)


def _params(shapes_, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes_]


def _grads(ps, steps, seed, scale):
    """Per step, per parameter: normal gradients times `scale`, with some elements exactly zero."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(steps):
        row = []
        for p in ps:
            x = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
            x[torch.rand(p.shape, generator=g) < 0.2] = 0.0
            row.append(x.to(p.dtype))
        out.append(row)
    return out


def _run(make, ps, grads, opt=None):
    opt = opt or make(ps)
    for row in grads:
        for p, g in zip(ps, row):
            p.grad = g.clone()
        opt.step()
    return opt


def _make(name, kw, **extra):
    return lambda ps: adamlab.create_optimizer(name, [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.003}]
                                               if len(ps) > 1 else ps, **{**kw, **extra})


def _finite(ps) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in ps)


def _with_extremes(test):
    """Every optimizer and setting also runs at the largest gradients, where squares overflow (always tried)."""
    for c in CASES:
        for dtype, log_scale in ((torch.float32, 20), (torch.float32, 25), (torch.float64, 30)):
            test = example(case=c, shapes_=[(3,), (2, 2)], seed=0, steps=3, log_scale=log_scale, dtype=dtype,
                           foreach=c[0] < "c")(test)  # both paths among the rows
    return test


@_with_extremes
@given(case=case, shapes_=shapes, seed=st.integers(0, 2**16), steps=st.integers(1, 6),
       log_scale=st.integers(-30, 30), dtype=st.sampled_from([torch.float32, torch.float64]),
       foreach=st.booleans())
def test_finite_gradients_give_finite_parameters_where_adam_does(case, shapes_, seed, steps, log_scale, dtype,
                                                                  foreach):
    name, kw = case
    ps = _params(shapes_, dtype, seed)
    grads = _grads(ps, steps, seed, 10.0 ** log_scale)
    assert all(bool(torch.isfinite(g).all()) for row in grads for g in row)
    ref = _params(shapes_, dtype, seed)
    _run(lambda qs: torch.optim.Adam(qs, lr=0.01), ref, grads)
    _run(_make(name, kw, foreach=foreach), ps, grads)
    if _finite(ref):
        assert _finite(ps), f"{name} {kw}: non-finite parameters at gradient scale 1e{log_scale}"


@given(case=case, shapes_=shapes, seed=st.integers(0, 2**16), steps=st.integers(1, 8), log_scale=st.integers(-6, 6))
def test_loop_and_multi_tensor_agree_in_float64(case, shapes_, seed, steps, log_scale):
    name, kw = case
    grads = _grads(_params(shapes_, torch.float64, seed), steps, seed, 10.0 ** log_scale)
    out = {}
    for foreach in (False, True):
        ps = _params(shapes_, torch.float64, seed)
        _run(_make(name, kw, foreach=foreach), ps, grads)
        out[foreach] = torch.cat([p.detach().flatten() for p in ps])
    start = torch.cat([p.detach().flatten() for p in _params(shapes_, torch.float64, seed)])
    tol = 1e-12 * max(1.0, float(start.abs().max()))
    assert float((out[True] - out[False]).abs().max()) <= tol


@given(case=case, shapes_=shapes, seed=st.integers(0, 2**16), k=st.integers(0, 5), rest=st.integers(1, 5),
       foreach=st.booleans())
def test_state_dict_round_trip_continues_bit_for_bit(case, shapes_, seed, k, rest, foreach):
    name, kw = case
    make = _make(name, kw, foreach=foreach)
    grads = _grads(_params(shapes_, torch.float64, seed), k + rest, seed, 1.0)
    full = _params(shapes_, torch.float64, seed)
    opt_full = _run(make, full, grads)

    ps = _params(shapes_, torch.float64, seed)
    opt = _run(make, ps, grads[:k])
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in ps]}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    qs = [p.clone().requires_grad_() for p in ck["params"]]
    opt2 = make(qs)
    opt2.load_state_dict(ck["opt"])
    _run(make, qs, grads[k:], opt=opt2)
    for a, b in zip(qs, full):
        assert torch.equal(a.detach(), b.detach())
    state_full = opt_full.state_dict()["state"]  # and the state, entry by entry
    state_two = opt2.state_dict()["state"]
    assert state_full.keys() == state_two.keys()
    for i in state_full:
        for key, v in state_full[i].items():
            w = state_two[i][key]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if torch.is_tensor(v) else v == w, (i, key)


@given(case=case, shapes_=shapes, seed=st.integers(0, 2**16), steps=st.integers(1, 6), log_scale=st.integers(-4, 4),
       foreach=st.booleans())
def test_maximize_f_is_minimize_minus_f(case, shapes_, seed, steps, log_scale, foreach):
    name, kw = case
    kw = {k: v for k, v in kw.items() if k != "maximize"}
    grads = _grads(_params(shapes_, torch.float64, seed), steps, seed, 10.0 ** log_scale)
    up = _params(shapes_, torch.float64, seed)
    _run(_make(name, kw, foreach=foreach, maximize=True), up, grads)
    down = _params(shapes_, torch.float64, seed)
    _run(_make(name, kw, foreach=foreach, maximize=False), down, [[-g for g in row] for row in grads])
    for a, b in zip(up, down):
        assert torch.equal(a.detach(), b.detach())


def test_properties_see_every_optimizer():
    assert sorted({name for name, _ in CASES}) == sorted(adamlab.list_optimizers())


def test_the_finite_check_can_fail():
    """The finite-parameter check flags one non-finite element (so the property above is not vacuous)."""
    ps = _params([(3,), (2,)], torch.float32, 0)
    assert _finite(ps)
    ps[1].data[1] = float("inf")
    assert not _finite(ps)
