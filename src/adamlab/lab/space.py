"""The bridge to the optimizer side: search spaces -> Optuna suggestions -> an optimizer.

Only this module talks to adamlab.registry, to the lab's table of registry search spaces
(:mod:`adamlab.lab.spaces`) and to the comparators' table (:mod:`adamlab.lab.comparators`), so the contract lives
in one place: a name is a registry row or a comparator row, and every function here takes both.
"""
from __future__ import annotations

import inspect
from typing import Any

import optuna

from adamlab import create_optimizer, list_optimizers
from adamlab.registry import get_optimizer_info

from . import comparators
from .spaces import SEARCH_SPACES, Choice, Float, IntRange, LogFloat, OneMinusLog

__all__ = ["all_optimizers", "search_space", "suggest", "default_params", "build_optimizer",
           "optuna_key", "describe_space"]


def all_optimizers() -> list[str]:
    """The registry's names, then the comparators that can be built here (one whose package is missing is left
    out: a claim against it is then reported as not tested)."""
    return list(list_optimizers()) + [n for n in comparators.names() if comparators.available(n)[0]]


def search_space(name: str) -> dict[str, Any]:
    if comparators.is_comparator(name):
        return dict(comparators.get(name).search_space)
    return dict(SEARCH_SPACES[get_optimizer_info(name).name])


def optuna_key(key: str, spec: Any) -> str:
    """Name of the Optuna parameter for a search-space key (betas are searched as 1 - beta)."""
    return f"one_minus_{key}" if isinstance(spec, OneMinusLog) else key


def suggest(trial: optuna.Trial, name: str) -> dict[str, Any]:
    """Draw one setting of every hyperparameter in `name`'s search space; returns create_optimizer kwargs."""
    out: dict[str, Any] = {}
    for key, spec in sorted(search_space(name).items()):
        if isinstance(spec, LogFloat):
            out[key] = trial.suggest_float(key, spec.low, spec.high, log=True)
        elif isinstance(spec, OneMinusLog):
            out[key] = 1.0 - trial.suggest_float(optuna_key(key, spec), spec.low, spec.high, log=True)
        elif isinstance(spec, Float):
            out[key] = trial.suggest_float(key, spec.low, spec.high)
        elif isinstance(spec, IntRange):
            out[key] = trial.suggest_int(key, spec.low, spec.high, log=bool(getattr(spec, "log", False)))
        elif isinstance(spec, Choice):
            out[key] = trial.suggest_categorical(key, list(spec.values))
        else:  # pragma: no cover - a new spec type in adamlab.lab.spaces
            raise TypeError(f"unknown search-space spec {spec!r} for {name}.{key}")
    return out


def default_params(name: str) -> dict[str, Any]:
    """The registry defaults (a comparator's recommended setting), in Optuna parameter names (for enqueueing trial
    0)."""
    if comparators.is_comparator(name):
        return _in_optuna_names(name, comparators.get(name).defaults)
    info = get_optimizer_info(name)
    d = dict(info.defaults)
    betas = d.get("betas") or _signature_default(info.cls, "betas")
    fixed: dict[str, Any] = {}
    for key in search_space(name):
        if key in d:
            val = d[key]
        elif key.startswith("beta") and key[4:].isdigit() and betas is not None and int(key[4:]) <= len(betas):
            val = betas[int(key[4:]) - 1]
        else:
            val = _signature_default(info.cls, key)
        if val is not None:
            fixed[key] = val
    return _in_optuna_names(name, fixed)


def _in_optuna_names(name: str, values: dict[str, Any]) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    for key, spec in search_space(name).items():
        val = values.get(key)
        if val is None:
            continue
        if isinstance(spec, OneMinusLog):
            if not (1.0 - val) > 0:
                continue
            fixed[optuna_key(key, spec)] = 1.0 - float(val)
        elif isinstance(spec, LogFloat) and not val > 0:
            continue
        else:
            fixed[key] = val
    return fixed


def _signature_default(cls, key: str):
    try:
        p = inspect.signature(cls).parameters.get(key)
    except (TypeError, ValueError):
        return None
    if p is None or p.default is inspect.Parameter.empty:
        return None
    return p.default


def params_from_optuna(name: str, optuna_params: dict[str, Any]) -> dict[str, Any]:
    """Inverse of the 1 - beta reparametrisation: Optuna params -> create_optimizer kwargs."""
    out = {}
    for key, spec in search_space(name).items():
        k = optuna_key(key, spec)
        if k in optuna_params:
            v = optuna_params[k]
            out[key] = 1.0 - v if isinstance(spec, OneMinusLog) else v
    return out


def build_optimizer(name: str, model_or_params, params: dict[str, Any]):
    """The optimizer ``name`` with keyword settings ``params``; a comparator's carries its capabilities (what the
    training loop must do for it: :func:`adamlab.lab.comparators.capabilities`)."""
    if comparators.is_comparator(name):
        return comparators.build(name, model_or_params, params)
    return create_optimizer(name, model_or_params, **params)


def describe_space(name: str) -> str:
    parts = []
    for key, spec in sorted(search_space(name).items()):
        kind = type(spec).__name__
        if isinstance(spec, Choice):
            parts.append(f"{key}∈{list(spec.values)}")
        elif isinstance(spec, OneMinusLog):
            parts.append(f"1-{key}∈[{spec.low:g},{spec.high:g}] log")
        else:
            lg = " log" if kind == "LogFloat" or getattr(spec, "log", False) else ""
            parts.append(f"{key}∈[{spec.low:g},{spec.high:g}]{lg}")
    return ", ".join(parts)


def is_log(spec: Any) -> bool:
    return isinstance(spec, (LogFloat, OneMinusLog)) or bool(getattr(spec, "log", False))

