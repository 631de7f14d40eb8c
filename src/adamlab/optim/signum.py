"""Signum (Bernstein et al., 2018): the sign of a momentum buffer; ``momentum=0`` is signSGD."""

from __future__ import annotations

from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_common, check_range
from .sgd import MomentumBufferState

__all__ = ["Signum"]


class SignumScalars(TypedDict):
    beta: float
    one_minus_beta: float
    neg_lr: float


class SignumConstants(TypedDict):
    momentum: bool


class Signum(MomentumBufferState, AdamlabOptimizer):
    r"""Signum: every coordinate moves by the learning rate, in the direction of the sign of a gradient EMA.

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t \;(m_0 = 0);\quad
        \theta_t = \theta_{t-1}(1 - \eta\lambda) - \eta\,\operatorname{sign}(m_t)

    ``momentum`` is β (0.9 by default, the paper's); ``momentum=0`` is signSGD (θ ← θ − η·sign(g)), which keeps
    no state. Weight decay is decoupled (θ scaled by 1 − ηλ before the sign step). A coordinate whose m is
    exactly 0 does not move (sign(0) = 0).

    Paper: Jeremy Bernstein, Yu-Xiang Wang, Kamyar Azizzadenesheli, Anima Anandkumar, "signSGD: Compressed
    Optimisation for Non-Convex Problems", ICML 2018, arXiv:1802.04434.

    Example::

        >>> opt = Signum(torch.nn.Linear(4, 1).parameters(), lr=1e-3, momentum=0.9)
    """

    _weight_decay = "decoupled"
    Scalars, Constants = SignumScalars, SignumConstants

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                 maximize: bool = False, **impl):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group)
        check_range("momentum", group["momentum"], 0.0, 1.0, hi_open=True)

    def _constants(self, group):
        return SignumConstants(momentum=group["momentum"] != 0)

    def _scalars(self, group, step):
        beta, lr = group["momentum"], group["lr"]
        return SignumScalars(beta=beta, one_minus_beta=1 - beta, neg_lr=-lr)

    @staticmethod
    def _rule(o, p, g, st, s, c):
        if c["momentum"]:
            g = o.axpy_(o.mul_(st["momentum_buffer"], s["beta"]), g, s["one_minus_beta"])
        o.axpy_(p, o.per(torch.sign, g), s["neg_lr"])
