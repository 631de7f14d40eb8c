"""AdamX (Zhu, Xiao & Min, arXiv:2511.13465; the code calls it AdamNX): Adam whose second moment freezes,
so that late training becomes momentum SGD with a fixed preconditioner."""

from __future__ import annotations

import math
from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_common

__all__ = ["AdamX", "AdamNX"]


class AdamXScalars(TypedDict):
    one_minus_beta1_t: float
    beta2_t: float
    one_minus_beta2_t: float
    eps: float
    neg_lr: float


def adamx_betas(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """The step-dependent coefficients (β1_t, β2_t) of AdamX, with the reference's Python float arithmetic.

    β1_t = (β1 − β1ᵗ)/(1 − β1ᵗ) makes m exactly Adam's bias-corrected m̂; β2_t = (1 − β2^((1−β2)(t−1))) /
    (1 − β2^((1−β2)t)) makes v an average in which newer gradients weigh less. Both are 0 at t = 1.
    """
    t = float(step)  # the reference reads the step from a float tensor with .item()
    beta1_t = (beta1 - beta1 ** t) / (1 - beta1 ** t)
    den = 1 - beta2 ** ((1 - beta2) * t)
    if den != 0:
        beta2_t = (1 - beta2 ** ((1 - beta2) * (t - 1))) / den
    else:  # β2 so close to 1 that β2^((1−β2)t) rounds to 1 (the reference divides 0 by 0): the same ratio as
        a = (1 - beta2) * math.log(beta2)  # expm1((t−1)a) / expm1(ta), → (t−1)/t as β2 → 1
        beta2_t = math.expm1((t - 1) * a) / math.expm1(t * a)
    return beta1_t, beta2_t


class AdamX(AdamlabOptimizer):
    r"""AdamX: Adam with step-dependent betas; v freezes and the update degrades to momentum SGD.

    .. math::
        \begin{aligned}
        \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
        \beta_{1,t} &= \frac{\beta_1 - \beta_1^t}{1 - \beta_1^t}, \qquad
        m_t = \beta_{1,t}\, m_{t-1} + (1 - \beta_{1,t})\, g_t \quad (= \text{Adam's } \hat m_t) \\
        \beta_{2,t} &= \frac{1 - \beta_2^{(1-\beta_2)(t-1)}}{1 - \beta_2^{(1-\beta_2)t}}, \qquad
        v_t = \beta_{2,t}\, v_{t-1} + (1 - \beta_{2,t})\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \eta\, \frac{m_t}{\sqrt{v_t} + \epsilon}
        \end{aligned}

    With γ = β₂^(1−β₂), v_t = (1−γ)/(1−γᵗ)·Σ_k γ^(k−1) g_k²: newer gradients weigh *less*, β₂,t → 1, and v
    stops moving after about 1/((1−β₂)|ln β₂|) steps (≈ 10⁴ for β₂ = 0.99). From then on the update is
    momentum SGD (bias-corrected EMA of g) with a frozen per-coordinate preconditioner 1/(√v + ε).

    Paper: M. Zhu, Q. Xiao, W. Min, "AdamNX: An Adam improvement algorithm based on a novel exponential decay
    mechanism for the second-order moment estimate", arXiv:2511.13465 (the repository is headed "AdamX").
    Reference: ``mengzhu0308/AdamNX``, ``adamnx/adamnx.py``, commit b68c319 (class ``AdamNX``). adamlab follows
    its order of operations (weight decay, ``lerp_`` of m, v, ``addcdiv_``), so on the CPU the loop and
    multi-tensor paths reproduce it bit for bit (tested in float64). ``AdamNX`` is an alias of this class.

    Differences from the reference code:

    * ``maximize`` is added. The reference takes and silently ignores any ``**kwargs``; adamlab raises
      :class:`TypeError` on unknown keyword arguments.
    * The reference's betas may be tensors; adamlab takes numbers (the betas enter only per-step scalars).
    * β2 so close to 1 that β2^((1−β2)t) rounds to 1 (1 − 1e-9, say): the reference divides 0 by 0 at the first
      step; adamlab computes the same β2,t as expm1((t−1)a)/expm1(ta) with a = (1−β2)·ln β2.

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), from which the step-dependent β₁,t and β₂,t are made; each in [0, 1).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, decoupled: θ ← θ(1 − ηλ).
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AdamX(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-2)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """

    _weight_decay = "decoupled"
    Scalars = AdamXScalars

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 1e-2, maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group, 2)

    def _init_state(self, p, group):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _scalars(self, group, step):
        beta1_t, beta2_t = adamx_betas(group["betas"][0], group["betas"][1], step)
        lr = group["lr"]
        return AdamXScalars(one_minus_beta1_t=1 - beta1_t, beta2_t=beta2_t, one_minus_beta2_t=1 - beta2_t,
                            eps=group["eps"], neg_lr=-lr)

    @staticmethod
    def _rule(o, p, g, st, s, c):
        m = o.lerp_(st["exp_avg"], g, s["one_minus_beta1_t"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2_t"]), g, g, s["one_minus_beta2_t"])
        o.addcdiv_(p, m, o.add_(o.sqrt(v), s["eps"]), s["neg_lr"])


#: The reference code's (and the paper's current) name.
AdamNX = AdamX
