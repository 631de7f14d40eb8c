"""The engine every adamlab optimizer stands on.

An optimizer module supplies only its maths:

* ``_init_state(p, group) -> dict``: the state tensors of a new parameter (``step`` is added here);
* ``_scalars(group, step) -> Scalars``: the per-step scalars (bias corrections, schedules), computed once per step
  in float64 Python arithmetic, with the keys its ``Scalars`` TypedDict declares;
* ``_constants(group) -> Constants``: the switches that change the shape of the computation (``amsgrad``, ...),
  hashable Python values, with the keys its ``Constants`` TypedDict declares;
* ``_rule(o, p, g, st, s, c)``: the update, written once against the operation vocabulary ``o``
  (:class:`~adamlab.optim._contract.Ops`), in place on ``p`` and the state tensors in ``st``;
* ``_weight_decay`` (and ``_decay_rounding``): how λ enters the update. The engine applies it, and ``maximize``,
  before the rule (:func:`adamlab.optim._contract.compose`), so a rule holds only its maths;
* optionally ``_prepare(group, params, grads) -> dict``: scalars that need the whole group (AdamCM's synced
  priority), returned as 0-d tensors;
* ``_validate(group)``: argument checks, raising :class:`ValueError` that names the argument.

The engine then provides three implementations of the same rule, selected by keyword-only flags:
the plain per-tensor loop (``foreach=False``, the ground truth), the multi-tensor path (``foreach=True``) and the
compiled path (``compiled=True``: ``torch.compile`` of the per-tensor loop over chunks of flattened tensors, with
every per-step scalar passed in one tensor so that a scheduler changing the learning rate never recompiles; one
graph per optimizer configuration, see :mod:`adamlab.optim._compiled`).

A DTensor parameter (FSDP2, tensor parallelism) is stepped on its local shard, by every path: its state tensors are
DTensors placed like it (see ``_state_layout``), the rule runs on their local tensors, and its reductions over a
tensor's elements (``o.norm``, ``o.mean``) are taken over all shards (:mod:`adamlab.optim._dist`).

What a step reuses is cached per param group in a :class:`_Plan` (the parameters with gradients, their state, their
(device, dtype) parts, the flattened tensors of the compiled path), checked by identity every step and rebuilt
when anything changed. Every parameter's ``step`` is a 0-d float32 tensor, as in ``torch.optim``; those of a group
are views into one tensor, so a step increments and reads them all in two operations.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _compiled, _dist, _ops
from ._contract import Decay, check_declared, compose, engine_constants, engine_scalars
from ._lowp import LowPrecision, resolve_state_dtype

__all__ = ["AdamlabOptimizer", "compiler_available"]

_IMPLEMENTATIONS = ("loop", "foreach", "compiled")
_AUTO_COMPILE_NUMEL = 1 << 20  # the default path compiles a bucket only from this many elements on
_compiler_state: dict[str, Any] = {"ok": None}


def compiler_available() -> bool:
    """Whether ``torch.compile`` can build kernels here (checked once per process, by compiling a tiny graph)."""
    if _compiler_state["ok"] is None:
        if os.environ.get("ADAMLAB_NO_COMPILE"):
            _compiler_state["ok"] = False
        else:
            try:
                fn = torch.compile(lambda x: x.mul_(2.0), fullgraph=True, dynamic=False)
                x = torch.ones(4)
                fn(x)
                _compiler_state["ok"] = bool(torch.all(x == 2.0))
            except Exception as err:  # no C++ compiler, unsupported platform, ...
                warnings.warn(f"adamlab: torch.compile is unavailable ({type(err).__name__}: {err}); "
                              "using the multi-tensor path", RuntimeWarning, stacklevel=3)
                _compiler_state["ok"] = False
    return bool(_compiler_state["ok"])


#: The keyword-only implementation options every optimizer accepts (beyond its hyperparameters):
#: ``foreach`` (True: multi-tensor path, False: plain loop), ``compiled`` (True: torch.compile path),
#: ``state_dtype`` (per-state storage dtype policy) and ``param_update`` (rounding of bf16/fp16 parameters).
_IMPL_DEFAULTS: dict[str, Any] = dict(foreach=None, compiled=None, state_dtype=None, param_update="nearest")


class AdamlabOptimizer(Optimizer):
    """Base class: param groups, state, validation and the three implementations of one update rule.

    Every adamlab optimizer is a subclass and takes its hyperparameters (documented on its own class) plus the
    keyword-only implementation options below, which are the same for every optimizer. Every implementation gives
    the numbers of the plain loop (float64: to 1e-12 relative), so an option changes speed and memory, not the
    maths. The docs page "Implementation options" describes them at length.

    Args:
        params: an iterable of tensors, of param-group dicts or of ``(name, tensor)`` pairs.
        defaults: the optimizer's hyperparameters (its subclass builds them from its own arguments).
        **impl: the keyword-only implementation options below; any other name raises :class:`TypeError`.

    Keyword Args:
        foreach (bool | None): ``False``: the plain per-tensor loop (the readable ground truth); ``True``: the
            multi-tensor path (``torch._foreach_*`` kernels).
        compiled (bool | None): ``True``: ``torch.compile`` of the same rule (C++ on a CPU, Triton on a GPU), with
            the learning rate and every per-step scalar passed as tensors, so a scheduler never recompiles; where
            no compiler works, the multi-tensor path. Exclusive with ``foreach=True``. Neither given: compiled for
            buckets of at least 2**20 elements where a compiler works, else multi-tensor; the environment variable
            ``ADAMLAB_IMPL=loop|foreach|compiled`` overrides this default for the process.
        state_dtype (torch.dtype | Mapping[str, torch.dtype] | None): storage dtype of the state (the maths runs in
            float32 at least): a dtype applies to every state tensor shaped like its parameter; a mapping chooses
            per state name (``"*"`` for the rest). A name the optimizer does not keep raises :class:`ValueError`.
        param_update (str): how bf16/fp16 parameters take the float32 update: ``"nearest"`` (default: round to
            nearest), ``"kahan"`` (compensated: the rounding error is kept in a ``kahan_comp`` state tensor and
            added to the next update) or ``"stochastic"`` (bf16 only: unbiased stochastic rounding).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = adamlab.Adam(model.parameters(), lr=1e-3, foreach=False)
        >>> opt.implementation
        'loop'
        >>> opt = adamlab.AdamW(model.parameters(), state_dtype={"exp_avg_sq": torch.bfloat16})
    """

    _flatten_ok: bool = True  # whether the rule is purely elementwise over the param's shape
    #: how each state tensor is laid out against its parameter: the number of leading dims before the parameter's
    #: own (0: shaped like it, the default for keys not listed), or None for a tensor of its own shape (priorities,
    #: counts). A sharded parameter's state follows it: sharded on the same dims (shifted by the leading ones), the
    #: None ones the same on every rank
    _state_layout: dict[str, int | None] = {}
    #: group keys a param group keeps through ``load_state_dict`` (what the class is, like AdamW's decoupled decay)
    _kept_on_load: tuple[str, ...] = ()
    #: how the group's weight decay λ enters the update, applied by the engine before the rule: ``"l2"``
    #: (g ← g + λθ), ``"decoupled"`` (θ ← θ(1 − ηλ)) or ``"rule"`` (the rule applies ``s["weight_decay"]``
    #: itself); per group through :meth:`_decay`
    _weight_decay: ClassVar[Decay] = "l2"
    #: the rounding of decoupled decay: ``"mul"`` θ·(1 − ηλ), or ``"axpy"`` θ + (−ηλ)·θ where the reference computes
    #: it so (one switch, for an optimizer whose reference rounds differently)
    _decay_rounding: ClassVar[str] = "mul"
    #: the declared keys of ``_scalars`` and ``_constants`` (TypedDicts), checked when a plan is built
    Scalars: ClassVar[type | None] = None
    Constants: ClassVar[type | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the update every path runs: the engine's cross-cutting steps, then the class's own maths
        cls._update = staticmethod(compose(cls._rule, cls._decay_rounding))

    def __init__(
        self,
        params: Iterable,
        defaults: dict[str, Any],
        **impl: Any,
    ) -> None:
        if isinstance(defaults.get("betas"), list):  # a list from a config file is the tuple torch.optim stores
            defaults = {**defaults, "betas": tuple(defaults["betas"])}
        unknown = sorted(set(impl) - set(_IMPL_DEFAULTS))
        if unknown:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {unknown[0]!r}")
        opts = {**_IMPL_DEFAULTS, **impl}
        foreach, compiled = opts["foreach"], opts["compiled"]
        state_dtype, param_update = opts["state_dtype"], opts["param_update"]
        if foreach is not None and not isinstance(foreach, bool):
            raise TypeError(f"foreach must be a bool or None, got {type(foreach).__name__}")
        if compiled is not None and not isinstance(compiled, bool):
            raise TypeError(f"compiled must be a bool or None, got {type(compiled).__name__}")
        if compiled and foreach:
            raise ValueError("foreach=True and compiled=True are exclusive: pick one implementation")
        if compiled:
            self.implementation = "compiled" if compiler_available() else "foreach"
        elif foreach is not None:
            self.implementation = "foreach" if foreach else "loop"
        elif compiled is False:
            self.implementation = "foreach"
        else:
            self.implementation = os.environ.get("ADAMLAB_IMPL") or "auto"
            if self.implementation not in _IMPLEMENTATIONS + ("auto",):
                raise ValueError(f"ADAMLAB_IMPL must be one of {_IMPLEMENTATIONS}, got {self.implementation!r}")
        self.state_dtype = resolve_state_dtype(state_dtype)
        self.lowp = LowPrecision(param_update)
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, of dicts or of (name, tensor) pairs, "
                            "not a single tensor")
        # the settings are checked before the parameters are looked at, as torch.optim checks them: a bad
        # hyperparameter is a ValueError naming it, whatever ``params`` holds
        self._validate({**defaults, "params": []})
        super().__init__(params, defaults)
        self._check_state_dtype_names()

    def _check_state_dtype_names(self) -> None:
        """A ``state_dtype`` mapping names only state this optimizer keeps (a typo would do nothing, silently)."""
        names = {k for k in self.state_dtype if k != "*"}
        if not names:
            return
        keys = {"kahan_comp"}
        for group in self.param_groups:
            for p in group["params"][:1]:
                meta = torch.empty(tuple(p.shape), dtype=p.dtype if p.is_floating_point() else torch.float32,
                                   device="meta")
                keys |= set(self._init_state(meta, _plain(group)))
        unknown = sorted(names - keys)
        if unknown:
            raise ValueError(f"Invalid state_dtype: {type(self).__name__} keeps no state {unknown[0]!r} with these "
                             f"settings (its state: {', '.join(sorted(keys - {'kahan_comp'}))}; '*' for all)")

    # ------------------------------------------------------------------ hooks for optimizer modules
    def _validate(self, group: dict) -> None:  # pragma: no cover - every optimizer overrides it
        pass

    def _init_state(self, p: Tensor, group: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def _scalars(self, group: dict, step: int) -> dict[str, float]:
        raise NotImplementedError

    def _constants(self, group: dict) -> dict[str, Any]:
        return {}

    def _decay(self, group: dict) -> Decay:
        """How this group's weight decay enters the update (default: the class's ``_weight_decay``)."""
        return self._weight_decay

    def _prepare(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> dict[str, Tensor]:
        return {}

    @staticmethod
    def _rule(o, p, g, st, s, c) -> None:
        raise NotImplementedError

    def _settle_state(self, st: dict[str, Any]) -> None:
        """Put a parameter's state in the form the optimizer steps it in, before a plan is built on it (default:
        nothing to do; AdamCM/AdamCG place their buffers where the compiled step can pass their rows)."""

    def _compiled_hook(self, runner: _compiled.ChunkRunner) -> Any:
        """Per-step work of the compiled path before the chunks' graphs, for an optimizer that needs it (AdamCM's
        buffer offers): an object with ``before(grads, scalars)``, called with the runner's flattened gradients, and
        ``undo(stepped)``, called if a graph then fails, with the tensors (indices in the runner's order) that the
        graphs before it stepped; None (the default) for none."""
        return None

    def _lazy_keys(self, group: dict) -> tuple[str, ...]:
        """State keys a group's settings may call for after its tensors' state was made (SGD's momentum buffer, when
        momentum is switched on mid-run, as ``torch.optim.SGD`` makes it when first needed): made then, from
        ``_init_state``, with the tensor's ``step`` restarted at 0 (default: none)."""
        return ()

    def _flattens(self, c: dict[str, Any]) -> bool:
        """Whether the compiled path may flatten the tensors of a group with constants ``c`` (default: the class's
        ``_flatten_ok``); a rule that reduces over a dimension of some groups' tensors says so per group."""
        return self._flatten_ok

    def _extra_reads(self, group: dict, p: Tensor, state: dict[str, Any]) -> int:
        """Bytes one step reads for ``p`` beyond the generic memory-traffic rule (``p`` and its gradient read, ``p``
        written, every state tensor shaped like ``p`` read and written once, a ``[C, *p.shape]`` buffer read whole
        and one slot written), for the bandwidth model of ``adamlab speed`` (default: none)."""
        return 0

    # ------------------------------------------------------------------ torch.optim contract
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            if not (p.is_floating_point() or p.is_complex()):
                self.param_groups.pop()
                raise TypeError(f"{type(self).__name__}: parameter {i} of param group {len(self.param_groups)} is a "
                                f"{p.dtype} tensor; only floating-point parameters can be optimised")
        try:
            self._validate(group)
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)  # torch adds it for its own steps; adamlab has no such flag, and
        # loading, copying or unpickling must give back the dict that was saved
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("state_dtype", {})
        self.__dict__.setdefault("lowp", LowPrecision("nearest"))
        missing = self._missing_group_defaults()
        for group in self.param_groups:
            for k, v in missing.items():
                group.setdefault(k, v)

    def _missing_group_defaults(self) -> dict[str, Any]:
        """What a setting missing from a saved param group (an older state dict, or torch.optim's without
        adamlab's extra settings) means: the class's default for it, which behaves as before the setting existed
        (``maximize`` False, ...), as torch.optim's classes fill it; not what this optimizer was made with."""
        sig = inspect.signature(type(self).__init__).parameters
        return {k: sig[k].default if k in sig and sig[k].default is not inspect.Parameter.empty else v
                for k, v in self.defaults.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state exactly: every state tensor keeps its saved dtype (torch would cast it to the parameter's),
        moves to the parameter's device, then takes this optimizer's ``state_dtype`` policy where it has one.

        Everything is checked before anything changes (a :class:`ValueError` naming the parameter and the state key,
        and the optimizer exactly as before): the groups' settings, the state keys this optimizer keeps with those
        settings, every state tensor's shape, and ``step``."""
        self._check_state_dict(state_dict)
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        kept = [{k: g[k] for k in self._kept_on_load if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for g, own in zip(self.param_groups, kept):
            g.update(own)
        self.__dict__["_plans"] = {}
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            if pid not in saved_state:
                continue
            st = self.state[p]
            if "step" not in st:  # torch.optim.SGD keeps no step: a saved momentum buffer is not a first step's
                st["step"] = torch.tensor(1.0 if st else 0.0, dtype=torch.float32)
            for k, v in saved_state[pid].items():
                if not isinstance(v, Tensor):
                    continue
                if k == "step":
                    if _dist.is_dtensor(v):
                        st[k] = _dist.to_layout(v, p, None)
                    continue
                v = _dist.to_layout(v, p, self._layout(k))
                st[k] = v.to(device=_dist.local(p).device, dtype=self._state_dtype(k, v, p), copy=True)

    def _layout(self, key: str) -> int | None:
        return self._state_layout.get(key, 0)

    def _check_state_dict(self, state_dict: Any) -> None:
        """Raise ValueError (TypeError for a wrong type) if ``state_dict`` cannot load into this optimizer."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("state"), Mapping) \
                or not isinstance(state_dict.get("param_groups"), (list, tuple)):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' "
                             f"(what state_dict() returns), got {type(state_dict).__name__}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: {len(saved_groups)} param groups saved, this optimizer has "
                             f"{len(self.param_groups)}")
        merged = []
        for gi, (saved, ours) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, Mapping) or len(saved.get("params", ())) != len(ours["params"]):
                raise ValueError(f"{name}.load_state_dict: param group {gi} saved with another number of "
                                 "parameters")
            group = {**self._missing_group_defaults(), **saved, "params": ours["params"]}
            group.update({k: ours[k] for k in self._kept_on_load if k in ours})
            try:
                self._validate(group)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{name}.load_state_dict: param group {gi}: {err}") from None
            merged.append(group)
        saved_state = state_dict["state"]
        for group, saved in zip(merged, saved_groups):
            for pid, p in zip(saved["params"], group["params"]):
                if pid in saved_state:
                    self._check_param_state(pid, p, saved_state[pid], group)

    def _check_param_state(self, pid: Any, p: Tensor, st: Any, group: dict) -> None:
        where = f"{type(self).__name__}.load_state_dict: parameter {pid}"
        if not isinstance(st, Mapping):
            raise ValueError(f"{where}: state is a {type(st).__name__}, expected a dict of tensors")
        meta = torch.empty(tuple(p.shape), dtype=torch.float32 if torch.is_complex(p) else p.dtype, device="meta")
        expected = {k: v for k, v in self._init_state(meta, group).items() if isinstance(v, Tensor)}
        allowed = set(expected) | {"step", "kahan_comp"}
        unknown = sorted(str(k) for k in st if k not in allowed)
        if unknown:
            raise ValueError(f"{where}: state key {unknown[0]!r} is not {type(self).__name__}'s (it keeps "
                             f"{sorted(expected)} with these settings): a state dict of another optimizer?")
        for k in expected:
            if k not in st and k not in self._lazy_keys(group):
                raise ValueError(f"{where}: state key {k!r} is missing")
        for k, v in st.items():
            if k == "step":
                step = float(v) if isinstance(v, (Tensor, int, float)) and not isinstance(v, bool) \
                    and (not isinstance(v, Tensor) or v.numel() == 1) else None
                if step is None or not math.isfinite(step) or step < 0:
                    raise ValueError(f"{where}: state key 'step' is {v!r}, expected a count >= 0")
                continue
            if not isinstance(v, Tensor):
                raise ValueError(f"{where}: state key {k!r} is {type(v).__name__}, expected a tensor")
            want = tuple(expected[k].shape) if k in expected else tuple(p.shape)
            if tuple(v.shape) != want:
                raise ValueError(f"{where}: state key {k!r} has shape {list(v.shape)}, expected {list(want)}")

    def _state_dtype(self, key: str, value: Tensor, p: Tensor) -> torch.dtype:
        if not value.is_floating_point():
            return value.dtype
        if key == "kahan_comp":
            return p.dtype
        if key in self.state_dtype:
            return self.state_dtype[key]
        if "*" in self.state_dtype and value.shape[value.dim() - p.dim():] == p.shape:
            return self.state_dtype["*"]
        return value.dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    # ------------------------------------------------------------------ the engine
    def _new_state(self, p: Tensor, group: dict) -> dict[str, Tensor]:
        """A new parameter's state; for a DTensor parameter made on its local shard, then laid out like it."""
        sharding = _dist.sharding_of(p)
        lp = _stepped(p)
        st: dict[str, Tensor] = {"step": torch.tensor(0.0, dtype=torch.float32)}
        for k, v in self._init_state(lp, group).items():
            st[k] = v.to(self._state_dtype(k, v, lp)) if isinstance(v, Tensor) else v
        if self.lowp.mode == "kahan" and p.dtype in (torch.bfloat16, torch.float16):
            st["kahan_comp"] = torch.zeros_like(lp, memory_format=torch.preserve_format)
        if torch.is_complex(p):  # stored complex, as torch.optim stores it; stepped as its real view
            for k, v in st.items():
                if isinstance(v, Tensor) and k != "step" and self._layout(k) is not None:
                    st[k] = torch.view_as_complex(v)
        if sharding is not None:
            self._settle_state(st)
            for k, v in st.items():
                lead = self._layout(k) if k != "step" else None
                if isinstance(v, Tensor) and lead is not None:
                    st[k] = sharding.wrap(v, lead)
        return st

    def _settle(self, p: Tensor, st: dict[str, Any]) -> None:
        """:meth:`_settle_state` on the local shards of a DTensor parameter's state (laid out again where it made a
        new tensor)."""
        sharding = _dist.sharding_of(p)
        if sharding is None:
            self._settle_state(st)
            return
        locals_ = {k: _dist.local(v) if isinstance(v, Tensor) else v for k, v in st.items()}
        before = dict(locals_)
        self._settle_state(locals_)
        for k, v in locals_.items():
            if v is not before.get(k):
                lead = self._layout(k)
                st[k] = sharding.wrap(v, lead) if isinstance(v, Tensor) and lead is not None else v

    def _plan(self, group: dict, params: list[Tensor]) -> _Plan:
        """What every step of this group reuses; rebuilt when the parameters with gradients, their state
        tensors or their storage change (cheap identity checks, so it can never go stale silently)."""
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(id(group))
        lazy = self._lazy_keys(group)
        if plan is not None and plan.matches(group, params, self.state) and all(k in plan.states[0] for k in lazy):
            return plan
        name = type(self).__name__
        for p in params:
            if torch.is_complex(p) and _dist.is_dtensor(p):
                raise RuntimeError(f"{name} does not support complex DTensor parameters")
            st = self.state[p]
            if not st:
                self.state[p] = st = self._new_state(p, group)
            elif any(k not in st for k in lazy):
                fresh = self._new_state(p, group)
                st.update({k: v for k, v in fresh.items() if k in lazy and k not in st}, step=fresh["step"])
            self._settle(p, st)
        plan = plans[id(group)] = _Plan(self, group, params)
        return plan

    # under the user's own torch.compile a step breaks the graph here and runs as it does outside: dynamo does not
    # keep the per-group plans across its traces (every step would rebuild them), and it cannot trace the chunks'
    # own compiled graphs (the compiled path fell back to the multi-tensor one)
    @_compiled.graph_break
    def _step_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        for g in grads:  # every step (gradients are new tensors each step), before any state is created
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        settings = _plain(group)  # (tensor or numpy hyperparameters as numbers)
        self._validate(settings)  # a group edited since the last step is checked again, before anything changes
        plan = self._plan(group, params)
        extra = self._prepare(settings, params, grads)
        if plan.sharded or plan.complex:  # the rule steps the local shards, complex tensors as their real views
            grads = [_stepped(g if not _dist.is_dtensor(p) else _local_grad(g, p)) for p, g in zip(params, grads)]
        own = self._constants(settings)
        c = {**own, **engine_constants(settings, self._decay(settings))}
        decay_scalars = engine_scalars(settings, c["decay"], self._decay_rounding)
        plan.steps.add_(1)  # every parameter's ``step`` is a 0-d view into this one tensor
        values = plan.steps.tolist()
        uniform = values.count(values[0]) == len(values)
        for part in plan.parts:
            vals = values if uniform else [values[i] for i in part.idx]
            first = vals[0]
            if uniform or vals.count(first) == len(vals):
                buckets = [(first, None)]  # the usual case: one step count, reuse the part's prepared lists
            else:
                by_step: dict[float, list[int]] = defaultdict(list)
                for j, v in enumerate(vals):
                    by_step[v].append(j)
                buckets = list(by_step.items())
            for step, sub in buckets:
                s = dict(self._scalars(settings, int(step)))
                if not plan.checked:  # the rule's contract, once per plan: the keys its types declare
                    check_declared(type(self).__name__, "_scalars keys", self.Scalars, s)
                    check_declared(type(self).__name__, "_constants keys", self.Constants, own)
                    plan.checked = True
                s.update(decay_scalars)
                s.update(extra)
                self._run(part, sub, grads, s, c)

    def _run(self, part: _Part, sub: list[int] | None, grads: list[Tensor], s: dict, c: dict) -> None:
        """Step the tensors of ``part`` (those at ``sub``, or all) on the path :meth:`_path` picks."""
        if sub is None:
            ps, sts, gs = part.ps, part.sts, [grads[i] for i in part.idx]
        else:
            ps, sts = [part.ps[j] for j in sub], [part.sts[j] for j in sub]
            gs = [grads[part.idx[j]] for j in sub]
        path = self._path(part, ps if sub is not None else None, s, c)
        if path == "compiled":
            eager = self._run_compiled_part(part, sub, ps, gs, sts, s, c)
            self._run_loop(part.T, ps, gs, sts, s, c, part.keys, eager)
        elif path == "foreach" and not part.needs_cast:
            st_lists = part.st_lists if sub is None else {k: [st[k] for st in sts] for k in part.keys}
            per = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in s.items()}
            type(self)._update(part.F, ps, gs, st_lists, per, c)
        else:
            self._run_loop(part.T, ps, gs, sts, s, c, part.keys, range(len(ps)))

    def _path(self, part: _Part, ps: list[Tensor] | None, s: dict, c: dict) -> str:
        """The implementation that steps ``part`` (or its tensors ``ps``) now: the optimizer's, with ``"auto"``
        resolved (compiled for big buckets where a compiler works and fusing pays; compiling costs seconds, which
        small models never win back), and a sharded reduction kept off the compiled path."""
        path = self.implementation
        if path == "auto":
            big = (part.numel if ps is None else sum(p.numel() for p in ps)) >= _AUTO_COMPILE_NUMEL
            path = "compiled" if big and compiler_available() and self._fusion_pays(part, s, c) else "foreach"
        if path == "compiled" and part.sharding is not None and self._reduces(part, s, c):
            # a reduction over a sharded tensor is a collective, which every rank must issue in the same order: the
            # multi-tensor path issues one per reduction for the whole part, where the compiled chunks would issue
            # one per tensor, in an order that depends on the local shard sizes
            path = "foreach"
        return path

    def _run_loop(self, o, ps, gs, sts, s: dict, c: dict, keys, which) -> None:
        """The plain per-tensor loop (vocabulary ``o``) over the tensors at ``which`` (the ground truth; bf16/fp16
        and cast state through :class:`LowPrecision`)."""
        update, lowp = type(self)._update, self.lowp
        for i in which:
            lowp.apply(update, o, ps[i], gs[i], {k: sts[i][k] for k in keys}, s, c)

    def _run_compiled_part(self, part: _Part, sub, ps, gs, sts, s: dict, c: dict) -> list[int]:
        """The compiled step of the compilable tensors of ``ps``; returns the indices the loop must still step: the
        tensors the compiled graphs cannot take, and, if the compiler fails, every tensor its chunks did not step
        (the optimizer then stays on the multi-tensor path, with a warning)."""
        if sub is None:
            fast, eager = part.fast, part.eager
        else:
            fast = [i for i in range(len(ps)) if _compiled.compilable(ps[i], sts[i], part.keys)]
            eager = sorted(set(range(len(ps))) - set(fast))
        if not fast:
            return eager
        try:
            if len(fast) == len(ps):
                fps, fgs, fsts = ps, gs, sts
            else:
                fps, fgs, fsts = [ps[i] for i in fast], [gs[i] for i in fast], [sts[i] for i in fast]
            # the part's own tensors (``part.fast`` of them, the same every step): its runner is reused
            self._run_compiled(fps, fgs, fsts, s, c, part.keys, part.dtype, part.device,
                               part if sub is None else None, part.group)
        except Exception as err:
            failed = isinstance(err, _compiled.CompiledStepFailed)
            cause, done = (err.error, err.stepped) if failed else (err, ())
            if not _compiled.is_compiler_failure(cause):
                raise cause  # noqa: B904 - the chunk's own error, not the wrapper
            warnings.warn(f"adamlab: compiled step failed ({type(cause).__name__}); falling back to the "
                          "multi-tensor path", RuntimeWarning, stacklevel=5)
            self.implementation = "foreach"
            # the tensors of the chunks before the failing one have had this step: the rest, once
            stepped = {fast[k] for k in done}
            return [i for i in range(len(ps)) if i not in stepped]
        return eager

    def _fusion_pays(self, part: _Part, s: dict, c: dict) -> bool:
        """Whether compiling can beat the multi-tensor path: not when the rule is a single multi-tensor operation
        (plain SGD's ``p += -lr * g`` is already one pass over memory, and the compiled call costs more)."""
        return self._probe(part, s, c).calls > 1

    def _reduces(self, part: _Part, s: dict, c: dict) -> bool:
        """Whether the rule reduces over a tensor's elements (``o.norm``, ``o.mean``) with constants ``c``."""
        return self._probe(part, s, c).reductions > 0

    def _probe(self, part: _Part, s: dict, c: dict) -> _CountingOps:
        """The operations the rule issues with constants ``c``: counted once per part and constants, by running it on
        2-element scratch tensors."""
        key = tuple(sorted(c.items()))
        counter = part.probes.get(key)
        if counter is None:
            counter = _CountingOps(_ops.F)
            dummy = torch.zeros(2, dtype=part.dtype, device=part.device)
            st = {k: v for k, v in self._new_state(dummy, part.group).items() if k != "step"}
            try:
                type(self)._update(counter, [dummy], [torch.zeros_like(dummy)], {k: [v] for k, v in st.items()},
                                 {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in s.items()}, c)
            except Exception:  # a rule the scratch run cannot take: compile, as for any big bucket; assume it reduces
                counter.calls, counter.reductions = 2, 1
            part.probes[key] = counter
        return counter

    def _run_compiled(self, ps, gs, sts, s, c, keys, dtype, device, part: _Part | None = None,
                      group: dict | None = None) -> None:
        """The compiled step of ``ps`` (all compilable); ``part`` caches the flattened tensors across steps."""
        flatten = self._flattens(c)
        runner = part.runner if part is not None else None
        if runner is None or runner.flatten != flatten:
            if group is None:
                group = part.group if part is not None else self.param_groups[0]
            runner = _compiled.ChunkRunner(self, group, ps, sts, keys, dtype, device, flatten)
            if part is not None:
                part.runner = runner
        runner.run(type(self), c, self.lowp.mode, gs, s)


def _stepped(t: Tensor) -> Tensor:
    """What a step updates for a parameter or state tensor ``t``: its local shard (a DTensor's), as its real view
    when complex (``torch.view_as_real``, as torch.optim does: complex maths as two real numbers)."""
    t = _dist.local(t)
    return torch.view_as_real(t) if t.is_complex() else t


def _plain(group: dict) -> dict:
    """``group``, with hyperparameters given as 1-element tensors or numpy numbers (betas too) as Python numbers;
    ``group`` itself when there are none."""
    out = None
    for k, v in group.items():
        if k == "params":
            continue
        if isinstance(v, (tuple, list)) and any(isinstance(b, (Tensor, np.generic)) for b in v):
            new = type(v)(float(b) if isinstance(b, (Tensor, np.generic)) else b for b in v)
        elif isinstance(v, Tensor) and v.numel() == 1 and not v.dtype == torch.bool:
            new = float(v)
        elif isinstance(v, np.generic) and not isinstance(v, np.bool_):
            new = v.item()
        else:
            continue
        if out is None:
            out = dict(group)
        out[k] = new
    return group if out is None else out


def _local_grad(g: Tensor, p: Tensor) -> Tensor:
    """A DTensor parameter's gradient laid out as the parameter (its local shard then matches the parameter's)."""
    if _dist.is_dtensor(g) and (g.placements != p.placements or g.device_mesh != p.device_mesh):
        return g.redistribute(p.device_mesh, p.placements)
    return g


class _CountingOps:
    """An operation vocabulary that counts the operations a rule issues, and its reductions over a tensor's
    elements (see ``_probe``)."""

    _REDUCTIONS = ("norm", "mean")

    def __init__(self, ops) -> None:
        self._ops, self.calls, self.reductions = ops, 0, 0

    def __getattr__(self, name):
        fn = getattr(self._ops, name)
        reduction = name in self._REDUCTIONS

        def counted(*args, **kwargs):
            self.calls += 1
            self.reductions += reduction
            return fn(*args, **kwargs)

        return counted


class _Part:
    """The parameters of one group on one (device, dtype), with the lists each step reuses."""

    __slots__ = ("group", "idx", "ps", "sts", "keys", "device", "dtype", "numel", "needs_cast", "st_lists",
                 "fast", "eager", "runner", "probes", "sharding", "T", "F")

    def __init__(self, group: dict, idx: list[int], ps: list[Tensor], sts: list[dict], numel: int,
                 sharding: _dist.Sharding | None = None) -> None:
        """``ps`` and ``sts``: the parameters and their state as the rule sees them (for DTensors, the local
        shards); ``numel``: their elements in all (for DTensors, every shard's, so that every rank takes the same
        path); ``sharding``: how they lie on their mesh (None: plain tensors)."""
        self.group, self.idx, self.ps, self.sts = group, idx, ps, sts
        self.keys = keys = [k for k in sts[0] if k != "step"]
        self.device, self.dtype = ps[0].device, ps[0].dtype
        self.numel = numel
        self.sharding = sharding
        self.T, self.F = _ops.sharded(_ops.T, sharding), _ops.sharded(_ops.F, sharding)
        self.needs_cast = any(
            p.dtype in (torch.bfloat16, torch.float16)
            or any(st[k].is_floating_point() and st[k].dtype != p.dtype for k in keys)
            for p, st in zip(ps, sts))
        self.st_lists = {k: [st[k] for st in sts] for k in keys}
        self.fast = [i for i in range(len(ps)) if _compiled.compilable(ps[i], sts[i], keys)]
        fast = set(self.fast)
        self.eager = [i for i in range(len(ps)) if i not in fast]
        self.runner = None
        self.probes: dict[tuple, _CountingOps] = {}


class _Plan:
    """A param group's parameters with gradients, their state, and their (device, dtype) parts."""

    __slots__ = ("group", "params", "states", "sig", "steps", "parts", "sharded", "complex", "checked")

    def __init__(self, opt: AdamlabOptimizer, group: dict, params: list[Tensor]) -> None:
        self.group = group
        self.checked = False  # whether the rule's declared scalars and constants were checked
        self.params = params
        self.states = [opt.state[p] for p in params]
        # one float32 tensor holds the step counts of the group, each parameter's ``step`` a 0-d view of it: a
        # step increments them in one operation and reads them in one ``tolist`` (no per-tensor ``item``)
        self.steps = torch.tensor([float(st["step"]) for st in self.states], dtype=torch.float32)
        for st, view in zip(self.states, self.steps.unbind(0)):
            st["step"] = view
        self.sig = self._signature(params, self.states)
        shardings = [_dist.sharding_of(p) for p in params]
        self.sharded = any(sh is not None for sh in shardings)
        self.complex = any(torch.is_complex(p) for p in params)
        local = _stepped
        by_kind: dict[tuple, list[int]] = defaultdict(list)
        for i, (p, st, sh) in enumerate(zip(params, self.states, shardings)):
            by_kind[(local(p).device, local(p).dtype, tuple(k for k in st if k != "step"),
                     None if sh is None else sh.key)].append(i)
        self.parts = [_Part(group, idx, [local(params[i]) for i in idx],
                            [self.states[i] if shardings[i] is None and not torch.is_complex(params[i]) else
                             {k: local(v) if isinstance(v, Tensor) else v for k, v in self.states[i].items()}
                             for i in idx],
                            sum(_dist.numel(params[i]) for i in idx), shardings[idx[0]])
                      for idx in by_kind.values()]

    @staticmethod
    def _signature(params, states) -> list:
        local = _dist.local
        return [(local(p).data_ptr(), tuple(map(id, st.values()))) for p, st in zip(params, states)]

    def matches(self, group: dict, params: list[Tensor], state) -> bool:
        if group is not self.group or len(params) != len(self.params):
            return False
        if not all(p is q for p, q in zip(params, self.params)):
            return False
        if not all(state.get(p) is st for p, st in zip(params, self.states)):
            return False
        return self._signature(params, self.states) == self.sig


# ---------------------------------------------------------------------- argument checks
def check_number(name: str, value: Any) -> float:
    """A real number (a Python or numpy number, or a tensor of one element) as a float."""
    if isinstance(value, Tensor) or isinstance(value, np.ndarray):
        if value.dtype == torch.bool or getattr(value.dtype, "kind", "") == "b" or (
                isinstance(value, Tensor) and value.is_complex()):
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor")
        if value.numel() != 1 if isinstance(value, Tensor) else value.size != 1:
            raise ValueError(f"Invalid {name}: a tensor of {tuple(value.shape)} (expected one number)")
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"Invalid {name}: nan (expected a number)")
    return v


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    v = check_number(name, value)
    ok = True
    if lo is not None:
        ok &= v > lo if lo_open else v >= lo
    if hi is not None:
        ok &= v < hi if hi_open else v <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        raise ValueError(f"Invalid {name}: {v!r} (expected {name} in {left}{lo_s}, {hi_s}{right})")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_betas(betas: Any, n: int, closed_last: bool = False) -> None:
    """``betas`` must hold ``n`` values, each in [0, 1) (the last in [0, 1] when ``closed_last``)."""
    if not isinstance(betas, (tuple, list)):
        raise TypeError(f"betas must be a tuple of {n} floats, got {type(betas).__name__}")
    if len(betas) != n:
        raise ValueError(f"Invalid betas: expected {n} values, got {len(betas)}")
    for i, b in enumerate(betas):
        check_range(f"betas[{i}]", b, 0.0, 1.0, hi_open=not (closed_last and i == n - 1))


def check_common(group: dict, n_betas: int | None = None) -> None:
    """lr >= 0, eps >= 0, weight_decay >= 0, maximize a bool, and betas when the optimizer has them."""
    check_range("lr", group["lr"], 0.0)
    if "eps" in group:
        check_range("eps", group["eps"], 0.0)
    if "weight_decay" in group:
        check_range("weight_decay", group["weight_decay"], 0.0)
    if "maximize" in group:
        check_bool("maximize", group["maximize"])
    if n_betas is not None:
        check_betas(group["betas"], n_betas)
