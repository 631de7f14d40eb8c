"""AdEMAMix (Pagliardini, Ablin & Grangier, arXiv:2409.03137): AdamW whose numerator mixes a fast and a
very slow EMA of the gradient, with linear warmups of the mixing weight α and of the slow β3."""

from __future__ import annotations

import math
from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_betas, check_common, check_range

__all__ = ["AdEMAMix", "alpha_schedule", "beta3_schedule"]


class AdEMAMixScalars(TypedDict):
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    beta3: float  #: β₃ at this step (its warmup schedule)
    one_minus_beta3: float
    bc1: float
    bc2_sqrt: float
    eps: float
    alpha: float  #: α at this step (its warmup schedule)
    neg_lr: float


class AdEMAMixConstants(TypedDict):
    fast: bool  #: β₁ ≠ 0 (β₁ = 0: the fast EMA is the gradient itself)


def alpha_schedule(step: int, alpha: float, warmup: float | None) -> float:
    """α_t = α·t/T_α while t < T_α, else α (the reference's linear warmup from 0, in its float arithmetic)."""
    if warmup is not None and step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * 0 + a * alpha
    return alpha


def _half_life(beta: float) -> float:
    # the reference's ln(β + 1e-8) keeps β = 0 finite; for β within 1e-8 of 1 it is ln of 1 or more (a division by
    # zero, or a negative half-life): there ln β itself, negative for every β < 1
    return math.log(0.5) / (math.log(beta + 1e-8) if beta + 1e-8 < 1 else math.log(beta)) - 1


def beta3_schedule(step: int, beta1: float, beta3: float, warmup: float | None) -> float:
    """β3_t, linear in the half-life f(β) = ln 0.5 / ln(β + 1e-8) − 1 from f(β1) to f(β3) while t < T_β3; always
    in [0, 1)."""
    if warmup is not None and step < warmup:
        a = step / float(warmup)
        b = math.pow(0.5, 1 / ((1.0 - a) * _half_life(beta1) + a * _half_life(beta3) + 1))
        return b if b < 1 else max(beta1, beta3)  # half-lives so long that 0.5^(1/f) rounds to 1
    return beta3


class AdEMAMix(AdamlabOptimizer):
    r"""AdEMAMix: AdamW with a second, slow momentum added to the numerator, weighted by α.

    .. math::
        \begin{aligned}
        \alpha_t &= \alpha \min(1, t/T_\alpha), \qquad
        \beta_{3,t} = f^{-1}\!\big((1 - \tfrac{t}{T_{\beta_3}}) f(\beta_1) + \tfrac{t}{T_{\beta_3}} f(\beta_3)\big)
            \ (t < T_{\beta_3}), \\
        &\qquad f(\beta) = \frac{\ln 0.5}{\ln(\beta + 10^{-8})} - 1, \quad f^{-1}(x) = 0.5^{1/(x+1)} \\
        m_1 &\leftarrow \beta_1 m_1 + (1-\beta_1) g \quad (\beta_1 = 0:\ m_1 := g,\ \text{no buffer}), \qquad
        m_2 \leftarrow \beta_{3,t} m_2 + (1-\beta_{3,t}) g, \qquad
        \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2 \\
        u &= \frac{m_1/(1-\beta_1^t) + \alpha_t m_2}{\sqrt{\nu}/\sqrt{1-\beta_2^t} + \epsilon}, \qquad
        \theta \leftarrow \theta - \eta\,(u + \lambda\theta)
        \end{aligned}

    The slow EMA m₂ is never bias-corrected. The schedules are evaluated at the incremented step t (1 at the
    first step) and enter the update as per-step scalars, so a warmup never recompiles the compiled path.
    ``alpha=0`` is AdamW (the same betas, eps and decay) up to round-off. With ``betas[0] = 0`` no m₁ buffer is
    allocated: the state holds ``exp_avg_slow`` and ``exp_avg_sq`` only, the memory of AdamW.

    Paper: Matteo Pagliardini, Pierre Ablin, David Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
    arXiv:2409.03137. Reference: ``apple/ml-ademamix``, ``pytorch/ademamix.py``, commit e732715. adamlab
    follows its order of operations, so on the CPU the loop and multi-tensor paths reproduce it bit for bit
    (tested in float64).

    Differences from the reference code:

    * Argument order: ``alpha_warmup`` comes before ``beta3_warmup`` here (the reference has
      ``beta3_warmup, alpha_warmup``); pass them by keyword. ``maximize`` is added.
    * The warmups must be positive numbers or ``None`` (the reference accepts 0 or negative values, which it
      treats as no warmup).
    * With ``beta3_warmup`` and β1 or β3 within 1e-8 of 1, the reference's half-life ln 0.5 / ln(β + 1e-8) divides
      by zero or turns negative (β3_t above 1); adamlab takes ln β there, and keeps β3_t below 1.
    * With β1 = 0 the reference stores ``exp_avg_fast = None`` in the state; adamlab stores no entry, so the
      state holds tensors only.
    * Defaults are the reference class's: α = 2. Other ports' defaults, not adopted: α = 5 (optax
      ``contrib.ademamix``, bitsandbytes, pytorch_optimizer, and the reference repository's own optax
      ``ademamix``), α = 6 (optax ``scale_by_ademamix``), α = 8 with T_α = T_β3 = total steps (the reference
      README's example). The optax versions evaluate the schedules one step earlier (at t − 1) and drop the
      1e-8 inside f; pytorch_optimizer uses one ``t_alpha_beta3`` for both warmups.

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂, β₃): the fast EMA, the second moment and the slow EMA; each in [0, 1) (β₁ = 0: no fast
            EMA buffer).
        alpha: α ≥ 0, the weight of the slow EMA in the numerator (0: AdamW).
        alpha_warmup: T_α, steps of linear warmup of α from 0 (``None``: no warmup).
        beta3_warmup: T_β3, steps of warmup of β₃ from β₁, linear in the half-life (``None``: no warmup).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, decoupled: θ ← θ − ηλθ, in the same step as the update.
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AdEMAMix(model.parameters(), lr=1e-3, alpha=8.0, alpha_warmup=1000, beta3_warmup=1000,
        ...                weight_decay=0.1)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """

    _weight_decay = "rule"  # λθ is added to the update u, inside the step, as the reference does
    Scalars, Constants = AdEMAMixScalars, AdEMAMixConstants

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 2.0, alpha_warmup: int | None = None, beta3_warmup: int | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=betas, alpha=alpha,
                        alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup, eps=eps,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group)
        check_betas(group["betas"], 3)
        check_range("alpha", group["alpha"], 0.0)
        for name in ("alpha_warmup", "beta3_warmup"):
            if group[name] is not None:
                check_range(name, group[name], 0.0, lo_open=True)

    def _init_state(self, p, group):
        st = {}
        if group["betas"][0] != 0:
            st["exp_avg_fast"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_slow"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    def _constants(self, group):
        return AdEMAMixConstants(fast=group["betas"][0] != 0)

    def _scalars(self, group, step):
        beta1, beta2, beta3 = group["betas"]
        beta3_t = beta3_schedule(step, beta1, beta3, group["beta3_warmup"])
        return AdEMAMixScalars(beta1=beta1, one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                               beta3=beta3_t, one_minus_beta3=1 - beta3_t, bc1=1 - beta1 ** step,
                               bc2_sqrt=math.sqrt(1 - beta2 ** step), eps=group["eps"],
                               alpha=alpha_schedule(step, group["alpha"], group["alpha_warmup"]),
                               neg_lr=-group["lr"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        if c["fast"]:
            m1 = o.axpy_(o.mul_(st["exp_avg_fast"], s["beta1"]), g, s["one_minus_beta1"])
        else:
            m1 = g
        m2 = o.axpy_(o.mul_(st["exp_avg_slow"], s["beta3"]), g, s["one_minus_beta3"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), g, g, s["one_minus_beta2"])
        denom = o.add_(o.div_(o.sqrt(v), s["bc2_sqrt"]), s["eps"])
        u = o.div_(o.add_(o.div(m1, s["bc1"]), o.mul(m2, s["alpha"])), denom)
        if c["decay"]:
            o.axpy_(u, p, s["weight_decay"])
        o.add_(p, o.mul_(u, s["neg_lr"]))
