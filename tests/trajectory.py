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
