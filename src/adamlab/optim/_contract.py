"""The contract between the engine (:mod:`adamlab.optim._base`) and an optimizer's rule, as declared types.

A rule is ``rule(o, p, g, st, s, c)``:

* ``o`` (:class:`Ops`): the operation vocabulary. Each operation applies to one tensor (the loop and compiled
  paths) or to a list of tensors (the multi-tensor path), so one rule serves the three paths;
* ``p``, ``g``: the parameter (updated in place) and its gradient;
* ``st``: the parameter's state tensors by name (``exp_avg``, ...), updated in place;
* ``s``: the per-step scalars, a mapping declared by the optimizer's ``Scalars`` type (a ``TypedDict``), plus
  :class:`EngineScalars`: Python floats on the loop path, 0-d tensors on the compiled path (so a scheduler
  changing the learning rate never recompiles), one per tensor in a list on the multi-tensor path;
* ``c``: the switches that change the shape of the computation, declared by the optimizer's ``Constants`` type
  plus :class:`EngineConstants`: hashable Python values, one compiled graph per distinct set.

What every optimizer does the same way is applied by the engine before the rule (:func:`compose`), from what the
class declares: the sign flip of ``maximize``, and the weight decay: ``"l2"`` (g ← g + λθ, torch.optim's
Adam/SGD/Adagrad/RMSprop) or ``"decoupled"`` (θ ← θ(1 − ηλ), AdamW's). An optimizer whose reference computes the
decoupled decay as θ + (−ηλ)·θ (one rounding fewer, another result in the last bit) declares
``_decay_rounding = "axpy"``; one that applies the decay inside its own maths (AdEMAMix adds λθ to its update,
AdamCG adds it to the aggregated gradient) declares ``"rule"`` and reads ``s["weight_decay"]``. A rule module then
holds only its maths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, TypedDict

__all__ = ["Ops", "Decay", "EngineScalars", "EngineConstants", "Rule", "compose", "engine_constants",
           "engine_scalars", "check_declared"]

#: how weight decay λ enters an update (None: λ = 0 for this group)
Decay = Literal["l2", "decoupled", "rule"]
#: a tensor (loop and compiled paths) or a list of tensors (multi-tensor path)
Operand = Any
#: a per-step scalar: a float, a 0-d tensor, or one of those per tensor in a list
Scalar = Any


class Ops(Protocol):
    """The operation vocabulary rules are written against (:mod:`adamlab.optim._ops` implements it four times).

    Out-of-place operations return a new operand; in-place ones (trailing ``_``) update their first argument and
    return it, so calls chain like tensor methods. ``axpy(x, y, a)`` is x + a·y; ``addcmul(x, y, z, a)`` is
    x + a·y·z; ``addcdiv_(x, y, z, a)`` is x += a·y/z. A rule reduces over a tensor's elements only through
    ``norm`` and ``mean``, which the sharded vocabularies take over every shard; ``per(fn, *args)`` applies a
    per-tensor function the vocabulary does not have."""

    def add(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def sub(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def mul(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def div(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def neg(self, x: Operand) -> Operand: ...
    def sqrt(self, x: Operand) -> Operand: ...
    def abs(self, x: Operand) -> Operand: ...
    def maximum(self, x: Operand, y: Operand) -> Operand: ...
    def clone(self, x: Operand) -> Operand: ...
    def clamp_max(self, x: Operand, a: Scalar) -> Operand: ...
    def axpy(self, x: Operand, y: Operand, a: Scalar) -> Operand: ...
    def addcmul(self, x: Operand, y: Operand, z: Operand, a: Scalar) -> Operand: ...
    def norm(self, x: Operand) -> Operand: ...
    def mean(self, x: Operand, dim: int) -> Operand: ...
    def add_(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def sub_(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def mul_(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def div_(self, x: Operand, y: Operand | Scalar) -> Operand: ...
    def sqrt_(self, x: Operand) -> Operand: ...
    def copy_(self, x: Operand, y: Operand) -> Operand: ...
    def maximum_(self, x: Operand, y: Operand) -> Operand: ...
    def clamp_max_(self, x: Operand, a: Scalar) -> Operand: ...
    def axpy_(self, x: Operand, y: Operand, a: Scalar) -> Operand: ...
    def lerp_(self, x: Operand, y: Operand, w: Scalar) -> Operand: ...
    def addcmul_(self, x: Operand, y: Operand, z: Operand, a: Scalar) -> Operand: ...
    def addcdiv_(self, x: Operand, y: Operand, z: Operand, a: Scalar) -> Operand: ...
    def per(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class EngineScalars(TypedDict, total=False):
    """The per-step scalars the engine adds for the weight decay (only those the group's decay uses)."""

    weight_decay: float  #: λ ("l2" and "rule")
    decay_factor: float  #: 1 − ηλ ("decoupled")
    neg_lr_wd: float  #: −ηλ ("decoupled" with ``_decay_rounding = "axpy"``)


class EngineConstants(TypedDict):
    """The switches the engine adds to every rule's constants."""

    maximize: bool
    decay: Decay | None


Rule = Callable[[Ops, Operand, Operand, Mapping[str, Operand], Mapping[str, Scalar], Mapping[str, Any]], None]


def engine_constants(group: Mapping[str, Any], decay: Decay) -> EngineConstants:
    """``maximize`` and the group's decay (None where λ = 0)."""
    return EngineConstants(maximize=bool(group.get("maximize", False)),
                           decay=decay if group.get("weight_decay", 0) != 0 else None)


def engine_scalars(group: Mapping[str, Any], decay: Decay | None, rounding: str) -> EngineScalars:
    """The scalars the group's decay needs, computed as each reference computes them."""
    wd = group.get("weight_decay", 0)
    if decay == "decoupled":
        if rounding == "axpy":
            return EngineScalars(neg_lr_wd=group["lr"] * -wd)
        return EngineScalars(decay_factor=1 - group["lr"] * wd)
    if decay is not None:
        return EngineScalars(weight_decay=wd)
    return EngineScalars()


def compose(rule: Rule, rounding: str = "mul") -> Rule:
    """The update the engine runs on every path: ``maximize``'s sign flip and the declared weight decay, then the
    optimizer's own ``rule``. The order is torch.optim's (and every reference's): the sign first, then the decay."""
    axpy = rounding == "axpy"

    def update(o, p, g, st, s, c):
        if c["maximize"]:
            g = o.neg(g)
        decay = c["decay"]
        if decay == "decoupled":
            if axpy:
                o.axpy_(p, p, s["neg_lr_wd"])
            else:
                o.mul_(p, s["decay_factor"])
        elif decay == "l2":
            g = o.axpy(g, p, s["weight_decay"])
        rule(o, p, g, st, s, c)

    update.__name__ = update.__qualname__ = f"{getattr(rule, '__qualname__', 'rule')}_composed"
    return update


def _keys(declared: type | None) -> tuple[frozenset[str], frozenset[str]]:
    if declared is None:
        return frozenset(), frozenset()
    required = frozenset(getattr(declared, "__required_keys__", ()))
    optional = frozenset(getattr(declared, "__optional_keys__", ()))
    return required, optional


def check_declared(owner: str, what: str, declared: type | None, got: Mapping[str, Any]) -> None:
    """Raise TypeError when ``got``'s keys are not those ``declared`` (a TypedDict) requires and allows: the
    contract between a rule and its ``_scalars``/``_constants``, checked when a plan is built."""
    required, optional = _keys(declared)
    keys = set(got)
    missing, extra = sorted(required - keys), sorted(keys - required - optional)
    if missing or extra:
        raise TypeError(f"{owner}: {what} {sorted(keys)} do not match the declared {getattr(declared, '__name__', None)}"
                        f" (missing {missing}, undeclared {extra})")
