"""The engine every adamlab optimizer stands on.

An optimizer module supplies only its maths:

* ``_init_state(p, group) -> dict``: the state tensors of a new parameter (``step`` is added here);
* ``_scalars(group, step) -> dict``: the per-step scalars (bias corrections, schedules, decay factors), computed
  once per step in float64 Python arithmetic;
* ``_constants(group) -> dict``: the switches that change the shape of the computation (``amsgrad``,
  ``maximize``, ...), hashable Python values;
* ``_rule(o, p, g, st, s, c)``: the update, written once against the operation vocabulary ``o``
  (:mod:`adamlab.optim._ops`), in place on ``p`` and the state tensors in ``st``;
* optionally ``_prepare(group, params, grads) -> dict``: scalars that need the whole group (AdamCM's synced
  priority), returned as 0-d tensors;
* ``_validate(group)``: argument checks, raising :class:`ValueError` that names the argument.

The engine then provides three implementations of the same rule, selected by keyword-only flags:
the plain per-tensor loop (``foreach=False``, the ground truth), the multi-tensor path (``foreach=True``) and the
compiled path (``compiled=True``: ``torch.compile`` of the per-tensor loop over chunks of flattened tensors, with
every per-step scalar passed as a 0-d tensor so that a scheduler changing the learning rate never recompiles).
"""

from __future__ import annotations

import math
import os
import types
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _ops
from ._lowp import LowPrecision, resolve_state_dtype

__all__ = ["AdamlabOptimizer", "compiler_available"]

_IMPLEMENTATIONS = ("loop", "foreach", "compiled")
_AUTO_COMPILE_NUMEL = 1 << 20  # the default path compiles a bucket only from this many elements on
_CHUNK = 16  # tensors per compiled graph: compile time grows with the graph, step time wants few calls
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


def _flat(t: Tensor, p: Tensor) -> Tensor:
    """View a state tensor whose trailing dims are ``p``'s as ``[leading..., numel]``."""
    lead = t.dim() - p.dim()
    if lead >= 0 and t.shape[lead:] == p.shape:
        return t.view(t.shape[:lead] + (-1,))
    return t


#: The keyword-only implementation options every optimizer accepts (beyond its hyperparameters):
#: ``foreach`` (True: multi-tensor path, False: plain loop), ``compiled`` (True: torch.compile path),
#: ``state_dtype`` (per-state storage dtype policy) and ``param_update`` (rounding of bf16/fp16 parameters).
_IMPL_DEFAULTS: dict[str, Any] = dict(foreach=None, compiled=None, state_dtype=None, param_update="nearest")


class AdamlabOptimizer(Optimizer):
    """Base class: param groups, state, validation and the three implementations of one update rule."""

    #: group keys passed to the rule as compile-time constants (beyond what ``_constants`` derives)
    _flatten_ok: bool = True  # whether the rule is purely elementwise over the param's shape

    def __init__(
        self,
        params: Iterable,
        defaults: dict[str, Any],
        **impl: Any,
    ) -> None:
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
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ hooks for optimizer modules
    def _validate(self, group: dict) -> None:  # pragma: no cover - every optimizer overrides it
        pass

    def _init_state(self, p: Tensor, group: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def _scalars(self, group: dict, step: int) -> dict[str, float]:
        raise NotImplementedError

    def _constants(self, group: dict) -> dict[str, Any]:
        return {}

    def _prepare(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> dict[str, Tensor]:
        return {}

    @staticmethod
    def _rule(o, p, g, st, s, c) -> None:
        raise NotImplementedError

    def _flattens(self, c: dict[str, Any]) -> bool:
        """Whether the compiled path may flatten the tensors of a group with constants ``c`` (default: the class's
        ``_flatten_ok``); a rule that reduces over a dimension of some groups' tensors says so per group."""
        return self._flatten_ok

    # ------------------------------------------------------------------ torch.optim contract
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate(group)
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("state_dtype", {})
        self.__dict__.setdefault("lowp", LowPrecision("nearest"))
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state exactly: every state tensor keeps its saved dtype (torch would cast it to the parameter's),
        moves to the parameter's device, then takes this optimizer's ``state_dtype`` policy where it has one."""
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            if pid not in saved_state:
                continue
            st = self.state[p]
            for k, v in saved_state[pid].items():
                if k == "step" or not isinstance(v, Tensor):
                    continue
                st[k] = v.to(device=p.device, dtype=self._state_dtype(k, v, p), copy=True)

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
        st: dict[str, Tensor] = {"step": torch.tensor(0.0, dtype=torch.float32)}
        for k, v in self._init_state(p, group).items():
            st[k] = v.to(self._state_dtype(k, v, p)) if isinstance(v, Tensor) else v
        if self.lowp.mode == "kahan" and p.dtype in (torch.bfloat16, torch.float16):
            st["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    def _step_group(self, group: dict) -> None:
        name = type(self).__name__
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(f"{name} does not support complex parameters")
            if not self.state[p]:
                self.state[p] = self._new_state(p, group)
            params.append(p)
            grads.append(p.grad)
        if not params:
            return
        extra = self._prepare(group, params, grads)
        c = self._constants(group)
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            st = self.state[p]
            st["step"] += 1
            buckets[(p.device, p.dtype, int(st["step"].item()))].append(i)
        for (device, dtype, step), idx in buckets.items():
            s = dict(self._scalars(group, step))
            s.update(extra)
            ps = [params[i] for i in idx]
            gs = [grads[i] for i in idx]
            sts = [self.state[p] for p in ps]
            self._run(ps, gs, sts, s, c, device, dtype)

    def _run(self, ps, gs, sts, s, c, device, dtype) -> None:
        rule = type(self)._rule
        lowp = self.lowp
        keys = [k for k in sts[0] if k != "step"]
        needs_cast = any(
            p.dtype in (torch.bfloat16, torch.float16)
            or any(st[k].is_floating_point() and st[k].dtype != p.dtype for k in keys)
            for p, st in zip(ps, sts)
        )
        impl = self.implementation
        if impl == "auto":
            # the default: compile big buckets where a compiler works; compiling costs seconds, which small
            # models never win back, so they take the multi-tensor path
            big = sum(p.numel() for p in ps) >= _AUTO_COMPILE_NUMEL
            impl = "compiled" if big and compiler_available() else "foreach"
        if impl == "compiled":
            eager = [i for i, p in enumerate(ps) if p.numel() < 2 or not p.is_contiguous()
                     or not all(st[k].is_contiguous() for k in keys for st in (sts[i],))]
            fast = [i for i in range(len(ps)) if i not in set(eager)]
            if fast:
                try:
                    self._run_compiled([ps[i] for i in fast], [gs[i] for i in fast],
                                       [sts[i] for i in fast], s, c, keys, dtype, device)
                except Exception as err:
                    if not _is_compiler_failure(err):
                        raise
                    warnings.warn(f"adamlab: compiled step failed ({type(err).__name__}); falling back to the "
                                  "multi-tensor path", RuntimeWarning, stacklevel=4)
                    self.implementation = "foreach"
                    eager = list(range(len(ps)))
            for i in eager:
                lowp.apply(rule, _ops.T, ps[i], gs[i], {k: sts[i][k] for k in keys}, s, c)
        elif impl == "foreach" and not needs_cast:
            st_lists = {k: [st[k] for st in sts] for k in keys}
            per = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in s.items()}
            rule(_ops.F, ps, list(gs), st_lists, per, c)
        else:
            for p, g, st in zip(ps, gs, sts):
                lowp.apply(rule, _ops.T, p, g, {k: st[k] for k in keys}, s, c)

    def _run_compiled(self, ps, gs, sts, s, c, keys, dtype, device) -> None:
        fn = _compiled_chunk(type(self), c, self.lowp.mode)
        cdtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        names = [k for k, v in s.items() if not isinstance(v, Tensor)]
        packed = torch.tensor([float(s[k]) for k in names], dtype=cdtype, device=device)
        st_s = dict(zip(names, packed.unbind(0))) if names else {}
        for k, v in s.items():
            if isinstance(v, Tensor):
                st_s[k] = v.to(device=device, dtype=cdtype)
        flat = self._flattens(c)
        fp = [p.view(-1) if flat else p for p in ps]
        fg = [g.reshape(-1) if flat else g for g in gs]
        fst = {k: [_flat(st[k], p) if flat else st[k] for st, p in zip(sts, ps)] for k in keys}
        n = len(fp)
        full = n - n % _CHUNK
        with _no_duck_shapes():
            for a in range(0, full, _CHUNK):
                b = a + _CHUNK
                fn(fp[a:b], fg[a:b], {k: v[a:b] for k, v in fst.items()}, st_s)
            for a in range(full, n):
                fn(fp[a:a + 1], fg[a:a + 1], {k: v[a:a + 1] for k, v in fst.items()}, st_s)


def _is_compiler_failure(err: Exception) -> bool:
    mods = {type(e).__module__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return any(m.startswith(("torch._dynamo", "torch._inductor")) for m in mods)


class _no_duck_shapes:
    """Compile chunks shape-generically without equating equal sizes (one graph for any mix of sizes)."""

    def __enter__(self):
        import torch.fx.experimental._config as fx_config

        self._cfg = fx_config
        self._old = fx_config.use_duck_shape
        fx_config.use_duck_shape = False

    def __exit__(self, *exc):
        self._cfg.use_duck_shape = self._old
        return False


_COMPILED: dict[tuple, Callable] = {}


def _chunk_body(ps, gs, sts, s):  # the template whose code object is copied per optimizer configuration
    for i in range(len(ps)):
        _APPLY(_RULE, _OPS, ps[i], gs[i], {k: v[i] for k, v in sts.items()}, s, _CONSTS)


def _compiled_chunk(cls: type, c: dict, mode: str) -> Callable:
    """One compiled function per (optimizer class, constants, rounding mode), each with its own code object,
    so that every configuration keeps its own compile cache and never evicts another's."""
    key = (cls, tuple(sorted(c.items())), mode)
    fn = _COMPILED.get(key)
    if fn is None:
        lowp = LowPrecision(mode)
        glb = dict(_chunk_body.__globals__)
        glb.update(_APPLY=lowp.apply, _RULE=cls._rule, _OPS=_ops.T, _CONSTS=dict(c))
        code = _chunk_body.__code__.replace(co_name=f"{cls.__name__}_step_{len(_COMPILED)}")
        body = types.FunctionType(code, glb, code.co_name)
        fn = torch.compile(body, fullgraph=True, dynamic=True)
        _COMPILED[key] = fn
    return fn


# ---------------------------------------------------------------------- argument checks
def check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, Tensor) and value.numel() == 1):
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
