"""AdEMAMix: published test vectors and schedules, parity with the authors' code, warmups that never recompile,
AdamW ⊆ AdEMAMix, β1 = 0 without an m1 buffer. (The three paths, maximize, bad arguments and exact resume inside
the warmups: the ademamix row of tests/optim_db.py.)"""


import pytest
import torch

import adamlab
from adamlab import AdEMAMix
from adamlab.optim.ademamix import alpha_schedule, beta3_schedule

from internals import step_scalars
from optim_db import ademamix_groups as _three_groups
from reference.ademamix_ref import RefAdEMAMix
from trajectory import fake_grad, make_params, max_rel, run

LOOP_FOREACH = [dict(foreach=False), dict(foreach=True)]


@pytest.mark.parametrize("path", LOOP_FOREACH, ids=["loop", "foreach"])
@pytest.mark.parametrize("kw,expected", [
    (dict(), [0.8999800010, 0.8733336489, 0.8074847060]),
    (dict(alpha=8.0, alpha_warmup=4, beta3_warmup=4, weight_decay=0.1), [0.8899202480, 0.8542361396, 0.7796262931]),
    (dict(betas=(0.0, 0.999, 0.9999), alpha=8.0), [0.8999200010, 0.9631244532, 0.8118307415]),
], ids=["defaults", "warmups-decay", "beta1-0"])
def test_spec_vectors(kw, expected, path):
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = AdEMAMix([p], lr=0.1, **kw, **path)
    out = []
    for g in (1.0, -0.5, 2.0):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        out.append(p.item())
    assert out == pytest.approx(expected, rel=0, abs=1e-9)


def test_spec_schedules():
    """α = 8, T_α = T_β3 = 4, β = (0.9, ·, 0.9999): α_t = 2, 4, 6 and β3_t as published, at the incremented t;
    both reach their final values at t = T."""
    assert [alpha_schedule(t, 8.0, 4) for t in (1, 2, 3, 4, 5)] == [2.0, 4.0, 6.0, 8.0, 8.0]
    b3 = [beta3_schedule(t, 0.9, 0.9999, 4) for t in (1, 2, 3)]
    assert b3 == pytest.approx([0.9996012351, 0.9998002196, 0.9998667244], rel=0, abs=1e-10)
    assert beta3_schedule(4, 0.9, 0.9999, 4) == 0.9999 and beta3_schedule(0, 0.9, 0.9999, 4) == pytest.approx(0.9)
    assert alpha_schedule(3, 8.0, None) == 8.0 and beta3_schedule(3, 0.9, 0.9999, None) == 0.9999
    # the optimizer feeds them to the rule as per-step scalars
    opt = AdEMAMix([torch.zeros(2)], alpha=8.0, alpha_warmup=4, beta3_warmup=4)
    scal = [step_scalars(opt, t) for t in (1, 2, 3)]
    assert [s["alpha"] for s in scal] == [2.0, 4.0, 6.0]
    assert [s["beta3"] for s in scal] == b3


REF_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, alpha=8.0, alpha_warmup=20, beta3_warmup=25, weight_decay=0.1),
    dict(lr=0.01, betas=(0.0, 0.99, 0.999), alpha=5.0, alpha_warmup=10),
    dict(lr=0.02, betas=(0.8, 0.95, 0.99), alpha=3.0, beta3_warmup=15, eps=1e-5, weight_decay=0.05),
]
REF_IDS = ["defaults", "decay", "warmups-decay", "beta1-0-warmup", "betas-beta3-warmup"]


@pytest.mark.parametrize("groups", [None, _three_groups], ids=["2groups", "3groups"])
@pytest.mark.parametrize("kw", REF_CASES, ids=REF_IDS)
def test_matches_reference(kw, groups):
    """40 steps on a multi-tensor, multi-group problem, warmups ending mid-run: adamlab reproduces the authors'
    step (< 1e-9)."""
    ref, _ = run(lambda g: RefAdEMAMix(g, **kw), steps=40, groups=groups)
    for path in LOOP_FOREACH:
        out, _ = run(lambda g: AdEMAMix(g, **kw, **path), steps=40, groups=groups)
        assert max_rel(out, ref) < 1e-9


def test_loop_reproduces_reference_bit_for_bit():
    for kw in REF_CASES:
        ref, _ = run(lambda g: RefAdEMAMix(g, **kw), steps=40, groups=_three_groups)
        out, _ = run(lambda g: AdEMAMix(g, **kw, foreach=False), steps=40, groups=_three_groups)
        assert torch.equal(out, ref), kw


def test_warmups_do_not_recompile():
    """α_t and β3_t change every step but reach the compiled rule as 0-d tensors: no new graph after step 1."""
    from torch._dynamo.utils import counters

    from adamlab.optim._base import compiler_available

    if not compiler_available():
        pytest.skip("torch.compile unavailable")
    ps = make_params()
    opt = AdEMAMix(ps, lr=0.01, alpha=8.0, alpha_warmup=10, beta3_warmup=10, weight_decay=0.1, compiled=True)
    for t in range(12):
        if t == 1:
            graphs = counters["stats"]["unique_graphs"]
        for p in ps:
            p.grad = fake_grad(p, t)
        opt.step()
    assert opt.implementation == "compiled"
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("path", LOOP_FOREACH, ids=["loop", "foreach"])
@pytest.mark.parametrize("betas", [(0.9, 0.999, 0.9999), (0.0, 0.99, 0.999)], ids=["beta1-0.9", "beta1-0"])
def test_alpha_zero_is_adamw(betas, path):
    """AdamW ⊆ AdEMAMix: α = 0 drops the slow EMA and leaves AdamW with the same β1, β2, ε and decay
    (to round-off: AdEMAMix decays inside the update, AdamW before it)."""
    kw = dict(lr=0.01, eps=1e-6, weight_decay=0.1)
    a, _ = run(lambda g: AdEMAMix(g, betas=betas, alpha=0.0, alpha_warmup=5, beta3_warmup=5, **kw, **path))
    b, _ = run(lambda g: torch.optim.AdamW(g, betas=betas[:2], **kw))
    assert max_rel(a, b) < 1e-12


def test_beta1_zero_allocates_no_fast_buffer():
    """β1 = 0: the state holds two tensors per parameter (slow EMA and ν), the same memory as AdamW."""
    ps = make_params()
    opt = AdEMAMix(ps, betas=(0.0, 0.999, 0.9999), alpha=8.0)
    adamw = torch.optim.AdamW([p.detach().clone().requires_grad_() for p in ps])
    for p, q in zip(ps, adamw.param_groups[0]["params"]):
        p.grad = fake_grad(p, 0)
        q.grad = p.grad.clone()
    opt.step()
    adamw.step()
    for p in ps:
        tensors = {k: v for k, v in opt.state[p].items() if k != "step"}
        assert sorted(tensors) == ["exp_avg_slow", "exp_avg_sq"]
        assert all(v.shape == p.shape for v in tensors.values())

    def state_bytes(o):
        return sum(v.numel() * v.element_size() for st in o.state.values() for k, v in st.items() if k != "step")

    assert state_bytes(opt) == state_bytes(adamw)
    full = AdEMAMix(make_params())
    for p in full.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    full.step()
    assert all(sorted(k for k in st if k != "step") == ["exp_avg_fast", "exp_avg_slow", "exp_avg_sq"]
               for st in full.state.values())


def test_defaults():
    opt = adamlab.AdEMAMix([torch.zeros(3, requires_grad=True)])
    assert {k: opt.defaults[k] for k in ("lr", "betas", "alpha", "alpha_warmup", "beta3_warmup", "eps",
                                         "weight_decay", "maximize")} \
        == dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, alpha_warmup=None, beta3_warmup=None, eps=1e-8,
                weight_decay=0.0, maximize=False)
