"""Adam with critical momenta (AdamCM) and with critical gradients (AdamCG): Adam whose update direction adds the
mean of a small buffer of past momenta (or gradients) kept by gradient-norm priority.

The buffer of each parameter tensor lives in three plain state tensors, so ``state_dict()`` round-trips it exactly:

* ``buffer`` ``[C, *p.shape]``: the stored tensors (empty slots hold zeros);
* ``priorities`` ``[C]``: their priorities (float32 at least), decayed by ``priority_decay`` after every step;
* ``count``: how many slots are filled (int64, 0-d). Slots fill in order 0, 1, ...; once full, a new entry replaces
  the first slot of lowest priority when its priority is strictly higher, else it is discarded.

How each path stores, offers and averages the buffer (the compiled path's offers decided before its graphs, the
opaque op on an accelerator) is the engine's: :mod:`adamlab.optim._buffer`. This module holds the maths.
"""

from __future__ import annotations

import numbers
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from . import _dist
from ._base import AdamlabOptimizer, check_bool, check_common, check_range
from ._buffer import SlotOffers, buffer_state, offer_step, placed, slot_mean, slot_sum
from .adam import Adam, AdamScalars, adam_bias_scalars, adam_denominator

__all__ = ["AdamCM", "AdamCG"]


class _CriticalScalars(AdamScalars):
    beta1: float
    priority_decay: float


class CriticalScalars(_CriticalScalars, total=False):
    """AdamCM's and AdamCG's per-step scalars: Adam's, the buffer's, and (when ``synced``) the group's priority."""

    m_coef: float  #: AdamCM: 1 − β₁, or 0 at the first step
    first: float  #: AdamCM: 1.0 at the first step
    priority: Tensor  #: the group's gradient norm, with ``synced`` (from ``_prepare``)


class CriticalConstants(TypedDict):
    buffer: bool  #: kappa > 0 (kappa = 0: Adam)
    synced: bool  #: one priority per group (the group's gradient norm) instead of one per tensor
    amsgrad: bool  #: always False (Adam's rule, for kappa = 0)


class AdamCGConstants(CriticalConstants):
    aggregation: str  #: how the gradient and the buffer combine: "sum", "mean" or "mid"


_AGGREGATIONS = ("sum", "mean", "mid")


def synced_priority(grads: list[Tensor]) -> Tensor:
    """One priority for a whole param group: Σ over its tensors of ‖g‖₂ (the reference's ``synced=True``); the norm
    of a sharded gradient is over all its shards."""
    norms = _dist.global_norms(list(grads))
    device = norms[0].device
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    return torch.stack(norms).sum()


def _aggregate_sum(g: Tensor, buf: Tensor, count: Tensor) -> Tensor:
    return torch.add(g, slot_mean(buf, count))


def _aggregate_mean(g: Tensor, buf: Tensor, count: Tensor) -> Tensor:
    return torch.add(g, slot_sum(buf)).div(count + 1)


def _aggregate_mid(g: Tensor, buf: Tensor, count: Tensor) -> Tensor:
    # ½(g + mean(buffer)); on the first call (empty buffer) the reference uses g itself
    return torch.add(g, slot_mean(buf, count)).mul(torch.where(count > 0, 0.5, 1.0).to(g.dtype))


_AGGREGATE = {"sum": _aggregate_sum, "mean": _aggregate_mean, "mid": _aggregate_mid}


# ---------------------------------------------------------------------- shared plumbing
class _CriticalBase(AdamlabOptimizer):
    """Arguments, state and scalars shared by :class:`AdamCM` and :class:`AdamCG`."""

    Scalars, Constants = CriticalScalars, CriticalConstants
    _state_layout = {"buffer": 1, "priorities": None, "count": None}

    def _validate(self, group):
        check_common(group, n_betas=2)
        size = group["buffer_size"]
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Integral):
            raise TypeError(f"buffer_size must be an int, got {type(size).__name__}")
        group["buffer_size"] = size = int(size)
        if size < 1:
            raise ValueError(f"Invalid buffer_size: {size!r} (expected an int >= 1)")
        check_range("priority_decay", group["priority_decay"], 0.0, 1.0)
        check_range("kappa", group["kappa"], 0.0)
        check_bool("synced", group["synced"])

    def _settle_state(self, st):
        if "buffer" in st:  # a state_dtype cast, load_state_dict or the user made a new tensor
            st["buffer"] = placed(st["buffer"])

    def _extra_reads(self, group, p, state):
        # the gradient norm that ranks the buffer's slots reads the gradient once more
        return p.numel() * p.grad.element_size() if group.get("kappa", 0) > 0 and p.grad is not None else 0

    def _compiled_hook(self, runner):
        return SlotOffers(runner, runner.fst["buffer"][0].shape[0]) if SlotOffers.fits(runner) else None

    def _init_state(self, p, group):
        st = {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
              "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if group["kappa"] > 0:
            st.update(buffer_state(p, group["buffer_size"]))
        return st

    def _constants(self, group):
        return CriticalConstants(buffer=group["kappa"] > 0, synced=group["synced"], amsgrad=False)

    def _scalars(self, group, step):
        s = adam_bias_scalars(group, step)
        return CriticalScalars(**s, beta1=group["betas"][0], priority_decay=group["priority_decay"])

    def _prepare(self, group, params, grads):
        st = self.state[params[0]]  # the buffer's shape is fixed when a tensor's state is created: say so
        has = "buffer" in st
        if (group["kappa"] > 0) != has or (has and st["buffer"].shape[0] != group["buffer_size"]):
            was = f"buffer_size={st['buffer'].shape[0]}" if has else "kappa=0 (no buffer)"
            raise ValueError(f"{type(self).__name__}: kappa={group['kappa']!r}, buffer_size={group['buffer_size']!r} "
                             f"does not match the state, created with {was}; kappa switching between 0 and > 0 "
                             "and buffer_size are fixed once training starts (make a new optimizer to change them)")
        if group["kappa"] > 0 and group["synced"]:
            return {"priority": synced_priority(grads)}
        return {}


# ---------------------------------------------------------------------- AdamCM
class AdamCM(_CriticalBase):
    r"""Adam with critical momenta (Malviya et al., 2023): Adam driven by the momentum plus the mean of a buffer of
    past momenta kept by gradient-norm priority.

    .. math::
        \begin{aligned}
        &\theta \leftarrow \theta(1-\eta\lambda) \\
        &\text{first call: } B.\mathrm{offer}(\pi_t, g_t);\ m \text{ stays } 0;\ \tilde m_t = 0 \\
        &\text{later: } m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t;\quad
            \tilde m_t = m_t + \mathrm{mean}(B);\quad B.\mathrm{offer}(\pi_t, m_t) \\
        &v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde m_t^2;\quad
          \theta \leftarrow \theta
            - \frac{\eta}{1-\beta_1^t}\,\frac{\tilde m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t}+\epsilon};
          \quad \pi_B \leftarrow \gamma\,\pi_B
        \end{aligned}

    ``mean(B)`` is taken before this step's offer. The priority π_t is Σ over the group's tensors of ‖g‖₂ when
    ``synced`` (one value per group), else ‖g‖₂ of the tensor. ``offer`` fills the next of ``buffer_size`` (C) slots;
    once full it replaces the first slot of lowest priority when π_t is strictly higher, else discards. All stored
    priorities decay by ``priority_decay`` (γ) after every step. The first call leaves θ unchanged apart from weight
    decay; ``kappa=0`` switches the buffer off and gives :class:`Adam` exactly (with decoupled decay when λ ≠ 0).
    State per tensor: ``exp_avg``, ``exp_avg_sq``, ``buffer`` [C, *shape], ``priorities`` [C], ``count``
    (``buffer_size`` and whether ``kappa > 0`` are read when a tensor's state is created).

    Paper: "Promoting Exploration in Memory-Augmented Adam using Critical Momenta", Malviya et al., 2023
    (arXiv 2307.09638). Reference code: chandar-lab/CMOptimizer, ``cmoptimizer/optim.py`` ``Adam_CM``
    (commit 37f2b39) with ``cmoptimizer/prioritydict.py`` ``TensorList`` (commit 4aad38e); names: ``topC`` →
    ``buffer_size``, ``decay`` → ``priority_decay``.

    Differences from the reference code:

    * ``kappa=0`` gives plain Adam (the reference documents this but crashes with a ``KeyError``); any ``kappa > 0``
      switches the buffer on and, as in the reference, its value scales nothing.
    * The buffer is in plain state tensors, so ``load_state_dict`` restores it and the step count exactly (the
      reference's dict-based buffer is emptied by ``load_state_dict`` and its state re-initialised).
    * The buffer mean is recomputed from the stored slots each step instead of a running sum updated by add and
      subtract (same value to round-off, no drift, one parameter-sized tensor less).
    * With ``eps=0`` the first call leaves θ unchanged (the reference divides 0 by 0 there).
    * ``maximize`` is added; ``amsgrad``, ``critical_test`` (its default 0.0 always takes the priority test),
      ``buffer_dtype`` and the statistics counters are not ported; ``buffer_size`` must be >= 1.

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), the decay rates of the first and second moments, each in [0, 1).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, decoupled: θ ← θ(1 − ηλ).
        buffer_size: C ≥ 1, how many past momenta each tensor's buffer keeps (the reference's ``topC``).
        priority_decay: γ in [0, 1], the factor applied to every stored priority after each step (the reference's
            ``decay``).
        kappa: 0 switches the buffer off (plain Adam); any value > 0 switches it on (it scales nothing).
        synced: one priority per param group (the sum of its tensors' gradient norms) instead of one per tensor.
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AdamCM(model.parameters(), lr=1e-3, buffer_size=5, priority_decay=0.7)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
    """

    _weight_decay = "decoupled"  # θ(1 − ηλ)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, buffer_size: int = 5, priority_decay: float = 0.7, kappa: float = 1.0,
                 synced: bool = True, maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, buffer_size=buffer_size, priority_decay=priority_decay,
                        kappa=kappa, synced=synced, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _scalars(self, group, step):
        s = super()._scalars(group, step)
        first = step == 1 and group["kappa"] > 0
        # m stays 0 on the first call (m_coef = 0); the stored value m + first·g is then g itself
        s.update(m_coef=0.0 if first else 1 - group["betas"][0], first=1.0 if first else 0.0)
        if first:
            s["eps"] = 1.0  # the first aggregate is exactly 0, so the update is 0 for any ε > 0; 1 keeps 0/0 away
        return s

    @staticmethod
    def _rule(o, p, g, st, s, c):
        if not c["buffer"]:
            return Adam._rule(o, p, g, st, s, c)
        buf, prio, count = st["buffer"], st["priorities"], st["count"]
        m = o.axpy_(o.mul_(st["exp_avg"], s["beta1"]), g, s["m_coef"])
        m_cm = o.add(m, o.per(slot_mean, buf, count))  # the mean before this step's offer
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), m_cm, m_cm, s["one_minus_beta2"])
        o.addcdiv_(p, m_cm, adam_denominator(o, v, s), s["neg_step_size"])
        # the offer comes last: nothing after it reads the buffer, so a compiled step updates one slot in place
        # instead of cloning the whole buffer to keep the old one for a later reader
        priority = s["priority"] if c["synced"] else o.norm(g)
        o.per(offer_step, buf, prio, count, m, g, s["first"], priority, p)
        o.mul_(prio, s["priority_decay"])


# ---------------------------------------------------------------------- AdamCG
class AdamCG(_CriticalBase):
    r"""Adam with critical gradients (McRae et al., 2022; the ``Adam_C`` of the critical-momenta code): Adam on the
    gradient plus the mean of a buffer of past gradients kept by gradient-norm priority.

    .. math::
        \begin{aligned}
        &\text{first call: } \hat g_t = g_t \\
        &\text{later: } \hat g_t = g_t + \mathrm{mean}(B)\ (\texttt{sum});\
            \tfrac{g_t + \Sigma B}{|B|+1}\ (\texttt{mean});\ \tfrac12\big(g_t + \mathrm{mean}(B)\big)\ (\texttt{mid}) \\
        &B.\mathrm{offer}(\pi_t, g_t);\quad \hat g_t \leftarrow \hat g_t + \lambda\theta \\
        &m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat g_t;\quad v_t = \beta_2 v_{t-1} + (1-\beta_2)\hat g_t^2;\quad
          \theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t}+\epsilon};
          \quad \pi_B \leftarrow \gamma\,\pi_B
        \end{aligned}

    The buffer (mean taken before this step's offer), the priority π_t and ``offer`` are as in :class:`AdamCM`, but
    the buffer stores raw gradients. Weight decay is L2, added after aggregation (the buffer and the priority use the
    raw g). ``kappa=0`` switches the buffer off and gives :class:`Adam` exactly (with L2 decay).

    Papers: "Memory Augmented Optimizers for Deep Learning", McRae et al., ICLR 2022 (arXiv 2106.10708), and
    Malviya et al., 2023 (arXiv 2307.09638). Reference code: chandar-lab/CMOptimizer, ``cmoptimizer/optim.py``
    ``Adam_C`` (commit 37f2b39); ``aggregation="mean"``/``"mid"`` follow the ICLR'22 CGOptimizer ``aggregate``.

    Differences from the reference code: as :class:`AdamCM` (``kappa=0`` works, buffer in state tensors, mean
    recomputed from the slots, ``maximize`` added, ``amsgrad``/``critical_test``/``buffer_dtype`` not ported), plus
    ``aggregation``: the CMOptimizer ``Adam_C`` only sums (``"sum"``, the default here); ``"mean"`` (the CGOptimizer
    default) and ``"mid"`` take CGOptimizer's formulas with its ``kappa`` factor fixed at 1.

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), the decay rates of the first and second moments, each in [0, 1).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, L2, added to the aggregated gradient.
        buffer_size: C ≥ 1, how many past gradients each tensor's buffer keeps (the reference's ``topC``).
        priority_decay: γ in [0, 1], the factor applied to every stored priority after each step.
        kappa: 0 switches the buffer off (plain Adam); any value > 0 switches it on (it scales nothing).
        synced: one priority per param group (the sum of its tensors' gradient norms) instead of one per tensor.
        aggregation: how the gradient and the buffer combine: ``"sum"``, ``"mean"`` or ``"mid"`` (see above).
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = AdamCG(model.parameters(), lr=1e-3, buffer_size=10, aggregation="mean")
        >>> model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
    """

    Constants = AdamCGConstants

    def _decay(self, group):
        # L2 added to the aggregated gradient, inside the rule; with kappa = 0 (Adam), to the gradient
        return "rule" if group["kappa"] > 0 else "l2"

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, buffer_size: int = 10, priority_decay: float = 0.7, kappa: float = 1.0,
                 synced: bool = True, aggregation: str = "sum", maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, buffer_size=buffer_size, priority_decay=priority_decay,
                        kappa=kappa, synced=synced, aggregation=aggregation, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        super()._validate(group)
        if group["aggregation"] not in _AGGREGATIONS:
            raise ValueError(f"Invalid aggregation: {group['aggregation']!r} (expected one of {_AGGREGATIONS})")

    def _constants(self, group):
        return AdamCGConstants(**super()._constants(group), aggregation=group["aggregation"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        if not c["buffer"]:
            return Adam._rule(o, p, g, st, s, c)
        buf, prio, count = st["buffer"], st["priorities"], st["count"]
        g_aggr = o.per(_AGGREGATE[c["aggregation"]], g, buf, count)  # the buffer before this step's offer
        if c["decay"]:
            g_aggr = o.axpy(g_aggr, p, s["weight_decay"])
        m = o.axpy_(o.mul_(st["exp_avg"], s["beta1"]), g_aggr, s["one_minus_beta1"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), g_aggr, g_aggr, s["one_minus_beta2"])
        o.addcdiv_(p, m, adam_denominator(o, v, s), s["neg_step_size"])
        priority = s["priority"] if c["synced"] else o.norm(g)
        o.per(offer_step, buf, prio, count, g, g, None, priority, p)  # last, as in AdamCM; the raw gradient goes in
        o.mul_(prio, s["priority_decay"])
