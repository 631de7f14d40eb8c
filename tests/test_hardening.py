"""Bad numbers: non-finite gradients, betas at the edge of their range, extreme gradients. Each test names the
defect it guards against; each failed on the code before its fix."""

from __future__ import annotations

import math

import pytest
import torch

import adamlab
from adamlab.optim._compiled import SMALL_NUMEL

from conftest import PATH_IDS, PATHS
from optim_db import DB
from trajectory import make_params

# (AdamCM unsynced and AdamCG synced: the settings test_critical compiles; AdamCM synced: the default)
CRITICAL = [(adamlab.AdamCM, dict(buffer_size=3, synced=False, weight_decay=0.1, maximize=True)),
            (adamlab.AdamCG, dict(buffer_size=3, synced=True, weight_decay=0.1, aggregation="mid")),
            (adamlab.AdamCM, dict(buffer_size=3))]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("cls,kw", CRITICAL, ids=["CM", "CG-synced", "CM-synced"])
def test_a_non_finite_priority_makes_no_offer(cls, kw, path, bad):
    """One NaN (or Inf) gradient element: that step makes no offer where its priority is not finite (the whole group
    when synced), no stored priority is ever non-finite, and the buffers keep taking offers. Before, the NaN
    priority was stored (in every tensor's buffer when synced) and, as argmin's pick, could never be replaced."""
    shapes = ((5, 3), (SMALL_NUMEL + 7,), (2, 2, 3))  # a big tensor: the compiled step's offers before its graphs
    ps = make_params(0, shapes=shapes)
    opt = cls(ps, lr=0.05, **kw, **path)
    synced = kw.get("synced", True)
    gen = torch.Generator().manual_seed(0)  # one bad batch, then good ones (gradients that do not read θ, whose
    for p in ps:  # element the bad one poisoned, as in torch.optim)
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    ps[0].grad[0, 0] = bad
    opt.step()
    for i, p in enumerate(ps):
        st = opt.state[p]
        assert torch.isfinite(st["priorities"]).all()
        assert int(st["count"]) == (0 if synced or i == 0 else 1), i
    replaced = 0
    for t in range(1, 8):
        before = opt.state[ps[1]]["buffer"].clone()
        full = int(opt.state[ps[1]]["count"]) == 3
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * (1 + t % 3)
        opt.step()
        replaced += full and not torch.equal(before, opt.state[ps[1]]["buffer"])
    for p in ps:
        assert torch.isfinite(opt.state[p]["priorities"]).all()
        assert int(opt.state[p]["count"]) == 3
    assert replaced > 0  # the full buffer still takes better offers
    for p in ps[1:]:  # the bad element poisons its own tensor's element only
        assert torch.isfinite(p).all() and torch.isfinite(opt.state[p]["buffer"]).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name,path", [pytest.param(n, p, id=f"{n}-{i}") for n in DB for p, i in zip(PATHS, PATH_IDS)
                                       if DB[n].reduces or i != "compiled"])  # (compiled: the reduction)
def test_a_non_finite_gradient_element_poisons_that_element_only(name, path, bad):
    """One NaN (or Inf) gradient element, then good steps: every other element of every parameter stays finite, and
    after a NaN keeps moving, as in torch.optim. Before, Coupled Adam's mean over the vocabulary carried a NaN to
    the whole column (every row of that embedding dimension NaN for good). (An Inf makes its column's mean Inf, as
    the maths says: Coupled Adam's column then takes no step, as Adam's element with an infinite second moment.)"""
    ps = make_params(0, shapes=((6, 4), (5,)))
    opt = adamlab.create_optimizer(name, [{"params": ps[:1]}, {"params": ps[1:]}], lr=0.01, **path)
    gen = torch.Generator().manual_seed(1)
    for t in range(5):
        before = [p.detach().clone() for p in ps]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if t == 1:
            ps[0].grad[2, 1] = bad
        opt.step()
    others = torch.ones(6, 4, dtype=torch.bool)
    others[2, 1] = False
    assert torch.isfinite(ps[0][others]).all() and torch.isfinite(ps[1]).all()
    moving = others.clone()
    if math.isinf(bad) and DB[name].reduces:
        moving[:, 1] = False
    assert (ps[0][moving] != before[0][moving]).all() and (ps[1] != before[1]).all()


def test_finite_mean_is_the_mean_on_finite_input():
    """The guarded mean changes nothing on finite input (the reference's rounding), leaves NaN elements out of a
    column's mean (NaN where a column has nothing else), and keeps an Inf in it."""
    from adamlab.optim._ops import finite_mean

    x = torch.randn(7, 5, dtype=torch.float64)
    assert torch.equal(finite_mean(x, 0), torch.mean(x, 0))
    x[3, 1], x[0, 4], x[:, 2] = math.nan, math.inf, math.nan
    m = finite_mean(x, 0)
    assert torch.equal(m[[0, 3]], torch.mean(x[:, [0, 3]], 0))
    assert torch.allclose(m[1], x[[0, 1, 2, 4, 5, 6], 1].mean(), rtol=1e-15)
    assert m[4] == math.inf and torch.isnan(m[2])


NEAR_ONE = [1 - 1e-9, 1 - 1e-12, 1 - 1e-15, math.nextafter(1.0, 0.0)]


@pytest.mark.parametrize("beta2", NEAR_ONE)
def test_adamx_beta2_next_to_1_steps(beta2):
    """AdamX with β2 = 1 − 1e-9 divided 0 by 0 at the first step (ZeroDivisionError)."""
    from adamlab.optim.adamx import adamx_betas

    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = adamlab.AdamX([p], betas=(0.9, beta2))
    for t in range(1, 6):
        p.grad = torch.full_like(p, 0.5)
        opt.step()
        b1, b2 = adamx_betas(0.9, beta2, t)
        assert 0 <= b2 < 1 and b2 == pytest.approx((t - 1) / t, rel=1e-6)  # the limit as β2 → 1
    assert torch.isfinite(p).all() and not torch.equal(p, torch.ones(3, dtype=torch.float64))


def test_adamx_beta2_schedule_is_the_reference_on_ordinary_betas():
    from adamlab.optim.adamx import adamx_betas

    for beta2 in (0.0, 0.5, 0.99, 0.999):
        for t in (1, 2, 10):
            ref = (1 - beta2 ** ((1 - beta2) * (t - 1))) / (1 - beta2 ** ((1 - beta2) * t))
            assert adamx_betas(0.9, beta2, t)[1] == ref


@pytest.mark.parametrize("which", ["beta1", "beta3"])
@pytest.mark.parametrize("beta", NEAR_ONE)
def test_ademamix_warmup_with_betas_next_to_1(which, beta):
    """AdEMAMix's β3 warmup with β1 or β3 within 1e-8 of 1 divided by zero, or scheduled β3 above 1."""
    from adamlab.optim.ademamix import beta3_schedule

    b1, b3 = (beta, 0.9999) if which == "beta1" else (0.9, beta)
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = adamlab.AdEMAMix([p], betas=(b1, 0.999, b3), beta3_warmup=10, alpha_warmup=10)
    for t in range(1, 12):
        assert 0 <= beta3_schedule(t, b1, b3, 10) < 1
        p.grad = torch.full_like(p, 0.5)
        opt.step()
    assert torch.isfinite(p).all()


def test_ademamix_warmup_is_the_reference_on_ordinary_betas():
    from adamlab.optim.ademamix import beta3_schedule

    def ref(step, b1, b3, warmup):
        f = lambda b: math.log(0.5) / math.log(b + 1e-8) - 1  # noqa: E731
        a = step / float(warmup)
        return math.pow(0.5, 1 / ((1.0 - a) * f(b1) + a * f(b3) + 1))

    for b1, b3 in ((0.9, 0.9999), (0.0, 0.999), (0.5, 0.99)):
        for t in (1, 5, 9):
            assert beta3_schedule(t, b1, b3, 10) == ref(t, b1, b3, 10)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("g,beta2", [(1e25, 0.999), (1e20, 0.0), (1e36, 0.9)])
def test_exadam_is_finite_where_adam_is(path, g, beta2):
    """A finite float32 gradient of 1e25 (1e20 with β2 = 0) gave NaN parameters (v/(v+ε) = inf/inf) where Adam's
    stayed finite. After every step, wherever Adam's parameter is finite, EXAdam's is."""
    ps = {cls: torch.linspace(-1, 1, 64, dtype=torch.float32).requires_grad_()
          for cls in (adamlab.Adam, adamlab.EXAdam)}
    opts = {cls: cls([p], lr=1e-3, betas=(0.9, beta2), **path) for cls, p in ps.items()}
    for t, sign in enumerate((1, -1, 1)):
        for cls, p in ps.items():
            p.grad = torch.full_like(p, sign * g)
            opts[cls].step()
        adam_ok = torch.isfinite(ps[adamlab.Adam].detach())
        assert t > 0 or adam_ok.all()
        assert torch.isfinite(ps[adamlab.EXAdam].detach())[adam_ok].all()
        if not adam_ok.all():
            break


# ---------------------------------------------------------------------- arguments
NAMES = adamlab.list_optimizers()


@pytest.mark.parametrize("path", PATHS[:2], ids=PATH_IDS[:2])
@pytest.mark.parametrize("lr", [torch.tensor([[0.01]]), torch.tensor([0.01]), torch.tensor(0.01)],
                         ids=["1x1", "1", "0d"])
@pytest.mark.parametrize("name", NAMES)
def test_a_one_element_tensor_lr_is_the_number(name, lr, path):
    """An lr of shape [1, 1] failed in every optimizer (broadcast to [1, 10]); of shape [1], AdamW's multi-tensor
    path failed (scalar tensor expected to be 0 dim)."""
    a, b = torch.linspace(-1, 1, 10, dtype=torch.float64), torch.linspace(-1, 1, 10, dtype=torch.float64)
    a.requires_grad_(), b.requires_grad_()
    oa = adamlab.create_optimizer(name, [a], lr=lr, **path)
    ob = adamlab.create_optimizer(name, [b], lr=float(lr), **path)  # (a float32 0.01 as a number)
    for t in range(3):
        a.grad, b.grad = torch.cos(a.detach() + t), torch.cos(b.detach() + t)
        oa.step()
        ob.step()
    assert a.shape == (10,) and torch.equal(a, b)


def test_numpy_numbers_and_tensor_betas_are_accepted():
    import numpy as np

    p = torch.ones(4, requires_grad=True)
    p.grad = torch.ones(4)
    adamlab.AdamCM([p], lr=np.float32(0.01), buffer_size=np.int64(3)).step()
    adamlab.Adam([p], betas=(torch.tensor([0.9]), torch.tensor([[0.99]]))).step()
    adamlab.create_optimizer("adam", [p], beta1=np.float64(0.8)).step()
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
@pytest.mark.parametrize("name", NAMES)
def test_integer_parameters_are_refused_up_front(name, dtype):
    """Integer or bool parameters were accepted and failed at the first step (lerp_kernel_scalar ... 'Long')."""
    with pytest.raises(TypeError, match="floating-point"):
        adamlab.create_optimizer(name, [torch.zeros(3, dtype=dtype)])


@pytest.mark.parametrize("name", NAMES)
def test_an_edited_param_group_is_checked_at_the_next_step(name):
    """Param-group edits were not re-validated (a negative lr stepped)."""
    p = torch.ones(4, dtype=torch.float64, requires_grad=True)
    opt = adamlab.create_optimizer(name, [p], lr=0.01)
    p.grad = torch.ones_like(p)
    opt.step()
    before = p.detach().clone()
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_sharded_mean_over_rows_of_two_ranks_leaves_nan_elements_out():
    """The sharded form of the guarded mean (FSDP2's rows split over ranks; here two threads exchange what the two
    ranks' all-reduces would): a NaN in one rank's rows leaves the other elements of its column averaged, as one
    process averages them; other columns are the plain mean, and both ranks take the second collective alike."""
    import threading

    from torch.distributed.tensor import Shard

    from adamlab.optim import _dist
    from adamlab.optim._ops import finite_mean

    x = torch.randn(7, 5, dtype=torch.float64)
    x[1, 2], x[5, 4] = math.nan, math.inf
    rows = [x[:4], x[4:]]
    barrier, slots, calls = threading.Barrier(2), [None, None], [0, 0]

    class TwoRanks(_dist.Sharding):
        def __init__(self, rank):
            self.rank, self.shape, self.placements = rank, tuple(x.shape), (Shard(0),)

        def _all_reduce(self, t, mesh_dims):
            calls[self.rank] += 1
            slots[self.rank] = t.clone()
            barrier.wait()
            t.copy_(slots[0] + slots[1])
            barrier.wait()
            return t

    out = [None, None]

    def rank(r):
        out[r] = TwoRanks(r).means([rows[r]], 0)[0]

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert calls == [2, 2]
    want = finite_mean(x, 0)
    assert not torch.isnan(want).any() and want[4] == math.inf
    for got in out:
        assert torch.allclose(got, want, rtol=1e-14, atol=0)
