"""Shared helpers for trajectory tests: a deterministic multi-tensor, multi-group problem in float64."""

from __future__ import annotations

import torch


def make_params(seed: int = 0, dtype=torch.float64, shapes=((5, 3), (7,), (1,), (2, 2, 3))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def fake_grad(p: torch.Tensor, t: int) -> torch.Tensor:
    """A gradient that depends on the parameter (so trajectories differ when updates differ) and on the step."""
    x = p.detach()
    return torch.sin(3 * x + 0.7 * t) + 0.1 * x + 0.05 * torch.cos(x * (t + 1))


def run(make_opt, steps: int = 30, seed: int = 0, groups=None, shapes=((5, 3), (7,), (1,), (2, 2, 3))):
    """Run ``steps`` steps; ``groups(params)`` splits params into param groups (default: two groups)."""
    ps = make_params(seed, shapes=shapes)
    if groups is None:
        split = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}]
    else:
        split = groups(ps)
    opt = make_opt(split)
    for t in range(steps):
        for p in ps:
            p.grad = fake_grad(p, t)
        opt.step()
    return torch.cat([p.detach().flatten() for p in ps]), opt


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def resume_matches(make_opt, k: int = 8, total: int = 20) -> bool:
    """Save the optimizer at step ``k`` through torch.save/torch.load, load it into a fresh optimizer over fresh
    parameters, continue to ``total``: True when that equals the uninterrupted run bit for bit (state included)."""
    import io

    full, _ = run(make_opt, steps=total)
    ps = make_params()
    groups = lambda qs: [{"params": qs[:2]}, {"params": qs[2:], "lr": 0.03}]  # noqa: E731 (as in run)
    opt = make_opt(groups(ps))
    for t in range(k):
        for p in ps:
            p.grad = fake_grad(p, t)
        opt.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in ps]}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    ps2 = [p.clone().requires_grad_() for p in ck["params"]]
    opt2 = make_opt(groups(ps2))
    opt2.load_state_dict(ck["opt"])
    for p, q in zip(ps, ps2):
        for key, v in opt.state[p].items():
            if not (torch.equal(opt2.state[q][key], v) and opt2.state[q][key].dtype == v.dtype):
                return False
    for t in range(k, total):
        for p in ps2:
            p.grad = fake_grad(p, t)
        opt2.step()
    return torch.equal(torch.cat([p.detach().flatten() for p in ps2]), full)
