"""Training-loop pieces every optimizer course teaches, usable with any ``torch.optim.Optimizer``.

* gradient clipping by value and by global norm;
* gradient accumulation over ``k`` micro-batches (for a mean-reduced loss, equal to round-off to one step on the
  k-times larger batch);
* learning-rate schedules: time-based decay, step decay, exponential decay, and linear warmup with cosine decay,
  each a ``torch.optim.lr_scheduler.LambdaLR`` so it composes with the rest of torch's scheduler machinery.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "clip_grad_value_", "clip_grad_norm_", "GradientAccumulator",
    "time_based_decay", "step_decay", "exponential_decay", "warmup_cosine",
]


def _params(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        return [parameters]
    return [p for p in parameters]


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place."""
    if not clip_value > 0:
        raise ValueError(f"Invalid clip_value: {clip_value!r} (expected clip_value > 0)")
    torch.nn.utils.clip_grad_value_(_params(parameters), clip_value)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Rescale all gradients together so that their global ``norm_type``-norm is at most ``max_norm``.

    Returns the global norm before clipping (torch's implementation, one fused reduction per device).
    """
    if not max_norm > 0:
        raise ValueError(f"Invalid max_norm: {max_norm!r} (expected max_norm > 0)")
    return torch.nn.utils.clip_grad_norm_(_params(parameters), max_norm, norm_type=norm_type)


class GradientAccumulator:
    """Accumulate gradients over ``steps`` micro-batches, then step the optimizer once.

    Call :meth:`backward` with each micro-batch's mean-reduced loss; the loss is scaled by ``1/steps`` so the
    accumulated gradient is the gradient of the mean over the whole (k-times larger) batch. Returns True on the
    calls that stepped. ``clip_norm`` optionally clips the accumulated gradient before the step.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = adamlab.SGD(model.parameters(), lr=0.1)
        >>> acc = GradientAccumulator(opt, steps=4)
        >>> [acc.backward(model(x).pow(2).mean()) for x in torch.randn(8, 2, 4)]
        [False, False, False, True, False, False, False, True]
    """

    def __init__(self, optimizer: Optimizer, steps: int, clip_norm: float | None = None) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Invalid steps: {steps!r} (expected an integer >= 1)")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"Invalid clip_norm: {clip_norm!r} (expected clip_norm > 0 or None)")
        self.optimizer, self.steps, self.clip_norm = optimizer, steps, clip_norm
        self.count = 0

    def backward(self, loss: Tensor) -> bool:
        (loss / self.steps).backward()
        self.count += 1
        if self.count < self.steps:
            return False
        if self.clip_norm is not None:
            clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None],
                            self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.count = 0
        return True


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected {name} >= 0)")


def time_based_decay(optimizer: Optimizer, decay: float) -> LambdaLR:
    """η_t = η₀ / (1 + decay · t) (Keras' time-based decay), t counted in scheduler steps."""
    _check_nonneg("decay", decay)
    return LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))


def step_decay(optimizer: Optimizer, drop: float, every: int) -> LambdaLR:
    """η_t = η₀ · drop^⌊t / every⌋: multiply by ``drop`` every ``every`` steps."""
    if not 0 < drop <= 1:
        raise ValueError(f"Invalid drop: {drop!r} (expected drop in (0, 1])")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Invalid every: {every!r} (expected an integer >= 1)")
    return LambdaLR(optimizer, lambda t: drop ** (t // every))


def exponential_decay(optimizer: Optimizer, k: float) -> LambdaLR:
    """η_t = η₀ · exp(−k t)."""
    _check_nonneg("k", k)
    return LambdaLR(optimizer, lambda t: math.exp(-k * t))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup from 0 to η₀ over ``warmup_steps``, then cosine decay to ``min_ratio``·η₀ at ``total_steps``.

    η_t = η₀ · t / warmup for t < warmup; afterwards
    η₀ · (min_ratio + (1 − min_ratio) · ½(1 + cos(π · (t − warmup) / (total − warmup)))), held after total.

    Example::

        >>> opt = adamlab.AdamW([torch.zeros(2, requires_grad=True)], lr=1.0)
        >>> sched = warmup_cosine(opt, warmup_steps=2, total_steps=4)
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3)); opt.step(); sched.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    for name, v in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"Invalid {name}: {v!r} (expected an integer >= 0)")
    if total_steps <= warmup_steps:
        raise ValueError(f"Invalid total_steps: {total_steps} (expected total_steps > warmup_steps = {warmup_steps})")
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"Invalid min_ratio: {min_ratio!r} (expected min_ratio in [0, 1])")

    def factor(t: int) -> float:
        if t < warmup_steps:
            return t / warmup_steps
        progress = min(1.0, (t - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
