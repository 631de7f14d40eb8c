"""Adam with critical momenta (AdamCM) and with critical gradients (AdamCG): Adam whose update direction adds the
mean of a small buffer of past momenta (or gradients) kept by gradient-norm priority.

The buffer of each parameter tensor lives in three plain state tensors, so ``state_dict()`` round-trips it exactly:

* ``buffer`` ``[C, *p.shape]``: the stored tensors (empty slots hold zeros);
* ``priorities`` ``[C]``: their priorities (float32 at least), decayed by ``priority_decay`` after every step;
* ``count``: how many slots are filled (int64, 0-d). Slots fill in order 0, 1, ...; once full, a new entry replaces
  the first slot of lowest priority when its priority is strictly higher, else it is discarded.

The loop and multi-tensor paths offer with branch-free tensor code (``argmin``, ``where``, ``index_copy_``), and
so does the compiled path's one-thread graph (small CPU tensors). For the tensors of a parallel graph, the compiled
path on a CPU takes the same decisions before the step's graphs, for all of them at once (:class:`_SlotOffers`),
and the graph writes the offered tensor straight into its slot; on an accelerator the graph offers through an
opaque op.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

from . import _dist, _ops
from ._base import AdamlabOptimizer, check_bool, check_common, check_range
from ._compiled import SMALL_NUMEL
from .adam import Adam, adam_bias_scalars, adam_denominator

__all__ = ["AdamCM", "AdamCG"]

_AGGREGATIONS = ("sum", "mean", "mid")
_LOW = (torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------- the buffer, one tensor at a time
#: where a buffer's first element sits in its storage. The compiled step on a CPU passes a buffer's rows to its
#: graph as separate inputs, in an order that changes from step to step (:class:`_SlotOffers`); dynamo specialises
#: an input's storage offset when it is 0 or 1, so a row at offset 0 would make the graph serve that order only
_BUF_OFFSET = 2

#: compiled CPU steps decide the offers before their graphs (False: every compiled step offers through the op)
ROWS = True


def _placed_zeros(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A zeroed contiguous tensor of ``like``'s dtype and device, at storage offset :data:`_BUF_OFFSET`."""
    store = torch.zeros(_BUF_OFFSET + math.prod(shape), dtype=like.dtype, device=like.device)
    return store[_BUF_OFFSET:].view(shape)


def _placed(buf: Tensor) -> Tensor:
    """``buf`` itself where it is contiguous at storage offset >= :data:`_BUF_OFFSET`, else a copy that is."""
    if buf.is_contiguous() and buf.storage_offset() >= _BUF_OFFSET:
        return buf
    return _placed_zeros(tuple(buf.shape), buf).copy_(buf)


def _buffer_state(p: Tensor, size: int) -> dict[str, Tensor]:
    prio_dtype = torch.float32 if p.dtype in _LOW else p.dtype
    return {"buffer": _placed_zeros((size, *p.shape), p),
            "priorities": torch.zeros(size, dtype=prio_dtype, device=p.device),
            "count": torch.zeros((), dtype=torch.int64, device=p.device)}


def _slot_sum(buf: Tensor | tuple) -> Tensor:
    """Σ of the stored tensors (the empty slots hold zeros, so the sum over all slots is the sum over the filled).

    Compiled, the sum is written out slot by slot: a chain of element-wise additions that the compiler fuses into
    the step's one pass over memory (a reduction over dim 0 becomes a loop of its own, with its result written to
    and read back from a temporary). The compiled graph then holds ``buffer_size`` as a constant. ``buf`` may be
    the compiled CPU step's tuple ``(code, rows...)`` (:class:`_SlotOffers`): its rows come in another order than
    the slots', which changes the sum by round-off only."""
    if isinstance(buf, tuple):
        rows = buf[1:]
    elif torch.compiler.is_compiling():
        rows = buf.unbind(0)
    else:
        return buf.sum(0)
    acc = rows[0].to(torch.promote_types(rows[0].dtype, torch.float32))
    for row in rows[1:]:
        acc = acc + row
    return acc


def _slot_mean(buf: Tensor, count: Tensor) -> Tensor:
    """Mean of the stored tensors; 0 while the buffer is empty."""
    return _slot_sum(buf).div_(count.clamp(min=1))


def _offer(buf: Tensor, prio: Tensor, count: Tensor, value: Tensor, priority: Tensor) -> None:
    """Offer ``value`` with ``priority``: fill the next empty slot; once full, replace the first slot of lowest
    priority if ``priority`` is strictly higher, else discard (the reference's ``argmin`` and ``>``). A priority
    that is not finite (a NaN or Inf in the gradient) makes no offer: stored, it could never be replaced."""
    full = count >= buf.shape[0]
    slot = torch.where(full, torch.argmin(prio), count).reshape(1)
    new = priority.to(device=prio.device, dtype=prio.dtype).reshape(1)
    old = prio.index_select(0, slot)
    finite = torch.isfinite(new)
    accept = ((new > old) | ~full) & finite
    row = torch.where(accept.reshape((1,) * buf.dim()), value.unsqueeze(0).to(buf.dtype), buf.index_select(0, slot))
    buf.index_copy_(0, slot, row)
    prio.index_copy_(0, slot, torch.where(accept, new, old))
    count.add_((~full & finite.reshape(())).to(count.dtype))


def _opaque_offer(buf: Tensor) -> bool:
    """Whether a compiled step offers through :func:`_offer_op`: the tensors of a parallel graph (on a CPU, those of
    at least SMALL_NUMEL elements: the split the graphs already make) whose offer was not decided before it.

    Traced into a graph with parallel loops, the offer's few scalar decisions (argmin, accept, the count) were not
    safe: with two threads on a CPU the priorities came out wrong now and then (tests/test_critical.py)."""
    return torch.compiler.is_compiling() and (buf.device.type != "cpu" or buf[0].numel() >= SMALL_NUMEL)


def _offer_rows(buf: tuple, count: Tensor, value: Tensor) -> None:
    """The compiled CPU step's offer, decided before the graph (:class:`_SlotOffers`): ``buf`` is ``(code, target
    row, the other rows)``; code 0 discards ``value``, 1 replaces the target, 2 fills it (and counts it)."""
    code, target = buf[0], buf[1]
    target.copy_(torch.where(code > 0, value.to(target.dtype), target))
    count.add_((code > 1).to(count.dtype))


def _offer_step(buf, prio: Tensor, count: Tensor, m: Tensor, g: Tensor, first, priority: Tensor,
                p: Tensor) -> None:
    """A step's offer: AdamCM's momentum ``m`` (or, on the first call, when it is still 0, the gradient: ``m +
    first * g``); AdamCG's raw gradient, passed as ``m`` with ``first=None``.

    Compiled, the tensors of a CPU's one-thread graph offer inside it, as the loop does. In a parallel graph the
    offer was decided before the graph on a CPU (:class:`_SlotOffers`); on an accelerator (where that would need
    the slots on the host) the graph offers through the opaque :func:`_offer_op` (:func:`_opaque_offer`)."""
    if isinstance(buf, tuple) or not _opaque_offer(buf):
        value = m if first is None else _ops.T.axpy(m, g, first)
        if isinstance(buf, tuple):
            _offer_rows(buf, count, value)
        else:
            _offer(buf, prio, count, value, priority)
    else:
        _offer_op(buf, prio, count, m, g, first, priority, p)


class _SlotOffers:
    """The buffer offers of a compiled step on a CPU, decided before the step's graphs, so that each graph writes
    the offered tensor straight into its slot during its one pass over memory (a graph that decides itself has to
    keep the offered tensor in a temporary of the parameter's size and copy it over afterwards).

    The decision reads only the priorities, the fill count and this step's priority, all known before the step.
    One multi-tensor pass takes it for every tensor of a runner's parallel graph, with :func:`_offer`'s rules (the
    first slot of lowest priority by ``argmin``, replaced only by a strictly higher priority), and stores the
    accepted priorities. (The one-thread graph's tensors, under SMALL_NUMEL elements, offer inside it: for them
    passing the rows costs more than it saves.) Each tensor's buffer then enters its graph as the tuple ``(code,
    target row, the other rows in slot order)``: the graph sums the rows for the mean, writes the offered tensor
    to the target row where the code says so, and counts a filled slot (:func:`_offer_rows`). The graph still
    decays the priorities afterwards."""

    def __init__(self, runner, size: int) -> None:
        self.size = size
        self.idx: list[int] = []  # the tensors offered here, by their index in the runner's order
        self.where: list[tuple[dict, int]] = []  # where each sits in its chunk's state lists
        self.tuples: list[list[tuple]] = []  # per tensor, per target slot: what the graph gets as its buffer
        self.codes: list[Tensor] = []
        for cst, q, i, serial in runner.positions():
            if serial:
                continue
            rows = [r.detach() for r in cst["buffer"][q].unbind(0)]
            code = torch.zeros((), dtype=torch.int64)
            orders = [(code, rows[t], *(rows[:t] + rows[t + 1:])) for t in range(size)]
            cst["buffer"][q] = orders[0]  # padding keeps code 0: never written
            if i is not None:
                self.idx.append(i)
                self.where.append((cst, q))
                self.tuples.append(orders)
                self.codes.append(code)
        self.prios = [runner.fst["priorities"][i] for i in self.idx]
        self.counts = [runner.fst["count"][i] for i in self.idx]
        self.saved: Tensor | None = None

    @staticmethod
    def fits(runner) -> bool:
        """Whether a runner has tensors for a parallel graph on a CPU, with their buffers at storage offsets dynamo
        does not specialise (the one-thread graph's tensors offer inside it, see :func:`_offer_step`)."""
        if not ROWS or torch.device(runner.device).type != "cpu" or "buffer" not in runner.fst:
            return False
        big = [cst["buffer"][q] for cst, q, _, serial in runner.positions() if not serial]
        return bool(big) and all(b.is_contiguous() and b.storage_offset() >= _BUF_OFFSET for b in big)

    def before(self, grads: list[Tensor], s: dict) -> None:
        priority = s.get("priority")  # synced: one for the group; else each tensor's own gradient norm
        prio = self.saved = torch.stack(self.prios)
        n = len(self.idx)
        new = (torch.stack(_ops.F.norm([grads[i] for i in self.idx])) if priority is None else priority)
        new = new.to(prio.dtype).expand(n)
        count = torch.stack(self.counts)
        full = count >= self.size
        slot = torch.where(full, prio.argmin(1), count)
        old = prio.gather(1, slot.unsqueeze(1)).squeeze(1)
        accept = ((new > old) | ~full) & torch.isfinite(new)  # (as :func:`_offer`)
        code = torch.where(accept, torch.where(full, 1, 2), 0)
        stored = prio.scatter(1, slot.unsqueeze(1), torch.where(accept, new, old).unsqueeze(1))
        torch._foreach_copy_(self.prios, list(stored.unbind(0)))
        torch._foreach_copy_(self.codes, list(code.unbind(0)))
        for (cst, q), orders, t in zip(self.where, self.tuples, slot.tolist()):
            cst["buffer"][q] = orders[t]

    def undo(self, stepped: set[int]) -> None:
        """A graph failed: the priorities of the tensors it and the later graphs did not step, as they were (nothing
        else of theirs was written). ``stepped``: the tensors that were, by their index in the runner's order."""
        if self.saved is None:
            return
        back = [k for k, i in enumerate(self.idx) if i not in stepped]
        if back:
            torch._foreach_copy_([self.prios[k] for k in back], [self.saved[k] for k in back])


@torch.library.custom_op("adamlab::critical_offer", mutates_args=("buf", "prio", "count"))
def _offer_op(buf: Tensor, prio: Tensor, count: Tensor, m: Tensor, g: Tensor, first: Tensor | None,
              priority: Tensor, after: Tensor) -> None:
    """:func:`_offer` on a CPU, with plain Python for the decision (the buffer's priorities are a handful of numbers)
    and the value picked, not computed: ``g`` where ``first`` is 1, else ``m``. On an accelerator: :func:`_offer`,
    eagerly (no host sync).

    ``after`` (the updated parameter) is not read: it orders the op after every read of the old buffer. Inductor
    computes the buffer mean inside the kernel that updates the parameter and may schedule that kernel after an op
    that only takes ``m``; the op, writing the buffer in place, then changed the mean the step had already used
    (tests/test_critical.py runs this op on a CPU). The price is a temporary copy of the updated parameter."""
    if buf.device.type != "cpu":
        _offer(buf, prio, count, m if first is None else torch.where(first > 0, g, m), priority)
        return
    filled = int(count)
    pr = prio.tolist()
    full = filled >= len(pr)
    if full:  # torch.argmin: the first NaN, else the first minimum
        slot = next((i for i, x in enumerate(pr) if x != x), None)
        slot = pr.index(min(pr)) if slot is None else slot
    else:
        slot = filled
    new = float(priority.to(dtype=prio.dtype))
    if not math.isfinite(new) or full and not new > pr[slot]:
        return  # discarded: the buffer, its priorities and its count stay
    buf.select(0, slot).copy_(g if first is not None and float(first) > 0 else m)
    prio.select(0, slot).fill_(new)
    if not full:
        count.add_(1)


def synced_priority(grads: list[Tensor]) -> Tensor:
    """One priority for a whole param group: Σ over its tensors of ‖g‖₂ (the reference's ``synced=True``); the norm
    of a sharded gradient is over all its shards."""
    norms = _dist.global_norms(list(grads))
    device = norms[0].device
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    return torch.stack(norms).sum()


def _aggregate_sum(g: Tensor, buf: Tensor, count: Tensor) -> Tensor:
    return torch.add(g, _slot_mean(buf, count))


def _aggregate_mean(g: Tensor, buf: Tensor, count: Tensor) -> Tensor:
    return torch.add(g, _slot_sum(buf)).div(count + 1)


def _aggregate_mid(g: Tensor, buf: Tensor, count: Tensor) -> Tensor:
    # ½(g + mean(buffer)); on the first call (empty buffer) the reference uses g itself
    return torch.add(g, _slot_mean(buf, count)).mul(torch.where(count > 0, 0.5, 1.0).to(g.dtype))


_AGGREGATE = {"sum": _aggregate_sum, "mean": _aggregate_mean, "mid": _aggregate_mid}


# ---------------------------------------------------------------------- shared plumbing
class _CriticalBase(AdamlabOptimizer):
    """Arguments, state and scalars shared by :class:`AdamCM` and :class:`AdamCG`."""

    _decoupled_decay: bool  # AdamCM: θ(1 − ηλ); AdamCG: L2 added to the aggregated gradient
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
            st["buffer"] = _placed(st["buffer"])

    def _extra_reads(self, group, p, state):
        # the gradient norm that ranks the buffer's slots reads the gradient once more
        return p.numel() * p.grad.element_size() if group.get("kappa", 0) > 0 and p.grad is not None else 0

    def _compiled_hook(self, runner):
        return _SlotOffers(runner, runner.fst["buffer"][0].shape[0]) if _SlotOffers.fits(runner) else None

    def _init_state(self, p, group):
        st = {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
              "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if group["kappa"] > 0:
            st.update(_buffer_state(p, group["buffer_size"]))
        return st

    def _constants(self, group):
        wd = group["weight_decay"] != 0
        return dict(maximize=group["maximize"], buffer=group["kappa"] > 0, synced=group["synced"], amsgrad=False,
                    decoupled=wd and self._decoupled_decay, l2=wd and not self._decoupled_decay)

    def _scalars(self, group, step):
        s = adam_bias_scalars(group, step)
        lr, wd = group["lr"], group["weight_decay"]
        s.update(beta1=group["betas"][0], weight_decay=wd, decay_factor=1 - lr * wd,
                 priority_decay=group["priority_decay"])
        return s

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

    _decoupled_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, buffer_size: int = 5, priority_decay: float = 0.7, kappa: float = 1.0,
                 synced: bool = True, maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
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
        if c["maximize"]:
            g = o.neg(g)
        if c["decoupled"]:
            o.mul_(p, s["decay_factor"])
        buf, prio, count = st["buffer"], st["priorities"], st["count"]
        m = o.axpy_(o.mul_(st["exp_avg"], s["beta1"]), g, s["m_coef"])
        m_cm = o.add(m, o.per(_slot_mean, buf, count))  # the mean before this step's offer
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), m_cm, m_cm, s["one_minus_beta2"])
        o.addcdiv_(p, m_cm, adam_denominator(o, v, s), s["neg_step_size"])
        # the offer comes last: nothing after it reads the buffer, so a compiled step updates one slot in place
        # instead of cloning the whole buffer to keep the old one for a later reader
        priority = s["priority"] if c["synced"] else o.norm(g)
        o.per(_offer_step, buf, prio, count, m, g, s["first"], priority, p)
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

    _decoupled_decay = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, buffer_size: int = 10, priority_decay: float = 0.7, kappa: float = 1.0,
                 synced: bool = True, aggregation: str = "sum", maximize: bool = False, **impl):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, buffer_size=buffer_size, priority_decay=priority_decay,
                        kappa=kappa, synced=synced, aggregation=aggregation, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        super()._validate(group)
        if group["aggregation"] not in _AGGREGATIONS:
            raise ValueError(f"Invalid aggregation: {group['aggregation']!r} (expected one of {_AGGREGATIONS})")

    def _constants(self, group):
        return dict(super()._constants(group), aggregation=group["aggregation"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        if not c["buffer"]:
            return Adam._rule(o, p, g, st, s, c)
        if c["maximize"]:
            g = o.neg(g)
        buf, prio, count = st["buffer"], st["priorities"], st["count"]
        g_aggr = o.per(_AGGREGATE[c["aggregation"]], g, buf, count)  # the buffer before this step's offer
        if c["l2"]:
            g_aggr = o.axpy(g_aggr, p, s["weight_decay"])
        m = o.axpy_(o.mul_(st["exp_avg"], s["beta1"]), g_aggr, s["one_minus_beta1"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), g_aggr, g_aggr, s["one_minus_beta2"])
        o.addcdiv_(p, m, adam_denominator(o, v, s), s["neg_step_size"])
        priority = s["priority"] if c["synced"] else o.norm(g)
        o.per(_offer_step, buf, prio, count, g, g, None, priority, p)  # last, as in AdamCM; the raw gradient goes in
        o.mul_(prio, s["priority_decay"])
