"""Every optimizer adamlab ships, by name: class, defaults, paper, param-group policy and reference baselines.

``create_optimizer(name, model_or_params, **overrides)`` builds one; ``list_optimizers()`` lists the names;
``get_optimizer_info(name)`` returns the :class:`OptimInfo` row (timm's ``OptimInfo`` is the model). A row is the
catalogue's data about an optimizer, so that no code elsewhere branches on its name: how ``create_optimizer``
groups a model's parameters (:attr:`OptimInfo.param_groups`), how ``adamlab speed`` groups its flat parameter sets
(:attr:`OptimInfo.bench_groups`), and which ``torch.optim`` and ``pytorch_optimizer`` classes implement the same
algorithm (:attr:`OptimInfo.torch_equivalent`, :attr:`OptimInfo.pytorch_optimizer`). The lab's tuning search
spaces live with the lab (:mod:`adamlab.lab.spaces`), keyed by these names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "OptimInfo", "Baseline", "decay_groups", "coupled_groups", "couple_first",
    "list_optimizers", "get_optimizer_info", "create_optimizer",
]


# ---------------------------------------------------------------------- param-group policies
def decay_groups(info: OptimInfo, model: nn.Module, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The default policy: when the optimizer decays at all, no weight decay on biases and normalisation weights
    (:func:`adamlab.groups.param_groups_weight_decay`); else the model's parameters as they are.

    Returns the params for the optimizer class and the keyword arguments left for its constructor."""
    wd = _effective(info, kwargs, "weight_decay", 0.0)
    if not wd:
        return model.parameters(), kwargs
    from .groups import param_groups_weight_decay

    return param_groups_weight_decay(model, wd), {k: v for k, v in kwargs.items() if k != "weight_decay"}


def coupled_groups(info: OptimInfo, model: nn.Module, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Coupled Adam's policy: the embedding matrices (a tied LM head counted once) coupled and without weight
    decay, every other parameter decayed (:func:`adamlab.groups.coupled_param_groups`), as its paper trains them."""
    from .groups import coupled_param_groups

    wd = _effective(info, kwargs, "weight_decay")
    return coupled_param_groups(model, weight_decay=wd), {k: v for k, v in kwargs.items() if k != "weight_decay"}


def couple_first(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """``adamlab speed``'s groups for Coupled Adam over a flat list of a transformer's tensors whose first is the
    token embedding: that one coupled (without decay), the rest not, as :func:`coupled_groups` groups a model."""
    return [{"params": params[:1], "coupled": True, "weight_decay": 0.0},
            {"params": params[1:], "coupled": False}]


# ---------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Baseline:
    """Another library's implementation of the same algorithm: a class by name (in ``torch.optim`` or
    ``pytorch_optimizer``) and the keyword arguments that give it the registry row's default hyperparameters."""
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimInfo:
    """One registry row.

    Attributes:
        name: the registry name.
        class_name: the optimizer class, in :mod:`adamlab.optim`.
        description: one line.
        paper: where the algorithm comes from.
        defaults: constructor arguments over the class's own defaults.
        num_betas: how many ``betaN=`` keywords fold into ``betas``.
        param_groups: how :func:`create_optimizer` groups an ``nn.Module``'s parameters:
            ``policy(info, model, kwargs) -> (params, kwargs)`` (:func:`decay_groups`, :func:`coupled_groups`).
        bench_groups: how ``adamlab speed`` groups a flat list of a transformer's tensors (the token embedding
            first), or None for the list as it is.
        torch_equivalent: the ``torch.optim`` class that implements the same algorithm, if torch has one.
        pytorch_optimizer: the ``pytorch_optimizer`` class that implements it, if that package has one.
    """
    name: str
    class_name: str
    description: str
    paper: str
    defaults: dict[str, Any] = field(default_factory=dict)
    num_betas: int = 0
    param_groups: Callable[[OptimInfo, nn.Module, dict[str, Any]], tuple[Any, dict[str, Any]]] = decay_groups
    bench_groups: Callable[[list[torch.Tensor]], Any] | None = None
    torch_equivalent: Baseline | None = None
    pytorch_optimizer: Baseline | None = None

    @property
    def cls(self) -> type:
        return getattr(importlib.import_module("adamlab.optim"), self.class_name)


_ROWS = [
    OptimInfo("sgd", "SGD", "Plain stochastic gradient descent", "Robbins & Monro 1951",
              torch_equivalent=Baseline("SGD", dict(lr=1e-3))),
    OptimInfo("momentum", "SGD", "SGD with heavy-ball momentum 0.9", "Polyak 1964", dict(momentum=0.9),
              torch_equivalent=Baseline("SGD", dict(lr=1e-3, momentum=0.9))),
    OptimInfo("nesterov", "SGD", "SGD with Nesterov momentum 0.9", "Nesterov 1983; Sutskever et al. 2013",
              dict(momentum=0.9, nesterov=True),
              torch_equivalent=Baseline("SGD", dict(lr=1e-3, momentum=0.9, nesterov=True))),
    OptimInfo("adagrad", "Adagrad", "Adagrad: per-coordinate step sizes from summed squared gradients",
              "Duchi, Hazan & Singer 2011", torch_equivalent=Baseline("Adagrad", dict(lr=1e-2))),
    OptimInfo("rmsprop", "RMSprop", "RMSprop: EMA of squared gradients", "Hinton, Coursera lecture 6e, 2012",
              torch_equivalent=Baseline("RMSprop", dict(lr=1e-2))),
    OptimInfo("adam", "Adam", "Adam", "Kingma & Ba 2015, arXiv:1412.6980", {}, 2,
              torch_equivalent=Baseline("Adam", dict(lr=1e-3))),
    OptimInfo("adamw", "AdamW", "Adam with decoupled weight decay", "Loshchilov & Hutter 2019, arXiv:1711.05101",
              {}, 2, torch_equivalent=Baseline("AdamW", dict(lr=1e-3, weight_decay=1e-2))),
    OptimInfo("amsgrad", "Adam", "AMSGrad: Adam with the running maximum of v", "Reddi, Kale & Kumar 2018",
              dict(amsgrad=True), 2, torch_equivalent=Baseline("Adam", dict(lr=1e-3, amsgrad=True))),
    OptimInfo("exadam", "EXAdam", "EXAdam: cross-moment debiasing and gradient acceleration",
              "Adly 2024, arXiv:2412.20302", {}, 2,
              pytorch_optimizer=Baseline("EXAdam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0))),
    OptimInfo("adamx", "AdamX", "AdamX: second-moment decay that degrades Adam to momentum SGD",
              "Zhu, Xiao & Min 2025, arXiv:2511.13465", {}, 2),
    OptimInfo("ademamix", "AdEMAMix", "AdEMAMix: a mixture of a fast and a very slow gradient EMA",
              "Pagliardini, Ablin & Grangier 2024, arXiv:2409.03137", {}, 3,
              pytorch_optimizer=Baseline("AdEMAMix", dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, eps=1e-8,
                                                          weight_decay=0.0))),
    OptimInfo("adamcm", "AdamCM", "Adam with critical momenta: a priority buffer of past momenta",
              "Malviya et al. 2023, arXiv:2307.09638", {}, 2),
    OptimInfo("adamcg", "AdamCG", "Adam with critical gradients: a priority buffer of past gradients",
              "McRae et al. 2022 (ICLR); Malviya et al. 2023", {}, 2),
    OptimInfo("coupledadam", "CoupledAdam", "Coupled Adam: one shared second moment across the vocabulary",
              "Stollenwerk & Stollenwerk 2025, arXiv:2502.08441", {}, 2,
              param_groups=coupled_groups, bench_groups=couple_first),
    OptimInfo("signum", "Signum", "Signum: the sign of a gradient EMA (momentum 0 is signSGD)",
              "Bernstein et al. 2018, arXiv:1802.04434"),
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
        >>> info.cls.__name__, info.num_betas, info.pytorch_optimizer.class_name
        ('AdEMAMix', 3, 'AdEMAMix')
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
    ``nn.Module``, the row's param-group policy (:attr:`OptimInfo.param_groups`) groups its parameters: weight
    decay is kept off biases and normalisation weights, and ``coupledadam`` couples the embedding matrices (a tied
    LM head counted once) without weight decay, as its paper trains them.

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
        params, kwargs = info.param_groups(info, model_or_params, kwargs)
    return info.cls(params, **kwargs)
