"""The priority buffer of AdamCM and AdamCG (critical momenta / gradients), as the engine provides it on every path.

A buffer keeps up to C tensors shaped like the parameter, each with a priority. An offer fills the next empty slot
or, once full, replaces the first slot of lowest priority when the new priority is strictly higher (the reference's
``argmin`` and ``>``); :func:`slot_mean` is the mean of the stored tensors. The rules in
:mod:`adamlab.optim.critical` call :func:`slot_mean` and :func:`offer_step` through ``o.per``; what differs between
the loop and the compiled path lives here, so that the rules hold only their maths:

* on the loop and multi-tensor paths, :func:`_offer` decides and writes with tensor operations;
* compiled on a CPU, the tensors of a parallel graph have their offers decided before the graph, in one
  multi-tensor pass (:class:`SlotOffers`, the optimizer's ``_compiled_hook``), and their buffers enter the graph as
  rows, written in place during the step's one pass over memory. A buffer is kept at storage offset
  :data:`BUF_OFFSET` (dynamo specialises offsets 0 and 1, which would tie a graph to one order of the rows);
* compiled on an accelerator, the graph offers through the opaque custom op :func:`_offer_op`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _ops
from ._compiled import SMALL_NUMEL

__all__ = ["BUF_OFFSET", "ROWS", "placed", "buffer_state", "slot_sum", "slot_mean", "offer_step", "SlotOffers"]

_LOW = (torch.bfloat16, torch.float16)

#: where a buffer's first element sits in its storage. The compiled step on a CPU passes a buffer's rows to its
#: graph as separate inputs, in an order that changes from step to step (:class:`SlotOffers`); dynamo specialises
#: an input's storage offset when it is 0 or 1, so a row at offset 0 would make the graph serve that order only
BUF_OFFSET = 2

#: compiled CPU steps decide the offers before their graphs (False: every compiled step offers through the op)
ROWS = True


def placed_zeros(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A zeroed contiguous tensor of ``like``'s dtype and device, at storage offset :data:`BUF_OFFSET`."""
    store = torch.zeros(BUF_OFFSET + math.prod(shape), dtype=like.dtype, device=like.device)
    return store[BUF_OFFSET:].view(shape)


def placed(buf: Tensor) -> Tensor:
    """``buf`` itself where it is contiguous at storage offset >= :data:`BUF_OFFSET`, else a copy that is."""
    if buf.is_contiguous() and buf.storage_offset() >= BUF_OFFSET:
        return buf
    return placed_zeros(tuple(buf.shape), buf).copy_(buf)


def buffer_state(p: Tensor, size: int) -> dict[str, Tensor]:
    prio_dtype = torch.float32 if p.dtype in _LOW else p.dtype
    return {"buffer": placed_zeros((size, *p.shape), p),
            "priorities": torch.zeros(size, dtype=prio_dtype, device=p.device),
            "count": torch.zeros((), dtype=torch.int64, device=p.device)}


def slot_sum(buf: Tensor | tuple) -> Tensor:
    """Σ of the stored tensors (the empty slots hold zeros, so the sum over all slots is the sum over the filled).

    Compiled, the sum is written out slot by slot: a chain of element-wise additions that the compiler fuses into
    the step's one pass over memory (a reduction over dim 0 becomes a loop of its own, with its result written to
    and read back from a temporary). The compiled graph then holds ``buffer_size`` as a constant. ``buf`` may be
    the compiled CPU step's tuple ``(code, rows...)`` (:class:`SlotOffers`): its rows come in another order than
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


def slot_mean(buf: Tensor, count: Tensor) -> Tensor:
    """Mean of the stored tensors; 0 while the buffer is empty."""
    return slot_sum(buf).div_(count.clamp(min=1))


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
    """The compiled CPU step's offer, decided before the graph (:class:`SlotOffers`): ``buf`` is ``(code, target
    row, the other rows)``; code 0 discards ``value``, 1 replaces the target, 2 fills it (and counts it)."""
    code, target = buf[0], buf[1]
    target.copy_(torch.where(code > 0, value.to(target.dtype), target))
    count.add_((code > 1).to(count.dtype))


def offer_step(buf, prio: Tensor, count: Tensor, m: Tensor, g: Tensor, first, priority: Tensor,
                p: Tensor) -> None:
    """A step's offer: AdamCM's momentum ``m`` (or, on the first call, when it is still 0, the gradient: ``m +
    first * g``); AdamCG's raw gradient, passed as ``m`` with ``first=None``.

    Compiled, the tensors of a CPU's one-thread graph offer inside it, as the loop does. In a parallel graph the
    offer was decided before the graph on a CPU (:class:`SlotOffers`); on an accelerator (where that would need
    the slots on the host) the graph offers through the opaque :func:`_offer_op` (:func:`_opaque_offer`)."""
    if isinstance(buf, tuple) or not _opaque_offer(buf):
        value = m if first is None else _ops.T.axpy(m, g, first)
        if isinstance(buf, tuple):
            _offer_rows(buf, count, value)
        else:
            _offer(buf, prio, count, value, priority)
    else:
        _offer_op(buf, prio, count, m, g, first, priority, p)


class SlotOffers:
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
        does not specialise (the one-thread graph's tensors offer inside it, see :func:`offer_step`)."""
        if not ROWS or torch.device(runner.device).type != "cpu" or "buffer" not in runner.fst:
            return False
        big = [cst["buffer"][q] for cst, q, _, serial in runner.positions() if not serial]
        return bool(big) and all(b.is_contiguous() and b.storage_offset() >= BUF_OFFSET for b in big)

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
