"""The papers' comparators that are not registry rows: a table of :class:`Comparator` rows, nothing else.

Each row names where its optimizer comes from, builds it over a model (or a parameter list), gives its tuning
search space (in the spec types and shared ranges of :mod:`adamlab.lab.spaces`, which holds the registry rows'
spaces, so :mod:`adamlab.lab.space` searches it as any registry row) and its recommended setting (trial 0), and
declares the capabilities the training loop reads:

* ``needs_closure``: the optimizer steps only through ``step(closure)`` (SAM evaluates the loss twice);
* ``train_eval``: the optimizer has ``train()``/``eval()`` modes (schedule-free: the parameters hold the
  evaluation point only in eval mode); the loop calls ``opt.train()`` before stepping and ``opt.eval()`` around
  every evaluation.

The optimizer :func:`build` returns carries its row's :class:`Capabilities` (read them with :func:`capabilities`;
an optimizer built elsewhere has none). ``signum`` is a registry row (:class:`adamlab.Signum`), listed here only as
a name the papers compare against (:data:`PAPER_COMPARATORS`).

Muon is used as its authors recommend: Muon on the 2-D hidden matrices, AdamW on everything else (embeddings, the
output head, biases, norms, convolution filters), as one :class:`CombinedOptimizer`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .spaces import ADAM_SPACE, BETA1, BETA2, LR, WEIGHT_DECAY, Float, LogFloat, OneMinusLog, Spec

__all__ = ["Capabilities", "Comparator", "COMPARATORS", "PAPER_COMPARATORS", "names", "get", "is_comparator",
           "available", "build", "capabilities", "CombinedOptimizer", "muon_split"]


@dataclass(frozen=True)
class Capabilities:
    """What the training loop must do for an optimizer (the defaults: nothing special)."""
    needs_closure: bool = False
    train_eval: bool = False


NONE = Capabilities()


@dataclass(frozen=True)
class Comparator:
    """One comparator: its maker, search space, recommended setting (create-time keyword names) and capabilities."""
    name: str
    description: str
    paper: str
    source: str
    make: Callable[[Any, dict[str, Any]], Optimizer]
    search_space: dict[str, Spec] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    capabilities: Capabilities = NONE
    #: what must import, ``"module"`` or ``"module:attribute"`` (a missing one leaves the comparator out)
    requires: tuple[str, ...] = ()
    #: the optimizer classes this comparator builds, for a test or a report (the combined one: both)
    optimizer: str = ""


# ---------------------------------------------------------------------- helpers shared by the makers
def _betas(kw: dict[str, Any], default: tuple[float, ...]) -> dict[str, Any]:
    """``beta1``/``beta2`` keywords folded into ``betas``."""
    kw = dict(kw)
    betas = list(kw.pop("betas", default))
    for i in range(len(betas)):
        if f"beta{i + 1}" in kw:
            betas[i] = float(kw.pop(f"beta{i + 1}"))
    kw["betas"] = tuple(betas)
    return kw


def _decay_groups(model_or_params: Any, weight_decay: float) -> Any:
    """As the registry builds: no weight decay on biases and norm weights of a model (a parameter list as given)."""
    if isinstance(model_or_params, nn.Module):
        if weight_decay:
            from adamlab.groups import param_groups_weight_decay

            return param_groups_weight_decay(model_or_params, weight_decay)
        return model_or_params.parameters()
    return model_or_params


def _make_sam(model_or_params: Any, params: dict[str, Any]) -> Optimizer:
    from adamlab import SAM, Adam

    kw = _betas(params, (0.9, 0.999))
    ps = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    return SAM(ps, Adam, **kw)


def _make_adafactor(model_or_params: Any, params: dict[str, Any]) -> Optimizer:
    kw = dict(params)
    wd = float(kw.pop("weight_decay", 0.0))
    groups = _decay_groups(model_or_params, wd)
    if not isinstance(model_or_params, nn.Module):
        kw["weight_decay"] = wd
    return torch.optim.Adafactor(groups, **kw)


def _make_schedulefree(model_or_params: Any, params: dict[str, Any]) -> Optimizer:
    import schedulefree

    kw = _betas(params, (0.9, 0.999))
    wd = float(kw.pop("weight_decay", 0.0))
    groups = _decay_groups(model_or_params, wd)
    if not isinstance(model_or_params, nn.Module):
        kw["weight_decay"] = wd
    opt = schedulefree.AdamWScheduleFree(groups, **kw)
    opt.train()  # (x = y = z at the start: nothing moves) a loop that knows no modes can still step it
    return opt


# ---------------------------------------------------------------------- Muon + AdamW
def muon_split(model_or_params: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(Muon's parameters, AdamW's parameters): Muon takes the 2-D hidden matrices; AdamW takes embeddings (and a
    head tied to one), the output head (the model's last ``nn.Linear``), and every parameter that is not 2-D
    (biases, norm weights, convolution filters). Of a plain parameter list, Muon takes the 2-D tensors."""
    if not isinstance(model_or_params, nn.Module):
        ps = [p for p in model_or_params if p.requires_grad]
        return [p for p in ps if p.ndim == 2], [p for p in ps if p.ndim != 2]
    from adamlab.groups import embedding_parameters

    model = model_or_params
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    outside = embedding_parameters(model) | ({id(linears[-1].weight)} if linears else set())
    muon, adamw, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (muon if p.ndim == 2 and id(p) not in outside else adamw).append(p)
    return muon, adamw


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, as one ``torch.optim.Optimizer``: ``param_groups`` are theirs
    (the same dicts, so an LR scheduler reaches every part), ``state`` is their states merged, ``step(closure)``
    evaluates the closure once and steps every part, ``state_dict()`` holds one state dict per part by name.

    Example::

        >>> muon, rest = muon_split(model)
        >>> opt = CombinedOptimizer({"muon": torch.optim.Muon(muon), "adamw": torch.optim.AdamW(rest)})
    """

    def __init__(self, parts: Mapping[str, Optimizer]) -> None:
        if not parts:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.parts = dict(parts)
        super().__init__(self._groups(), {})

    def _groups(self) -> list[dict[str, Any]]:
        return [g for o in self.parts.values() for g in o.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        merged: dict = {}
        for o in self.parts.values():
            merged.update(o.state)
        return merged

    @state.setter
    def state(self, value: Any) -> None:  # torch's __init__ sets an empty one: the parts keep theirs
        pass

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "parts" in self.__dict__ and any(param_group is g for g in self._groups()):
            super().add_param_group(param_group)  # (torch's __init__ registering the parts' own groups)
            return
        raise NotImplementedError("add a param group to one of the parts (CombinedOptimizer.parts[name])")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.parts.values():
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": {name: o.state_dict() for name, o in self.parts.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("parts") if isinstance(state_dict, Mapping) else None
        if not isinstance(saved, Mapping) or set(saved) != set(self.parts):
            raise ValueError(f"CombinedOptimizer.load_state_dict: expected the parts {sorted(self.parts)}, got "
                             f"{sorted(saved) if isinstance(saved, Mapping) else type(state_dict).__name__}")
        for name, o in self.parts.items():
            o.load_state_dict(saved[name])
        self.param_groups = self._groups()

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(f"{k}={type(o).__name__}" for k, o in self.parts.items()) + ")"


def _make_muon(model_or_params: Any, params: dict[str, Any]) -> Optimizer:
    kw = dict(params)
    adamw_kw = dict(lr=kw.pop("adamw_lr"), betas=(kw.pop("adamw_beta1", 0.9), kw.pop("adamw_beta2", 0.95)),
                    eps=kw.pop("adamw_eps", 1e-8))
    wd = float(kw.pop("weight_decay", 0.0))
    muon_ps, adamw_ps = muon_split(model_or_params)
    parts: dict[str, Optimizer] = {}
    if muon_ps:
        parts["muon"] = torch.optim.Muon(muon_ps, weight_decay=wd, **kw)
    if adamw_ps:  # decay on the matrices it gets (embeddings, head, filters), not on biases and norms
        groups = [{"params": [p for p in adamw_ps if p.ndim >= 2], "weight_decay": wd},
                  {"params": [p for p in adamw_ps if p.ndim < 2], "weight_decay": 0.0}]
        parts["adamw"] = torch.optim.AdamW([g for g in groups if g["params"]], **adamw_kw)
    return CombinedOptimizer(parts)


# ---------------------------------------------------------------------- the table
COMPARATORS: list[Comparator] = [
    Comparator(
        "sam", "SAM around Adam: the gradient at θ + ρ·g/‖g‖, Adam's step from θ",
        "Foret et al. 2021, arXiv:2010.01412", "adamlab.SAM(base_optimizer_cls=adamlab.Adam)", _make_sam,
        dict(ADAM_SPACE, rho=LogFloat(1e-3, 0.5)),
        dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, rho=0.05),
        Capabilities(needs_closure=True), optimizer="SAM"),
    Comparator(
        "adafactor", "Adafactor: factored second moments, relative step sizes",
        "Shazeer & Stern 2018, arXiv:1804.04235", "torch.optim.Adafactor", _make_adafactor,
        dict(lr=LR, beta2_decay=Float(-1.0, -0.5), weight_decay=WEIGHT_DECAY),
        dict(lr=1e-2, beta2_decay=-0.8, weight_decay=0.0), requires=("torch.optim:Adafactor",),
        optimizer="Adafactor"),
    Comparator(
        "muon", "Muon on the 2-D hidden matrices, AdamW on embeddings, head, biases and norms",
        "Jordan et al. 2024 (kellerjordan.github.io/posts/muon)", "torch.optim.Muon + torch.optim.AdamW", _make_muon,
        dict(lr=LogFloat(1e-4, 1.0), momentum=OneMinusLog(1e-3, 0.5), adamw_lr=LogFloat(1e-5, 1e-1),
             weight_decay=WEIGHT_DECAY),
        dict(lr=0.02, momentum=0.95, adamw_lr=3e-4, weight_decay=0.0), requires=("torch.optim:Muon",),
        optimizer="Muon+AdamW"),
    Comparator(
        "schedulefree", "Schedule-Free AdamW: no LR schedule, an interpolated average as the evaluation point",
        "Defazio et al. 2024, arXiv:2405.15682", "schedulefree.AdamWScheduleFree", _make_schedulefree,
        dict(lr=ADAM_SPACE["lr"], beta1=BETA1, beta2=BETA2, weight_decay=WEIGHT_DECAY),
        dict(lr=0.0025, beta1=0.9, beta2=0.999, weight_decay=0.0),
        Capabilities(train_eval=True), requires=("schedulefree",), optimizer="AdamWScheduleFree"),
]
_BY_NAME = {row.name: row for row in COMPARATORS}

#: every optimizer the papers compare against that adamlab does not ship as a research optimizer: the registry's
#: ``signum`` and the rows above
PAPER_COMPARATORS = ("adafactor", "signum", "sam", "muon", "schedulefree")


def names() -> list[str]:
    """Every comparator row's name (installed or not)."""
    return list(_BY_NAME)


def is_comparator(name: str) -> bool:
    return isinstance(name, str) and name.lower() in _BY_NAME


def get(name: str) -> Comparator:
    key = name.lower() if isinstance(name, str) else name
    if key not in _BY_NAME:
        raise ValueError(f"Unknown comparator {name!r}; choose one of: {', '.join(_BY_NAME)}")
    return _BY_NAME[key]


def available(name: str) -> tuple[bool, str]:
    """Whether the comparator can be built here, and why not."""
    row = get(name)
    for need in row.requires:
        mod, _, attr = need.partition(":")
        try:
            found = importlib.import_module(mod)
        except ImportError as err:
            return False, f"{row.name} needs the {mod!r} package ({err})"
        if attr and not hasattr(found, attr):
            return False, f"{row.name} needs {mod}.{attr} (torch {torch.__version__} has none)"
    return True, ""


def build(name: str, model_or_params: nn.Module | Iterable, params: dict[str, Any]) -> Optimizer:
    """Build comparator ``name`` over a model or parameter list with the keyword settings ``params`` (the search
    space's names; a setting not given takes the row's recommended one, as a registry row's default does); the
    optimizer carries the row's capabilities."""
    row = get(name)
    ok, why = available(name)
    if not ok:
        raise ImportError(why)
    opt = row.make(model_or_params, {**row.defaults, **params})
    opt.lab_capabilities = row.capabilities  # type: ignore[attr-defined]
    return opt


def capabilities(opt: Any) -> Capabilities:
    """What the training loop must do for ``opt``: its row's capabilities, or none for any other optimizer."""
    caps = getattr(opt, "lab_capabilities", None)
    return caps if isinstance(caps, Capabilities) else NONE
