"""The torch.optim contract: param forms, skipping, closure, groups, schedulers, state_dict, bad input."""


import pytest
import torch

import adamlab
from adamlab.optim._base import AdamlabOptimizer, compiler_available

from internals import auto_compile_numel, record_compiled_runs
from trajectory import fake_grad, make_params, max_rel, run


def test_param_forms_give_same_result():
    kw = dict(lr=0.01, weight_decay=0.1)
    a, _ = run(lambda gr: adamlab.AdamW(gr, **kw), groups=lambda ps: ps)
    b, _ = run(lambda gr: adamlab.AdamW(gr, **kw), groups=lambda ps: [{"params": ps}])
    c, opt = run(lambda gr: adamlab.AdamW(gr, **kw), groups=lambda ps: [(f"w{i}", p) for i, p in enumerate(ps)])
    assert torch.equal(a, b) and torch.equal(a, c)
    assert opt.param_groups[0]["param_names"] == ["w0", "w1", "w2", "w3"]


def test_single_tensor_params_rejected():
    with pytest.raises(TypeError, match="params"):
        adamlab.Adam(torch.zeros(3, requires_grad=True))


def test_params_without_grad_are_skipped(path):
    p, q = make_params(shapes=((3,), (4,)))
    q0 = q.detach().clone()
    opt = adamlab.Adam([p, q], lr=0.1, **path)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(q.detach(), q0) and q not in opt.state
    assert int(opt.state[p]["step"]) == 1


def test_step_is_a_tensor_per_parameter():
    p, q = make_params(shapes=((3,), (4,)))
    opt = adamlab.Adam([p, q], lr=0.1, foreach=True)
    p.grad = torch.ones_like(p)
    opt.step()
    q.grad = torch.ones_like(q)
    opt.step()
    assert isinstance(opt.state[p]["step"], torch.Tensor)
    assert (int(opt.state[p]["step"]), int(opt.state[q]["step"])) == (2, 1)


def test_mixed_steps_match_loop():
    """Parameters at different step counts are bucketed so each gets its own bias correction."""
    outs = []
    for path in (dict(foreach=False), dict(foreach=True)):
        p, q = make_params(shapes=((3,), (4,)))
        opt = adamlab.Adam([p, q], lr=0.1, **path)
        for t in range(5):
            p.grad = fake_grad(p, t)
            q.grad = fake_grad(q, t) if t >= 2 else None
            opt.step()
        outs.append(torch.cat([p.detach(), q.detach()]))
    assert torch.equal(outs[0], outs[1])


def test_closure_and_zero_grad():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = adamlab.SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    assert torch.allclose(w.detach(), torch.tensor([0.8, -1.6], dtype=torch.float64))
    opt.zero_grad()
    assert w.grad is None


def test_add_param_group_fills_defaults():
    """(A bad setting in add_param_group raises and leaves the groups as they were: test_all_optimizers's
    test_bad_arguments, on every row's every bad group setting.)"""
    p, q = make_params(shapes=((3,), (4,)))
    opt = adamlab.Adam([p], lr=0.1)
    opt.add_param_group({"params": [q], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("path", [dict(compiled=True)], ids=["compiled"])
def test_maximize_is_minimize_of_negation(path):
    """Bit for bit on the compiled path too (maximize is compiled in: two graphs); the loop and multi-tensor paths:
    test_all_optimizers's test_maximize_is_minimize_of_negation, on every row's every setting."""
    a, _ = run(lambda gr: adamlab.Adam(gr, lr=0.01, maximize=True, **path))
    ps = make_params()
    opt = adamlab.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}], lr=0.01, **path)
    for t in range(30):
        for p in ps:
            p.grad = -fake_grad(p, t)
        opt.step()
    assert max_rel(torch.cat([p.detach().flatten() for p in ps]), a) == 0.0


def test_lr_scheduler_changes_lr(path):
    import math

    from adamlab.train import exponential_decay

    ps = make_params(shapes=((4,),))
    opt = adamlab.SGD(ps, lr=1.0, **path)
    sched = exponential_decay(opt, 0.5)
    x0 = ps[0].detach().clone()
    for _ in range(3):
        ps[0].grad = torch.ones_like(ps[0])
        opt.step()
        sched.step()
    total = sum(math.exp(-0.5 * t) for t in range(3))
    assert torch.allclose(ps[0].detach(), x0 - total, rtol=0, atol=1e-12)


def test_load_state_dict_keeps_float64_state_for_float32_params_policy():
    """torch casts loaded state to the param dtype; adamlab keeps the saved dtype unless its policy says else."""
    p = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    opt = adamlab.Adam([p], lr=0.1, state_dtype=torch.bfloat16)
    p.grad = torch.ones(3)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
    sd = opt.state_dict()
    q = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    opt2 = adamlab.Adam([q], lr=0.1)  # default policy: keep the saved dtype
    opt2.load_state_dict(sd)
    assert opt2.state[q]["exp_avg"].dtype == torch.bfloat16
    opt3 = adamlab.Adam([q], lr=0.1, state_dtype=torch.float32)  # a different policy converts
    opt3.load_state_dict(sd)
    assert opt3.state[q]["exp_avg"].dtype == torch.float32
    assert torch.equal(opt3.state[q]["exp_avg"], sd["state"][0]["exp_avg"].float())


def test_sparse_gradients_rejected():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = adamlab.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        opt.step()


def test_every_optimizer_is_a_torch_optimizer():
    for name in adamlab.list_optimizers():
        opt = adamlab.create_optimizer(name, [torch.zeros(3, requires_grad=True)])
        assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, AdamlabOptimizer)


def test_non_contiguous_and_channels_last_params(path):
    """Transposed and channels-last parameters follow the same trajectory as contiguous copies."""
    base = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = base.clone().to(memory_format=torch.channels_last).requires_grad_()
    b = base.clone().transpose(0, 1).requires_grad_()  # a non-contiguous leaf
    c = base.clone().requires_grad_()
    d = base.clone().transpose(0, 1).contiguous().requires_grad_()
    opt = adamlab.Adam([a, b, c, d], lr=0.05, weight_decay=0.1, **path)
    for t in range(5):
        for p in (a, b, c, d):
            p.grad = fake_grad(p, t)
        opt.step()
    assert not b.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last)
    assert max_rel(a.detach(), c.detach()) <= 1e-12
    assert max_rel(b.detach(), d.detach()) <= 1e-12


def test_step_hooks_run():
    p = torch.zeros(2, requires_grad=True)
    opt = adamlab.Adam([p], lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    p.grad = torch.ones(2)
    opt.step()
    assert seen == ["pre", "post"]


def test_float32_matches_torch_within_float32_roundoff(path):
    ps = make_params(dtype=torch.float32)
    qs = [p.detach().clone().requires_grad_() for p in ps]
    a = adamlab.AdamW(ps, lr=0.01, **path)
    b = torch.optim.AdamW(qs, lr=0.01)
    for t in range(20):
        for p, q in zip(ps, qs):
            p.grad = fake_grad(p, t)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ps, qs):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


def test_default_path_compiles_only_big_buckets(monkeypatch):
    """The default ('auto') takes the multi-tensor path for small buckets and compiles big ones."""
    monkeypatch.delenv("ADAMLAB_IMPL", raising=False)
    calls = []
    record_compiled_runs(monkeypatch, lambda opt, ps: calls.append(sum(p.numel() for p in ps)))
    small = [torch.zeros(10, requires_grad=True)]
    big = [torch.zeros(auto_compile_numel(), requires_grad=True)]
    for ps in (small, big):
        opt = adamlab.Adam(ps, lr=0.1)
        assert opt.implementation == "auto"
        ps[0].grad = torch.ones_like(ps[0])
        opt.step()
    assert calls == ([auto_compile_numel()] if compiler_available() else [])


def test_norms_big_cpu_tensors_by_dot_small_by_foreach():
    """The priority norms (AdamCM/AdamCG): a dot for big float32/float64 CPU tensors, torch's multi-tensor norm for
    the rest, each within round-off of the float64 norm; low-precision tensors are normed in float32."""
    from adamlab.optim import _ops

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=gen) * 3 + 1 for n in (_ops._DOT_NUMEL - 1, _ops._DOT_NUMEL, 300_000, 5)]
    xs.append(torch.randn(64, _ops._DOT_NUMEL // 32, generator=gen, dtype=torch.float64).t())  # not contiguous
    xs.append(torch.randn(_ops._DOT_NUMEL, generator=gen).bfloat16())
    ref = [float(x.double().norm()) for x in xs]
    for norms in (_ops.F.norm(xs), [_ops.T.norm(x) for x in xs]):
        assert [n.dtype for n in norms] == [torch.float32] * 4 + [torch.float64, torch.float32]
        assert all(n.dim() == 0 for n in norms)
        rel = [abs(float(n) / r - 1) for n, r in zip(norms, ref)]
        assert max(rel[:4] + rel[5:]) < 1e-5 and rel[4] < 1e-14, rel
