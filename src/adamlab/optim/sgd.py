"""SGD with momentum, dampening and Nesterov; Adagrad; RMSprop. Each reproduces ``torch.optim``'s class of
the same name (same arguments, same formulas), and RMSprop gains ``initial_accumulator_value``."""

from __future__ import annotations

from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_bool, check_common, check_range

__all__ = ["SGD", "Adagrad", "RMSprop"]

# (maximize's sign flip and the L2 decay g + λθ are applied by the engine before each rule below)


class SGDScalars(TypedDict):
    neg_lr: float
    mu: float  #: the momentum μ
    buf_decay: float  #: μ, or 0 at the first step (the buffer starts as a copy of the gradient)
    buf_coef: float  #: 1 − dampening, or 1 at the first step


class SGDConstants(TypedDict):
    momentum: bool
    nesterov: bool


class AdagradScalars(TypedDict):
    neg_clr: float  #: −η / (1 + (t − 1)·lr_decay)
    eps: float


class RMSpropScalars(TypedDict):
    alpha: float
    one_minus_alpha: float
    eps: float
    neg_lr: float
    mu: float


class RMSpropConstants(TypedDict):
    momentum: bool
    centered: bool


class MomentumBufferState:
    """The state of an optimizer whose one buffer is ``momentum_buffer``, kept while ``momentum`` is not 0 (and
    made when momentum is switched on mid-run, as ``torch.optim.SGD`` does). Mixed in before the engine's base."""

    def _init_state(self, p, group):
        if group["momentum"] != 0:
            return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return {}

    def _lazy_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()


class SGD(MomentumBufferState, AdamlabOptimizer):
    r"""Stochastic gradient descent with optional (Nesterov) momentum, exactly as ``torch.optim.SGD``.

    .. math::
        g_t \leftarrow g_t + \lambda\theta_{t-1};\quad
        b_t = \mu b_{t-1} + (1-\tau) g_t \;(b_1 = g_1);\quad
        \theta_t = \theta_{t-1} - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        momentum: momentum factor μ (0: plain SGD, no momentum buffer).
        dampening: τ, the dampening of the gradient's contribution to the momentum buffer.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
        weight_decay: λ, L2 penalty added to the gradient (``g + λθ``).
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    """

    Scalars, Constants = SGDScalars, SGDConstants

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, maximize: bool = False, **impl):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group)
        check_range("momentum", group["momentum"], 0.0)
        check_range("dampening", group["dampening"], 0.0, 1.0)
        check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")

    def _constants(self, group):
        return SGDConstants(momentum=group["momentum"] != 0, nesterov=group["nesterov"])

    def _scalars(self, group, step):
        mu, first = group["momentum"], step == 1
        return SGDScalars(neg_lr=-group["lr"], mu=mu,
                    # the buffer starts as a copy of the first gradient: b = 0*b + 1*g exactly
                          buf_decay=0.0 if first else mu, buf_coef=1.0 if first else 1.0 - group["dampening"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        if c["momentum"]:
            buf = o.axpy_(o.mul_(st["momentum_buffer"], s["buf_decay"]), g, s["buf_coef"])
            g = o.axpy(g, buf, s["mu"]) if c["nesterov"] else buf
        o.axpy_(p, g, s["neg_lr"])


class Adagrad(AdamlabOptimizer):
    r"""Adagrad, exactly as ``torch.optim.Adagrad``.

    .. math::
        \eta_t = \frac{\eta}{1 + (t-1)\,\mathrm{lr\_decay}};\quad
        G_t = G_{t-1} + g_t^2 \;(G_0 = \mathrm{initial\_accumulator\_value});\quad
        \theta_t = \theta_{t-1} - \eta_t\, g_t / (\sqrt{G_t} + \epsilon)

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        lr_decay: the learning rate at step t is ``lr / (1 + (t − 1)·lr_decay)``.
        weight_decay: λ, L2 penalty added to the gradient.
        initial_accumulator_value: G₀, the starting value of the sum of squared gradients.
        eps: ε, added to ``√G`` for numerical stability.
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> opt = Adagrad(torch.nn.Linear(4, 1).parameters(), lr=0.1)
    """

    Scalars = AdagradScalars

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, maximize: bool = False, **impl):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group)
        check_range("lr_decay", group["lr_decay"], 0.0)
        check_range("initial_accumulator_value", group["initial_accumulator_value"], 0.0)

    def _init_state(self, p, group):
        return {"sum": torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)}

    def _constants(self, group):
        return {}

    def _scalars(self, group, step):
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        return AdagradScalars(neg_clr=-clr, eps=group["eps"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        o.addcmul_(st["sum"], g, g, 1.0)
        std = o.add_(o.sqrt(st["sum"]), s["eps"])
        o.addcdiv_(p, g, std, s["neg_clr"])


class RMSprop(AdamlabOptimizer):
    r"""RMSprop, exactly as ``torch.optim.RMSprop``, plus ``initial_accumulator_value`` (v₀).

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2 \;(v_0 = \mathrm{initial\_accumulator\_value});\quad
        d_t = \sqrt{v_t - \bar g_t^2 \text{ (centered) or } v_t} + \epsilon;\quad
        b_t = \mu b_{t-1} + g_t / d_t;\quad \theta_t = \theta_{t-1} - \eta\, b_t

    ``initial_accumulator_value=1`` is the TensorFlow / Choi et al. (2019) convention; with ``alpha=1, eps=0``
    and ``momentum=γ`` it makes RMSprop exactly momentum SGD (an inclusion of the lattice).

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        alpha: α, the decay rate of the running average of squared gradients.
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, L2 penalty added to the gradient.
        momentum: μ, momentum applied to the normalised gradient (0: none).
        centered: subtract the squared running mean of the gradient (an estimate of its variance).
        initial_accumulator_value: v₀, the starting value of the squared-gradient average (1 is TensorFlow's convention).
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> opt = RMSprop(torch.nn.Linear(4, 1).parameters(), lr=1e-3, centered=True)
    """

    Scalars, Constants = RMSpropScalars, RMSpropConstants

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, initial_accumulator_value: float = 0.0,
                 maximize: bool = False, **impl):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group)
        check_range("alpha", group["alpha"], 0.0, 1.0)
        check_range("momentum", group["momentum"], 0.0)
        check_bool("centered", group["centered"])
        check_range("initial_accumulator_value", group["initial_accumulator_value"], 0.0)

    def _init_state(self, p, group):
        st = {"square_avg": torch.full_like(p, group["initial_accumulator_value"],
                                            memory_format=torch.preserve_format)}
        if group["momentum"] > 0:
            st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            st["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    def _constants(self, group):
        return RMSpropConstants(momentum=group["momentum"] > 0, centered=group["centered"])

    def _scalars(self, group, step):
        a = group["alpha"]
        return RMSpropScalars(alpha=a, one_minus_alpha=1 - a, eps=group["eps"], neg_lr=-group["lr"],
                              mu=group["momentum"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        v = o.addcmul_(o.mul_(st["square_avg"], s["alpha"]), g, g, s["one_minus_alpha"])
        if c["centered"]:
            ga = o.lerp_(st["grad_avg"], g, s["one_minus_alpha"])
            avg = o.sqrt_(o.addcmul(v, ga, ga, -1.0))
        else:
            avg = o.sqrt(v)
        o.add_(avg, s["eps"])
        if c["momentum"]:
            buf = o.addcdiv_(o.mul_(st["momentum_buffer"], s["mu"]), g, avg, 1.0)
            o.axpy_(p, buf, s["neg_lr"])
        else:
            o.addcdiv_(p, g, avg, s["neg_lr"])
