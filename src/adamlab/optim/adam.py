"""Adam (with AMSGrad, L2 or decoupled decay, and ``initial_accumulator_value``) and AdamW, exactly as
``torch.optim``'s classes of the same name."""

from __future__ import annotations

import math
from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_bool, check_common, check_range

__all__ = ["Adam", "AdamW", "adam_denominator"]


class AdamScalars(TypedDict):
    """Adam's per-step scalars (also AdamCM's, AdamCG's and CoupledAdam's, which add their own)."""

    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    bc2_sqrt: float  #: sqrt(1 − β₂ᵗ) (1 when v starts at v₀ > 0)
    neg_step_size: float  #: −η / (1 − β₁ᵗ)
    eps: float


class AdamConstants(TypedDict):
    amsgrad: bool


def adam_denominator(o, v, s):
    """``sqrt(v) / sqrt(1 - beta2^t) + eps``, a new tensor (torch's rounding order)."""
    return o.add_(o.div(o.sqrt(v), s["bc2_sqrt"]), s["eps"])


def adam_bias_scalars(group: dict, step: int, v0: float = 0.0) -> AdamScalars:
    """Bias corrections of Adam's moments: m always, v only when it starts from zero."""
    beta1, beta2 = group["betas"][0], group["betas"][1]
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step if v0 == 0 else 1.0
    return AdamScalars(one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                bc2_sqrt=math.sqrt(bc2), neg_step_size=-group["lr"] / bc1, eps=group["eps"])


class Adam(AdamlabOptimizer):
    r"""Adam (Kingma & Ba, 2015), exactly as ``torch.optim.Adam``.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t;\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2;\quad
        \theta_t = \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    ``amsgrad`` uses the running maximum of v; ``weight_decay`` is L2 (added to g) unless
    ``decoupled_weight_decay`` (θ ← θ(1 − ηλ), i.e. AdamW). ``initial_accumulator_value`` v₀ starts v there;
    v is bias-corrected only when v₀ = 0, so ``Adam(betas=(0, 1), eps=0, initial_accumulator_value=1)`` is SGD.

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), the decay rates of the first and second moments; β₁ in [0, 1), β₂ in [0, 1] (β₂ = 1 needs
            ``initial_accumulator_value > 0``).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ: L2 penalty added to the gradient, or decoupled decay with ``decoupled_weight_decay``.
        decoupled_weight_decay: decay the parameter directly, θ ← θ(1 − ηλ) (AdamW), instead of L2.
        amsgrad: use the running maximum of v in the denominator (AMSGrad, Reddi et al. 2018).
        initial_accumulator_value: v₀, the starting value of v; v is bias-corrected only when v₀ = 0.
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> opt = Adam(torch.nn.Linear(4, 1).parameters(), lr=1e-3, amsgrad=True)
    """

    #: Adam and AdamW keep their own decoupling through load_state_dict (an Adam state dict loads into AdamW as
    #: AdamW, as in torch.optim, and the other way round)
    _kept_on_load = ("decoupled_weight_decay",)
    Scalars, Constants = AdamScalars, AdamConstants

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, amsgrad: bool = False,
                 initial_accumulator_value: float = 0.0, maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group)
        from ._base import check_betas

        check_betas(group["betas"], 2, closed_last=True)
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])
        check_bool("amsgrad", group["amsgrad"])
        check_range("initial_accumulator_value", group["initial_accumulator_value"], 0.0)
        if group["betas"][1] == 1 and group["initial_accumulator_value"] == 0:
            raise ValueError("Invalid betas[1]: 1.0 requires initial_accumulator_value > 0 "
                             "(with v starting at 0 the bias correction 1 - beta2^t would be 0)")

    def _init_state(self, p, group):
        st = {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
              "exp_avg_sq": torch.full_like(p, group["initial_accumulator_value"],
                                            memory_format=torch.preserve_format)}
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = st["exp_avg_sq"].clone()
        return st

    def _decay(self, group):
        return "decoupled" if group["decoupled_weight_decay"] else "l2"

    def _constants(self, group) -> AdamConstants:
        return AdamConstants(amsgrad=group["amsgrad"])

    def _scalars(self, group, step) -> AdamScalars:
        return adam_bias_scalars(group, step, group["initial_accumulator_value"])

    @staticmethod
    def _rule(o, p, g, st, s: AdamScalars, c: AdamConstants) -> None:
        m = o.lerp_(st["exp_avg"], g, s["one_minus_beta1"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), g, g, s["one_minus_beta2"])
        if c["amsgrad"]:
            v = o.maximum_(st["max_exp_avg_sq"], v)
        o.addcdiv_(p, m, adam_denominator(o, v, s), s["neg_step_size"])


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): :class:`Adam` with decoupled weight decay, as ``torch.optim.AdamW``.

    .. math:: \theta_t = \theta_{t-1}(1 - \eta\lambda) - \frac{\eta}{1-\beta_1^t}\,
              \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), the decay rates of the first and second moments, each in [0, 1).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, decoupled: θ ← θ(1 − ηλ) before the Adam step.
        amsgrad: use the running maximum of v in the denominator.
        initial_accumulator_value: v₀, the starting value of v; v is bias-corrected only when v₀ = 0.
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> opt = AdamW(torch.nn.Linear(4, 1).parameters(), lr=1e-3, weight_decay=0.1)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, initial_accumulator_value: float = 0.0,
                 maximize: bool = False, **impl):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=True, amsgrad=amsgrad,
                         initial_accumulator_value=initial_accumulator_value, maximize=maximize, **impl)
