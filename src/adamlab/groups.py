"""Param-group helpers: weight decay only where it belongs, and the coupled embedding group of Coupled Adam.

Parameters are taken from ``model.named_parameters()``, so a tensor shared by two modules (a tied LM head) is
counted once, and frozen parameters (``requires_grad=False``) are left out. Empty groups are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

__all__ = ["embedding_parameters", "param_groups_weight_decay", "coupled_param_groups", "coupled_adam"]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == pat or fnmatchcase(name, pat) for pat in patterns)


def embedding_parameters(model: nn.Module) -> set[int]:
    """The ids of the weights of every :class:`torch.nn.Embedding` / :class:`torch.nn.EmbeddingBag` in ``model``
    (an LM head tied to one of them is the same tensor, so it is included)."""
    return {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def param_groups_weight_decay(model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = (), *,
                              decay_embeddings: bool = True) -> list[dict[str, Any]]:
    """Two groups in timm's ``param_groups_weight_decay`` style: no decay for biases (names ending in ``.bias`` or
    ``bias``), every parameter with fewer than 2 dimensions (norm weights, scales), the names or glob patterns in
    ``no_decay_names`` and, with ``decay_embeddings=False``, embedding matrices; ``weight_decay`` for the rest.

    Args:
        model: the model whose ``named_parameters()`` are grouped (frozen ones left out).
        weight_decay: the decay of the group that decays.
        no_decay_names: names or glob patterns kept out of decay as well.
        decay_embeddings: ``False`` keeps the embedding matrices out of decay too.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
        >>> groups = param_groups_weight_decay(model, 0.1)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(3, 0.0), (1, 0.1)]
        >>> opt = adamlab.AdamW(groups, lr=1e-3)
    """
    no_decay_names = tuple(no_decay_names)
    embeddings = set() if decay_embeddings else embedding_parameters(model)
    decay, no_decay = [], []
    for name, p in _named_trainable(model):
        if (p.ndim <= 1 or name == "bias" or name.endswith(".bias") or _matches(name, no_decay_names)
                or id(p) in embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def coupled_param_groups(model: nn.Module, weight_decay: float = 1e-2, *, embedding_names: Iterable[str] | None = None,
                         coupled_scale: float = 1.0, no_decay_names: Iterable[str] | None = None
                         ) -> list[dict[str, Any]]:
    """The groups of Coupled Adam: the embedding matrices (the weights of every ``nn.Embedding``, a tied LM head
    counted once) with ``coupled=True, weight_decay=0``; every other parameter plain AdamW (``coupled=False``) with
    ``weight_decay``.

    ``embedding_names`` (names or glob patterns) chooses the coupled tensors instead, e.g. an untied output matrix,
    or ``["transformer.wte.weight"]`` to couple only the token embedding as the reference's nanoGPT does.
    ``no_decay_names`` (names or patterns, e.g. ``["*.bias", "*norm*"]``) keeps some of the other parameters out of
    decay in a third, uncoupled group; by default all of them decay.

    Args:
        model: the model whose ``named_parameters()`` are grouped (frozen ones left out).
        weight_decay: decay of the uncoupled parameters (the embeddings get none).
        embedding_names: names or glob patterns of the tensors to couple (default: every ``nn.Embedding`` weight).
        coupled_scale: ``coupled_scale`` of the coupled group.
        no_decay_names: names or glob patterns of uncoupled parameters to keep out of decay.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50))
        >>> groups = coupled_param_groups(model, weight_decay=0.1)
        >>> [(len(g["params"]), g["coupled"], g["weight_decay"]) for g in groups]
        [(1, True, 0.0), (2, False, 0.1)]
        >>> opt = adamlab.CoupledAdam(groups, lr=6e-4, betas=(0.9, 0.95))
    """
    if embedding_names is None:
        coupled_ids = embedding_parameters(model)
        is_coupled = lambda name, p: id(p) in coupled_ids  # noqa: E731
    else:
        patterns = tuple(embedding_names)
        is_coupled = lambda name, p: _matches(name, patterns)  # noqa: E731
    no_decay_patterns = tuple(no_decay_names or ())
    coupled, decay, no_decay = [], [], []
    for name, p in _named_trainable(model):
        if is_coupled(name, p):
            coupled.append(p)
        elif _matches(name, no_decay_patterns):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": coupled, "coupled": True, "coupled_scale": coupled_scale, "weight_decay": 0.0},
              {"params": decay, "coupled": False, "weight_decay": weight_decay},
              {"params": no_decay, "coupled": False, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def coupled_adam(model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2, *,
                 embedding_names: Iterable[str] | None = None, coupled_scale: float = 1.0,
                 no_decay_names: Iterable[str] | None = None, **kwargs: Any):
    """A :class:`~adamlab.optim.CoupledAdam` over :func:`coupled_param_groups` of ``model`` in one call; other
    keyword arguments (``betas``, ``eps``, ``maximize``, ``foreach``, ...) go to the optimizer.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50))
        >>> opt = coupled_adam(model, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
        >>> [g["coupled"] for g in opt.param_groups]
        [True, False]
    """
    from .optim.coupled import CoupledAdam

    groups = coupled_param_groups(model, weight_decay, embedding_names=embedding_names, coupled_scale=coupled_scale,
                                  no_decay_names=no_decay_names)
    return CoupledAdam(groups, lr=lr, weight_decay=weight_decay, **kwargs)
