"""The classic family reproduces torch.optim of the same name in float64, on every implementation path."""

import pytest
import torch

import adamlab

from trajectory import max_rel, run

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3, eps=1e-6)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3, amsgrad=True, eps=1e-3)),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_matches_torch_optim(name, kw, path):
    ref, _ = run(lambda groups: getattr(torch.optim, name)(groups, **kw))
    out, opt = run(lambda groups: getattr(adamlab, name)(groups, **kw, **path))
    tol = 1e-12 if "compiled" in path else 0.0  # loop and foreach follow torch's operation order exactly
    assert max_rel(out, ref) <= tol
    assert not torch.equal(out, run(lambda groups: getattr(torch.optim, name)(groups, **kw), steps=0)[0])


def test_rmsprop_initial_accumulator_value():
    """v₀ = 1 is the TF convention: the first update is g/sqrt(α + (1-α)g²)."""
    p = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    opt = adamlab.RMSprop([p], lr=0.1, alpha=0.9, eps=0.0, initial_accumulator_value=1.0, foreach=False)
    p.grad = torch.tensor([3.0], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(2.0 - 0.1 * 3 / (0.9 + 0.1 * 9) ** 0.5, rel=1e-15)


def test_adam_initial_accumulator_value_skips_v_correction():
    """With v₀ ≠ 0 the raw v is used (no 1 − β₂ᵗ correction); m is still bias-corrected."""
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = adamlab.Adam([p], lr=0.1, betas=(0.9, 0.99), eps=0.0, initial_accumulator_value=0.5, foreach=False)
    p.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    m_hat = (0.1 * 2.0) / 0.1
    v = 0.99 * 0.5 + 0.01 * 4.0
    assert p.item() == pytest.approx(1.0 - 0.1 * m_hat / v ** 0.5, rel=1e-15)
