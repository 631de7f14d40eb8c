"""EXAdam (Adly, arXiv:2412.20302): Adam with cross-moment debiasing and a gradient acceleration term."""

from __future__ import annotations

import math
from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_bool, check_common

__all__ = ["EXAdam"]


class EXAdamScalars(TypedDict):
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    beta1_t: float  #: β₁ᵗ
    beta2_t: float  #: β₂ᵗ
    bc1: float
    bc2: float
    eps: float
    neg_step_size: float  #: −η, or −η·ln(√2·√(t+1)) with ``dynamic_step_size``

_BIG = 1e38  # above it, v/(v+ε) = 1 in float32 and float64 alike (below float32's and bfloat16's largest value)

_SQRT_2 = math.sqrt(2.0)


class EXAdam(AdamlabOptimizer):
    r"""EXAdam: Adam whose debiasing of each moment is scaled by the other moment, plus the debiased gradient.

    .. math::
        \begin{aligned}
        \theta &\leftarrow \theta - \eta\lambda\theta \quad (\lambda \ne 0;\ \text{decoupled, first}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        d_1 &= 1 + \frac{v_t}{v_t+\epsilon}\,\beta_2^t, \qquad d_2 = 1 + \frac{m_t^2}{m_t^2+\epsilon}\,\beta_1^t \\
        \tilde m_t &= \frac{m_t}{1-\beta_1^t} d_1, \quad \tilde v_t = \frac{v_t}{1-\beta_2^t} d_2, \quad
        \tilde g_t = \frac{g_t}{1-\beta_1^t} d_1 \\
        \alpha_t &= \eta \ \text{(v2, default)} \quad\text{or}\quad \eta \ln\!\big(\sqrt{2(t+1)}\big)
            \ \text{(v1, } \texttt{dynamic\_step\_size=True}\text{)} \\
        \theta_t &= \theta_{t-1} - \alpha_t\,\frac{\tilde m_t + \tilde g_t}{\sqrt{\tilde v_t} + \epsilon}
        \end{aligned}

    The first update is about ``16·lr·sign(g)`` for the default betas (Adam's is ``lr·sign(g)``): with d₁ ≈ 2,
    m̃ ≈ 2g and g̃ = g/(1−β₁)·d₁ ≈ 20g over √ṽ ≈ √1.9·|g|. That is the algorithm, not a bug; EXAdam wants a
    smaller ``lr`` than Adam early on (the factor decays like 1/(1−β₁ᵗ) for the gradient term).

    Paper: Ahmed M. Adly, "EXAdam: The Power of Adaptive Cross-Moments", arXiv:2412.20302 (v1: growing
    step size; v2: constant step size). Reference: ``AhmedMostafa16/EXAdam``, ``exadam.py`` — commit 5ad536f
    (v2, constant η) and commit 9ff8463 (v1, ``lr·ln(√(t+1)·√2)``). adamlab follows the reference's order of
    operations: on the CPU the loop and multi-tensor paths reproduce it bit for bit (tested in float64).

    Differences from the reference code:

    * v1 and v2 are one class here: ``dynamic_step_size=False`` (default) is the current code (v2),
      ``True`` is the February 2025 code (v1). A revision of the reference file that uses ``np`` without
      importing numpy fails to construct; adamlab implements the documented maths of each version.
    * Where v or m² reach 1e38 (float32 overflow: a gradient of 1e25, or 1e20 with β2 = 0) the ratios
      v/(v+ε) and m²/(m²+ε) are 1, their limit; the reference computes inf/inf = NaN there, where Adam's step
      is finite. Below 1e38 the rounding is the reference's. (A gradient so large that g/(1−β1) itself overflows,
      within a factor 10 of the dtype's largest number, still makes the step inf/inf.)
    * ``maximize`` is added (the reference has none). The state names are ``exp_avg`` / ``exp_avg_sq``
      (the reference's ``m`` / ``v``), as in :class:`~adamlab.Adam`, so ``state_dtype`` policies carry over.
    * The reference's docstring calls ``weight_decay`` an "L2 penalty", but its code (and adamlab) decays the
      parameter directly, ``θ ← θ − η·λ·θ``, before the moment updates and with the base ``lr`` even in v1.
      pytorch_optimizer's port does the same by default (``weight_decouple=True``).

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), the decay rates of the first and second moments, each in [0, 1).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, decoupled and applied first: θ ← θ − ηλθ, with the base ``lr`` in both versions.
        dynamic_step_size: the paper's first version: step size ``lr·ln(√(2(t+1)))`` instead of ``lr``.
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = EXAdam(model.parameters(), lr=1e-4, weight_decay=1e-4)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """

    _weight_decay, _decay_rounding = "decoupled", "axpy"  # θ + (−ηλ)·θ, the reference's rounding
    Scalars = EXAdamScalars

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, dynamic_step_size: bool = False, maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, dynamic_step_size=dynamic_step_size, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group, 2)
        check_bool("dynamic_step_size", group["dynamic_step_size"])

    def _init_state(self, p, group):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _scalars(self, group, step):
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        beta1_t, beta2_t = beta1 ** step, beta2 ** step
        step_size = lr * math.log(math.sqrt(step + 1) * _SQRT_2) if group["dynamic_step_size"] else lr
        return EXAdamScalars(beta1=beta1, one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                             beta1_t=beta1_t, beta2_t=beta2_t, bc1=1 - beta1_t, bc2=1 - beta2_t, eps=group["eps"],
                             neg_step_size=-step_size)

    @staticmethod
    def _rule(o, p, g, st, s, c):
        m = o.axpy_(o.mul_(st["exp_avg"], s["beta1"]), g, s["one_minus_beta1"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), g, g, s["one_minus_beta2"])
        # v/(v+ε) and m²/(m²+ε) are 1 for v, m² of 1e38 or more (inf/inf would be NaN where Adam's step is finite;
        # below that, the reference's rounding)
        v_c = o.clamp_max(v, _BIG)
        d1 = o.add_(o.mul_(o.div(v_c, o.add(v_c, s["eps"])), s["beta2_t"]), 1.0)
        m_sq = o.clamp_max_(o.mul(m, m), _BIG)
        d2 = o.add_(o.mul_(o.div(m_sq, o.add(m_sq, s["eps"])), s["beta1_t"]), 1.0)
        m_tilde = o.mul_(o.div(m, s["bc1"]), d1)
        v_tilde = o.mul_(o.div(v, s["bc2"]), d2)
        g_tilde = o.mul_(o.div(g, s["bc1"]), d1)
        num = o.mul_(o.add_(m_tilde, g_tilde), s["neg_step_size"])
        o.add_(p, o.div_(num, o.add_(o.sqrt(v_tilde), s["eps"])))
