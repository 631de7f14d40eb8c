"""State memory (bytes per parameter, the per-state dtype policy) and bf16 parameters (Kahan / stochastic rounding)."""

from __future__ import annotations

import io

import pytest
import torch

import adamlab
from adamlab.optim._lowp import state_bytes, stochastic_round_bf16

from optim_db import DB

SHAPES = ((6, 5), (7,), (3, 2, 4))

# the algorithm's minimum state per parameter element, fp32 (bytes): each row's state_bytes in tests/optim_db.py;
# fixed per-tensor state (step counters, AdamCM/AdamCG priorities and counts) is reported apart
MINIMUM = [(name, kw, expected) for name, row in DB.items() for kw, expected in row.state_bytes]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(MINIMUM)]


def _params(dtype=torch.float32, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def _grad(p, t):
    x = p.detach().float()
    return (torch.sin(3 * x + 0.7 * t) + 0.1 * x).to(p.dtype)


def _run(opt, ps, steps, start=0):
    for t in range(start, start + steps):
        for p in ps:
            p.grad = _grad(p, t)
        opt.step()


@pytest.mark.parametrize("name,kw,expected", MINIMUM, ids=IDS)
def test_state_bytes_is_the_algorithms_minimum(name, kw, expected):
    ps = _params()
    opt = adamlab.create_optimizer(name, ps, lr=1e-3, foreach=False, **kw)
    _run(opt, ps, 2)
    sb = state_bytes(opt)
    assert sb.numel == sum(p.numel() for p in ps)
    assert sb.per_param == expected
    n_tensors = len(ps)
    buffers = "buffer" in opt.state[ps[0]]
    # fixed: a float32 step per tensor, plus priorities [C] and an int64 count for each buffer
    c = opt.param_groups[0].get("buffer_size", 0)
    assert sb.fixed == n_tensors * (4 + (4 * c + 8 if buffers else 0))


@pytest.mark.parametrize("name,kw,expected", MINIMUM, ids=IDS)
def test_bf16_state_halves_state_memory(name, kw, expected):
    ps = _params()
    opt = adamlab.create_optimizer(name, ps, lr=1e-3, foreach=False, state_dtype=torch.bfloat16, **kw)
    _run(opt, ps, 2)
    assert state_bytes(opt).per_param == expected / 2
    for st in opt.state.values():
        for k, v in st.items():
            if k not in ("step", "priorities", "count"):
                assert v.dtype == torch.bfloat16, k


def test_per_state_policy_mapping():
    ps = _params()
    opt = adamlab.Adam(ps, lr=1e-3, state_dtype={"exp_avg": torch.bfloat16})
    _run(opt, ps, 1)
    st = opt.state[ps[0]]
    assert (st["exp_avg"].dtype, st["exp_avg_sq"].dtype) == (torch.bfloat16, torch.float32)
    assert state_bytes(opt).per_param == 6


@pytest.mark.parametrize("name", ["adamw", "ademamix", "adamcm"])
def test_bf16_state_resumes_exactly_under_the_same_policy(name):
    kw = dict(lr=1e-2, foreach=False, state_dtype=torch.bfloat16)
    ps = _params()
    full = adamlab.create_optimizer(name, ps, **kw)
    _run(full, ps, 12)
    qs = _params()
    opt = adamlab.create_optimizer(name, qs, **kw)
    _run(opt, qs, 5)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [q.detach().clone() for q in qs]}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    rs = [t.clone().requires_grad_() for t in ck["params"]]
    opt2 = adamlab.create_optimizer(name, rs, **kw)
    opt2.load_state_dict(ck["opt"])
    assert all(v.dtype == torch.bfloat16 for st in opt2.state.values() for k, v in st.items()
               if k not in ("step", "priorities", "count"))
    _run(opt2, rs, 7, start=5)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_bf16_state_loads_into_a_float32_policy_and_back():
    ps = _params()
    opt = adamlab.AdamW(ps, lr=1e-2, state_dtype=torch.bfloat16)
    _run(opt, ps, 3)
    sd = opt.state_dict()
    to32 = adamlab.AdamW(ps, lr=1e-2, state_dtype=torch.float32)
    to32.load_state_dict(sd)
    for i, p in enumerate(ps):
        for k in ("exp_avg", "exp_avg_sq"):
            assert to32.state[p][k].dtype == torch.float32
            assert torch.equal(to32.state[p][k], sd["state"][i][k].float())  # bf16 -> fp32 is exact
    back = adamlab.AdamW(ps, lr=1e-2, state_dtype=torch.bfloat16)
    back.load_state_dict(to32.state_dict())
    for i, p in enumerate(ps):
        assert torch.equal(back.state[p]["exp_avg"], sd["state"][i]["exp_avg"])
    _run(back, ps, 2, start=3)  # and it keeps training
    assert state_bytes(back).per_param == 4


@pytest.mark.parametrize("path", [dict(foreach=True), dict(compiled=True)], ids=["foreach", "compiled"])
def test_bf16_state_paths_agree_with_the_loop(path):
    out = []
    for p_kw in (dict(foreach=False), path):
        ps = _params()
        opt = adamlab.AdamW(ps, lr=1e-2, state_dtype=torch.bfloat16, **p_kw)
        _run(opt, ps, 10)
        out.append(torch.cat([p.detach().flatten() for p in ps]))
    # the maths runs in float32 on every path; the compiled one may round a few operations differently
    assert torch.allclose(out[0], out[1], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- bf16 parameters
def _trajectory(name, dtype, mode, path, steps=200, lr=1e-3):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(32, 16, generator=g)
    target = torch.randn(32, 16, generator=g)
    p = w0.clone().to(dtype).requires_grad_()
    opt = adamlab.create_optimizer(name, [p], lr=lr, param_update=mode, **path)
    for _ in range(steps):
        p.grad = (p.detach().float() - target).to(dtype)  # gradient of ½‖p − target‖²
        opt.step()
    return p.detach().float(), opt


@pytest.mark.parametrize("name", adamlab.list_optimizers())
def test_kahan_bf16_stays_close_to_fp32(name):
    """Updates below bf16's resolution are lost by round-to-nearest; Kahan summation keeps them."""
    ref, _ = _trajectory(name, torch.float32, "nearest", dict(foreach=False))
    near, _ = _trajectory(name, torch.bfloat16, "nearest", dict(foreach=False))
    kahan, opt = _trajectory(name, torch.bfloat16, "kahan", dict(foreach=False))
    stoch, _ = _trajectory(name, torch.bfloat16, "stochastic", dict(foreach=False))
    err = {k: float((v - ref).abs().mean()) for k, v in dict(near=near, kahan=kahan, stoch=stoch).items()}
    assert err["kahan"] < 0.25 * err["near"], err
    assert err["stoch"] < 0.5 * err["near"], err
    assert opt.state[opt.param_groups[0]["params"][0]]["kahan_comp"].dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["nearest", "kahan", "stochastic"])
@pytest.mark.parametrize("name", ["adamw", "ademamix", "exadam", "adamcm", "sgd"])
def test_bf16_params_on_every_path(name, mode):
    loop, _ = _trajectory(name, torch.bfloat16, mode, dict(foreach=False), steps=40)
    fe, _ = _trajectory(name, torch.bfloat16, mode, dict(foreach=True), steps=40)
    comp, _ = _trajectory(name, torch.bfloat16, mode, dict(compiled=True), steps=40)
    ref, _ = _trajectory(name, torch.float32, "nearest", dict(foreach=False), steps=40)
    if mode != "stochastic":
        assert torch.equal(loop, fe)  # both run the per-tensor rule in float32 eagerly
    bound = {"nearest": 0.3, "stochastic": 0.2, "kahan": 0.1}[mode]  # nearest drifts, stochastic is noisy
    for out in (loop, fe, comp):
        assert torch.isfinite(out).all()
        assert float((out - ref).abs().max()) < bound


def test_kahan_compiled_matches_loop():
    """The compiled path keeps the bf16 round trip (inductor would fold it away and lose the compensation)."""
    loop, _ = _trajectory("adamw", torch.bfloat16, "kahan", dict(foreach=False), steps=60)
    comp, _ = _trajectory("adamw", torch.bfloat16, "kahan", dict(compiled=True), steps=60)
    near, _ = _trajectory("adamw", torch.bfloat16, "nearest", dict(foreach=False), steps=60)
    assert float((comp - loop).abs().max()) <= 1.5e-2  # a bf16 ulp at |θ| < 2
    assert not torch.equal(comp, near)


def test_kahan_bf16_resumes_exactly():
    kw = dict(lr=1e-3, foreach=False, param_update="kahan")
    ps = _params(torch.bfloat16)
    full = adamlab.AdamW(ps, **kw)
    _run(full, ps, 10)
    qs = _params(torch.bfloat16)
    opt = adamlab.AdamW(qs, **kw)
    _run(opt, qs, 4)
    sd = opt.state_dict()
    rs = [q.detach().clone().requires_grad_() for q in qs]
    opt2 = adamlab.AdamW(rs, **kw)
    opt2.load_state_dict(sd)
    _run(opt2, rs, 6, start=4)
    for p, r in zip(ps, rs):
        assert torch.equal(p.detach(), r.detach())


def test_stochastic_rounding_is_unbiased():
    lo = torch.tensor(1.0, dtype=torch.bfloat16)
    hi = torch.nextafter(lo, torch.tensor(2.0, dtype=torch.bfloat16))
    x = torch.full((200_000,), 1.0 + 0.3 * float(hi - lo))
    torch.manual_seed(0)
    r = stochastic_round_bf16(x)
    assert set(r.unique().tolist()) <= {float(lo), float(hi)}
    assert abs(float(r.float().mean()) - float(x[0])) < 2e-4 * float(hi - lo) * 100
    assert torch.equal(stochastic_round_bf16(torch.tensor([2.0, -0.5])), torch.tensor([2.0, -0.5]).bfloat16())
