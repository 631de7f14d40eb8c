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


# ---------------------------------------------------------------------- the test database's problem
#: five tensors of several ranks (a 2-D one last, for Coupled Adam's coupled groups)
SHAPES = ((5, 3), (7,), (1,), (2, 2, 3), (9, 4))
LR_CHANGE = 20  # the step before which every group's lr is halved (as an LR scheduler would)


def two_groups(ps):
    """The default split: two param groups, the second at lr 0.03."""
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}]


def scale(t: int, i: int) -> float:
    """Gradient scales that vary by step and tensor (AdamCM/AdamCG: priorities cross, full buffers both replace and
    discard)."""
    return 1.0 + 2.0 * ((7 * t + 3 * i) % 5)


def skipped(i: int, t: int) -> bool:
    """Tensor 2 starts two steps late and then has no gradient on every third step: its step count lags the
    others' (the engine buckets it apart), and a first step comes when the others are running."""
    return i == 2 and (t < 2 or t % 3 == 1)


def advance(opt, ps, start: int, stop: int, sign: float = 1.0) -> None:
    """Steps ``start`` to ``stop`` of the problem: gradients ``sign · fake_grad · scale`` (none where
    :func:`skipped`), every group's lr halved before step ``LR_CHANGE``."""
    for t in range(start, stop):
        for i, p in enumerate(ps):
            p.grad = None if skipped(i, t) else sign * fake_grad(p, t) * scale(t, i)
        if t == LR_CHANGE:
            for g in opt.param_groups:
                g["lr"] = g["lr"] * 0.5
        opt.step()


def trajectory(make_opt, steps: int = 36, groups=None, sign: float = 1.0, seed: int = 0):
    """The problem run for ``steps`` steps from its start (float64): the flat parameters, the optimizer and the
    parameters. ``groups(params)`` splits them into param groups (default :func:`two_groups`)."""
    ps = make_params(seed, shapes=SHAPES)
    opt = make_opt((groups or two_groups)(ps))
    advance(opt, ps, 0, steps, sign)
    return flat(ps), opt, ps


def flat(ps) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in ps])


def state_equal(a, b, pa, pb) -> bool:
    """Optimizers ``a`` (over ``pa``) and ``b`` (over ``pb``) hold the same state, bit for bit and dtype for
    dtype."""
    for p, q in zip(pa, pb):
        sa, sb = a.state.get(p, {}), b.state.get(q, {})
        if sa.keys() != sb.keys():
            return False
        for k, v in sa.items():
            w = sb[k]
            if torch.is_tensor(v):
                if not (torch.is_tensor(w) and v.dtype == w.dtype and torch.equal(v, w)):
                    return False
            elif v != w:
                return False
    return True
