"""Training utilities: clipping, accumulation, schedules."""

import math

import pytest
import torch

import adamlab
from adamlab import train


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def test_clip_by_value_and_norm():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([3.0, -4.0, 0.5])
    train.clip_grad_value_([p], 1.0)
    assert p.grad.tolist() == [1.0, -1.0, 0.5]
    q = torch.zeros(2, requires_grad=True)
    q.grad = torch.tensor([3.0, 4.0])
    norm = train.clip_grad_norm_([q], 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert torch.allclose(q.grad, torch.tensor([0.6, 0.8]), atol=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        train.clip_grad_norm_([q], 0.0)
    with pytest.raises(ValueError, match="clip_value"):
        train.clip_grad_value_([q], -1.0)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_large_batch(k):
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(16, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    big, small = _model(), _model()
    opt_big = adamlab.Adam(big.parameters(), lr=0.01)
    opt_small = adamlab.Adam(small.parameters(), lr=0.01)
    acc = train.GradientAccumulator(opt_small, steps=k)
    for _ in range(3):
        opt_big.zero_grad()
        torch.nn.functional.mse_loss(big(x), y).backward()
        opt_big.step()
        stepped = [acc.backward(torch.nn.functional.mse_loss(small(xb), yb))
                   for xb, yb in zip(x.chunk(k), y.chunk(k))]
        assert stepped == [False] * (k - 1) + [True]
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_accumulator_validates():
    opt = adamlab.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        train.GradientAccumulator(opt, steps=0)


def _lrs(make, n=6, lr=1.0):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules():
    assert _lrs(lambda o: train.time_based_decay(o, 0.5), 4) == pytest.approx([1, 1 / 1.5, 1 / 2, 1 / 2.5])
    assert _lrs(lambda o: train.step_decay(o, 0.5, 2), 6) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    assert _lrs(lambda o: train.exponential_decay(o, 0.1), 3) == pytest.approx([1, math.exp(-0.1), math.exp(-0.2)])
    wc = _lrs(lambda o: train.warmup_cosine(o, 2, 6, min_ratio=0.1), 8)
    assert wc[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert wc[4] == pytest.approx(0.1 + 0.9 * 0.5)
    assert wc[6:] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="total_steps"):
        train.warmup_cosine(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), 5, 5)


def test_schedule_drives_adamlab_optimizer():
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = adamlab.SGD([p], lr=1.0, foreach=True)
    sched = train.step_decay(opt, 0.5, 1)
    for _ in range(3):
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        sched.step()
    assert p.item() == pytest.approx(-(1 + 0.5 + 0.25))
