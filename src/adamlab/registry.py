"""Every optimizer adamlab ships, by name: class, defaults, paper and tuning search space.

``create_optimizer(name, model_or_params, **overrides)`` builds one; ``list_optimizers()`` lists the names;
``get_optimizer_info(name)`` returns the :class:`OptimInfo` row (timm's ``OptimInfo`` is the model). The search
space lives here, beside the optimizer, so that the lab gives every optimizer the same tuning budget over all of
its hyperparameters (learning rate on a log scale, 1 − β on log scales, a wide ε range, its own knobs).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "OptimInfo", "LogFloat", "OneMinusLog", "Float", "IntRange", "Choice",
    "list_optimizers", "get_optimizer_info", "create_optimizer",
]


# ---------------------------------------------------------------------- search-space specs
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


@dataclass(frozen=True)
class OptimInfo:
    """One registry row."""
    name: str
    class_name: str
    description: str
    paper: str
    defaults: dict[str, Any] = field(default_factory=dict)
    num_betas: int = 0
    search_space: dict[str, Spec] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        return getattr(importlib.import_module("adamlab.optim"), self.class_name)


_LR = LogFloat(1e-5, 1.0)
_B1 = OneMinusLog(1e-3, 0.5)
_B2 = OneMinusLog(1e-4, 0.1)
_EPS = LogFloat(1e-10, 1e-2)
_WD = LogFloat(1e-5, 1e-1)
_ADAM_SPACE = dict(lr=LogFloat(1e-5, 1e-1), beta1=_B1, beta2=_B2, eps=_EPS)

_ROWS = [
    OptimInfo("sgd", "SGD", "Plain stochastic gradient descent", "Robbins & Monro 1951",
              {}, 0, dict(lr=_LR)),
    OptimInfo("momentum", "SGD", "SGD with heavy-ball momentum 0.9", "Polyak 1964",
              dict(momentum=0.9), 0, dict(lr=_LR, momentum=OneMinusLog(1e-3, 0.5))),
    OptimInfo("nesterov", "SGD", "SGD with Nesterov momentum 0.9", "Nesterov 1983; Sutskever et al. 2013",
              dict(momentum=0.9, nesterov=True), 0, dict(lr=_LR, momentum=OneMinusLog(1e-3, 0.5))),
    OptimInfo("adagrad", "Adagrad", "Adagrad: per-coordinate step sizes from summed squared gradients",
              "Duchi, Hazan & Singer 2011", {}, 0, dict(lr=_LR, eps=_EPS)),
    OptimInfo("rmsprop", "RMSprop", "RMSprop: EMA of squared gradients", "Hinton, Coursera lecture 6e, 2012",
              {}, 0, dict(lr=LogFloat(1e-5, 1e-1), alpha=OneMinusLog(1e-4, 0.1), eps=_EPS)),
    OptimInfo("adam", "Adam", "Adam", "Kingma & Ba 2015, arXiv:1412.6980", {}, 2, dict(_ADAM_SPACE)),
    OptimInfo("adamw", "AdamW", "Adam with decoupled weight decay", "Loshchilov & Hutter 2019, arXiv:1711.05101",
              {}, 2, dict(_ADAM_SPACE, weight_decay=_WD)),
    OptimInfo("amsgrad", "Adam", "AMSGrad: Adam with the running maximum of v", "Reddi, Kale & Kumar 2018",
              dict(amsgrad=True), 2, dict(_ADAM_SPACE)),
    OptimInfo("exadam", "EXAdam", "EXAdam: cross-moment debiasing and gradient acceleration",
              "Adly 2024, arXiv:2412.20302", {}, 2, dict(_ADAM_SPACE)),
    OptimInfo("adamx", "AdamX", "AdamX: second-moment decay that degrades Adam to momentum SGD",
              "Zhu, Xiao & Min 2025, arXiv:2511.13465", {}, 2,
              dict(_ADAM_SPACE, beta2=OneMinusLog(1e-3, 0.1), weight_decay=_WD)),
    OptimInfo("ademamix", "AdEMAMix", "AdEMAMix: a mixture of a fast and a very slow gradient EMA",
              "Pagliardini, Ablin & Grangier 2024, arXiv:2409.03137", {}, 3,
              dict(_ADAM_SPACE, beta3=OneMinusLog(1e-4, 1e-1), alpha=LogFloat(0.5, 16.0))),
    OptimInfo("adamcm", "AdamCM", "Adam with critical momenta: a priority buffer of past momenta",
              "Malviya et al. 2023, arXiv:2307.09638", {}, 2,
              dict(_ADAM_SPACE, buffer_size=IntRange(2, 20), priority_decay=Float(0.5, 0.99))),
    OptimInfo("adamcg", "AdamCG", "Adam with critical gradients: a priority buffer of past gradients",
              "McRae et al. 2022 (ICLR); Malviya et al. 2023", {}, 2,
              dict(_ADAM_SPACE, buffer_size=IntRange(2, 20), priority_decay=Float(0.5, 0.99))),
    OptimInfo("coupledadam", "CoupledAdam", "Coupled Adam: one shared second moment across the vocabulary",
              "Stollenwerk & Stollenwerk 2025, arXiv:2502.08441", {}, 2, dict(_ADAM_SPACE, weight_decay=_WD)),
    OptimInfo("signum", "Signum", "Signum: the sign of a gradient EMA (momentum 0 is signSGD)",
              "Bernstein et al. 2018, arXiv:1802.04434", {}, 0,
              dict(lr=LogFloat(1e-6, 1e-1), momentum=OneMinusLog(1e-3, 0.5), weight_decay=_WD)),
]
_REGISTRY = {row.name: row for row in _ROWS}


def list_optimizers() -> list[str]:
    """All registry names, in the order of the notes (classic ladder first, then the research optimizers).

    Example::

        >>> list_optimizers()[:3]
        ['sgd', 'momentum', 'nesterov']
    """
    return list(_REGISTRY)


def get_optimizer_info(name: str) -> OptimInfo:
    """The registry row of ``name`` (case-insensitive); an unknown name raises :class:`ValueError`.

    Example::

        >>> info = get_optimizer_info("ademamix")
        >>> info.cls.__name__, info.num_betas, sorted(info.search_space)
        ('AdEMAMix', 3, ['alpha', 'beta1', 'beta2', 'beta3', 'eps', 'lr'])
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def _effective(info: OptimInfo, kwargs: dict[str, Any], key: str, missing: Any = None) -> Any:
    """The value ``key`` will take: the override, else the class's signature default."""
    if key in kwargs:
        return kwargs[key]
    import inspect

    param = inspect.signature(info.cls.__init__).parameters.get(key)
    return missing if param is None else param.default


def _fold_betas(info: OptimInfo, kwargs: dict[str, Any]) -> None:
    """Turn ``beta1=/beta2=/beta3=`` overrides into the class's ``betas`` tuple."""
    names = [f"beta{i}" for i in range(1, 4)]
    given = {k: kwargs.pop(k) for k in names if k in kwargs}
    if not given:
        return
    if info.num_betas == 0:
        raise TypeError(f"{info.name} has no betas; got {', '.join(given)}")
    betas = list(_effective(info, kwargs, "betas"))
    for k, v in given.items():
        i = int(k[-1]) - 1
        if i >= info.num_betas:
            raise TypeError(f"{info.name} has {info.num_betas} betas; got {k}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not (
                isinstance(v, (torch.Tensor, np.generic)) and np.size(v) == 1):
            raise TypeError(f"{k} must be a real number, got {type(v).__name__}")
        betas[i] = float(v)
    kwargs["betas"] = tuple(betas)


def create_optimizer(name: str, model_or_params: nn.Module | Iterable, **overrides: Any) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over a model or over params (tensors, group dicts or ``(name, tensor)`` pairs).

    ``overrides`` are constructor arguments, plus ``beta1``/``beta2``/``beta3`` folded into ``betas``. Given an
    ``nn.Module``, weight decay is kept off biases and normalisation weights, and ``coupledadam`` couples the
    embedding matrices (a tied LM head counted once) without weight decay, as its paper trains them.

    Args:
        name: a registry name (:func:`list_optimizers`), case-insensitive.
        model_or_params: an ``nn.Module`` (its parameters, grouped as above) or what the optimizer class takes.
        **overrides: constructor arguments (implementation options included) over the registry row's defaults.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
        >>> opt = create_optimizer("nesterov", model, lr=0.1)
        >>> type(opt).__name__, opt.defaults["momentum"], opt.defaults["nesterov"]
        ('SGD', 0.9, True)
        >>> opt = create_optimizer("adamw", model, lr=3e-4, beta2=0.95, weight_decay=0.1)
        >>> [g["weight_decay"] for g in opt.param_groups], opt.defaults["betas"]
        ([0.0, 0.1], (0.9, 0.95))
    """
    info = get_optimizer_info(name)
    kwargs = {**info.defaults, **overrides}
    _fold_betas(info, kwargs)
    params = model_or_params
    if isinstance(model_or_params, nn.Module):
        from . import groups

        if info.name == "coupledadam":
            wd = _effective(info, kwargs, "weight_decay")
            kwargs.pop("weight_decay", None)
            params = groups.coupled_param_groups(model_or_params, weight_decay=wd)
        elif _effective(info, kwargs, "weight_decay", 0.0):
            params = groups.param_groups_weight_decay(model_or_params, _effective(info, kwargs, "weight_decay"))
            kwargs.pop("weight_decay", None)
        else:
            params = model_or_params.parameters()
    return info.cls(params, **kwargs)
