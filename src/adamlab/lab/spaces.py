"""The lab's tuning search spaces, as data: the spec types and one space per registry optimizer, keyed by its
registry name (:func:`adamlab.list_optimizers`). The comparators' rows (:mod:`adamlab.lab.comparators`) carry
their own spaces, in the same spec types and from the same shared ranges.

Every optimizer gets the same tuning budget over all of its hyperparameters: the learning rate on a log scale,
1 − β on log scales (:class:`OneMinusLog`), a wide ε range, and its own knobs. No Optuna here:
:mod:`adamlab.lab.space` turns a space into suggestions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = ["LogFloat", "OneMinusLog", "Float", "IntRange", "Choice", "Spec", "SEARCH_SPACES",
           "LR", "BETA1", "BETA2", "EPS", "WEIGHT_DECAY", "ADAM_SPACE"]


# ---------------------------------------------------------------------- spec types
@dataclass(frozen=True)
class LogFloat:
    """A float sampled log-uniformly in [low, high]."""
    low: float
    high: float


@dataclass(frozen=True)
class OneMinusLog:
    """A β: the value is ``1 - x`` with ``x`` log-uniform in [low, high]."""
    low: float
    high: float


@dataclass(frozen=True)
class Float:
    """A float sampled uniformly in [low, high]."""
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high] (log-uniform when ``log``)."""
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of a few values."""
    values: tuple


Spec = Union[LogFloat, OneMinusLog, Float, IntRange, Choice]  # noqa: UP007 (a runtime alias, Python 3.10 too)


# ---------------------------------------------------------------------- shared ranges
LR = LogFloat(1e-5, 1.0)
BETA1 = OneMinusLog(1e-3, 0.5)
BETA2 = OneMinusLog(1e-4, 0.1)
EPS = LogFloat(1e-10, 1e-2)
WEIGHT_DECAY = LogFloat(1e-5, 1e-1)
ADAM_SPACE: dict[str, Spec] = dict(lr=LogFloat(1e-5, 1e-1), beta1=BETA1, beta2=BETA2, eps=EPS)
_MOMENTUM = OneMinusLog(1e-3, 0.5)
_CRITICAL = dict(ADAM_SPACE, buffer_size=IntRange(2, 20), priority_decay=Float(0.5, 0.99))

# ---------------------------------------------------------------------- the table: registry name -> space
SEARCH_SPACES: dict[str, dict[str, Spec]] = {
    "sgd": dict(lr=LR),
    "momentum": dict(lr=LR, momentum=_MOMENTUM),
    "nesterov": dict(lr=LR, momentum=_MOMENTUM),
    "adagrad": dict(lr=LR, eps=EPS),
    "rmsprop": dict(lr=LogFloat(1e-5, 1e-1), alpha=OneMinusLog(1e-4, 0.1), eps=EPS),
    "adam": dict(ADAM_SPACE),
    "adamw": dict(ADAM_SPACE, weight_decay=WEIGHT_DECAY),
    "amsgrad": dict(ADAM_SPACE),
    "exadam": dict(ADAM_SPACE),
    "adamx": dict(ADAM_SPACE, beta2=OneMinusLog(1e-3, 0.1), weight_decay=WEIGHT_DECAY),
    "ademamix": dict(ADAM_SPACE, beta3=OneMinusLog(1e-4, 1e-1), alpha=LogFloat(0.5, 16.0)),
    "adamcm": dict(_CRITICAL),
    "adamcg": dict(_CRITICAL),
    "coupledadam": dict(ADAM_SPACE, weight_decay=WEIGHT_DECAY),
    "signum": dict(lr=LogFloat(1e-6, 1e-1), momentum=_MOMENTUM, weight_decay=WEIGHT_DECAY),
}
