"""The inclusion lattice for the classic family: each exact row holds to round-off,
and the approximate Momentum ⊆ Adam row converges as ε grows."""

import pytest
import torch

import adamlab

from trajectory import max_rel, run


def test_sgd_is_momentum_with_zero_momentum(path):
    a, _ = run(lambda g: adamlab.SGD(g, lr=0.1, momentum=0.0, **path))
    b, _ = run(lambda g: torch.optim.SGD(g, lr=0.1))
    assert max_rel(a, b) <= 1e-12


def test_sgd_is_nesterov_with_zero_momentum(path):
    # torch rejects nesterov with momentum 0; the lattice's row is the update rule itself: g + 0·b = g.
    class _Nesterov0(adamlab.SGD):
        def _validate(self, group):
            pass

    a, _ = run(lambda g: _Nesterov0(g, lr=0.1, momentum=0.0, nesterov=True, **path))
    b, _ = run(lambda g: torch.optim.SGD(g, lr=0.1))
    assert max_rel(a, b) <= 1e-12


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_momentum_is_rmsprop(gamma, path):
    a, _ = run(lambda g: adamlab.RMSprop(g, lr=0.05, alpha=1.0, eps=0.0, initial_accumulator_value=1.0,
                                         momentum=gamma, **path))
    b, _ = run(lambda g: torch.optim.SGD(g, lr=0.05, momentum=gamma))
    assert max_rel(a, b) <= 1e-12


def test_sgd_is_adam(path):
    a, _ = run(lambda g: adamlab.Adam(g, lr=0.05, betas=(0.0, 1.0), eps=0.0, initial_accumulator_value=1.0, **path))
    b, _ = run(lambda g: torch.optim.SGD(g, lr=0.05))
    assert max_rel(a, b) <= 1e-12


def test_momentum_is_adam_as_eps_grows():
    """Choi et al.: with ε → ∞ and lr·(1−β₁)/ε·√(1−β₂ᵗ)/(1−β₁ᵗ) held at the momentum lr, Adam → momentum SGD.

    Adam's step is lr/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + ε). Holding that factor at the SGD lr through the per-step lr
    and growing ε, the gap to SGD(momentum=β₁) shrinks like 1/ε.
    """
    beta1, beta2, lr_sgd = 0.9, 0.999, 0.02
    ref, _ = run(lambda g: torch.optim.SGD(g, lr=lr_sgd, momentum=beta1, dampening=0.0), steps=30)
    gaps = []
    for eps in (1e1, 1e3, 1e5, 1e7):
        ps_out, _ = _adam_scaled(eps, beta1, beta2, lr_sgd)
        gaps.append(max_rel(ps_out, ref))
    assert all(b < a / 10 for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-5


def _adam_scaled(eps, beta1, beta2, lr_sgd, steps=30):
    """Adam with the per-step lr that matches momentum SGD in the ε → ∞ limit.

    Adam's m = (1−β₁)·Σβ₁^(t−k) g_k is (1−β₁) × SGD's undampened buffer, so the lr that matches SGD is
    lr_sgd·ε·(1−β₁ᵗ)/(1−β₁) once √v/√(1−β₂ᵗ) ≪ ε.
    """
    from trajectory import fake_grad, make_params

    ps = make_params()
    groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}]
    opt = adamlab.Adam(groups, lr=1.0, betas=(beta1, beta2), eps=eps, foreach=True)
    base = [0.02, 0.03]  # the per-group SGD learning rates of trajectory.run
    for t in range(1, steps + 1):
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * eps * (1 - beta1 ** t) / (1 - beta1)
        for p in ps:
            p.grad = fake_grad(p, t - 1)
        opt.step()
    return torch.cat([p.detach().flatten() for p in ps]), opt
