"""Every use of torch's private API in adamlab, behind one door: each internal probed once, lazily, and each with a
fallback that uses torch's public API only.

The compiled path (:mod:`adamlab.optim._compiled`) leans on a few of torch's internals to be fast. None of them is
needed for the right numbers: every fallback gives the same numbers (tests/test_torch_door.py checks it), at the
cost of speed, of more graphs, or of an "unknown". An entry is probed the first time it is needed, never at
``import adamlab`` (which must not import dynamo, inductor or sympy); the result is kept for the process.

The entries (``probe()`` reports each as True, in use, or False, the fallback):

* ``lazy_graph_break``: ``torch._disable_dynamo``, torch's own lazy form of ``torch.compiler.disable`` (what
  ``torch.optim`` decorates its steps with), which imports dynamo at the first call. Probe: it is callable (a
  ``getattr`` only: it is read when adamlab's classes are defined). Fallback: ``torch.compiler.disable``, the same
  graph break, but it imports dynamo, inductor and sympy at ``import adamlab`` (about a second).
* ``recording_backend``: ``torch._TorchCompileInductorWrapper``, the inductor backend that ``torch.compile`` builds,
  subclassed to record each graph it compiles. Probe: a class whose constructor takes ``(mode, options, dynamic)``.
  Fallback: ``torch.compile(..., backend="inductor", options=...)``, the same backend, unrecorded.
* ``graph_input_sources``: where dynamo found each graph input (``node.meta["grapharg"].source.name`` on the graph's
  placeholders: ``L['ps'][3]``, ``L['x'].size()[0]``), which gives the order in which dynamo passes a graph its
  arguments. Probe: a tiny function, traced by dynamo with a backend that compiles nothing, gets back from those
  names exactly the inputs dynamo passed (the same tensor objects, ints for sizes). Fallback: no direct calls.
* ``cache_entries``: ``torch._dynamo.eval_frame._debug_get_cache_entry_list`` and each entry's
  ``guard_manager.check(locals)``: which of a function's compiled graphs dynamo picks for a call. Probe: the tiny
  function has one entry, whose guards pass for its own arguments and fail for a float64 one. Fallback: no direct
  calls.
* ``no_duck_shape``: ``torch.fx.experimental._config.use_duck_shape = False`` while a chunk compiles: equal sizes
  are not equated, so one graph serves any mix of sizes. Probe: the tiny function of two tensors of one size gets
  two symbolic sizes. Fallback: torch's duck sizing (a chunk whose pattern of equal sizes is new may compile one
  more graph; the same numbers).
* ``cpp_shape_guards``: ``torch._dynamo.config.enable_cpp_symbolic_shape_guards = True`` while a chunk compiles:
  its shape guards are checked in C++ (in Python they cost ~15 us per call through dynamo). Probe: a boolean
  setting of dynamo's config. Fallback: torch's default.
* ``graph_counter``: ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``, the graphs dynamo has compiled
  in the process (``adamlab speed``'s graphs columns). Probe: the tiny function's trace adds one (and the count is
  put back after). Fallback: :func:`graph_count` returns None and callers say "unknown".

**Direct calls**, the compiled path's fast path (each chunk calls the graph dynamo picked for it without going
through dynamo again; see :mod:`adamlab.optim._compiled`), need ``recording_backend``, ``graph_input_sources``
and ``cache_entries`` (:func:`direct_calls`); without one of them every chunk is called through dynamo.

Not an entry: :func:`is_compiler_failure` tells a compiler error by the module of its class (``torch._dynamo...``,
``torch._inductor...``). It reads names only; where they differ the error is not taken for a compiler failure and
propagates (nothing is silently swallowed).

``ADAMLAB_TORCH_PUBLIC=1`` in the environment takes every fallback. It is read at each entry's first probe (for
``lazy_graph_break``, at ``import adamlab``). ``adamlab.optim.torch_internals()`` (:func:`probe`) runs every probe
and says which internals are in use. Only torch 2.13 is tested; on another torch, an internal that is missing or
that behaves otherwise is found by its probe and its fallback taken.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from typing import Any

import torch

#: the environment variable that takes every fallback
ENV = "ADAMLAB_TORCH_PUBLIC"

#: the entries that one dynamo trace of a tiny function probes together
_TRACED = ("graph_input_sources", "cache_entries", "no_duck_shape", "graph_counter")
ENTRIES = ("lazy_graph_break", "recording_backend", *_TRACED, "cpp_shape_guards")

_FOUND: dict[str, bool] = {}


def forced_public() -> bool:
    """Whether ``ADAMLAB_TORCH_PUBLIC=1`` asks for every fallback."""
    return os.environ.get(ENV, "").strip() == "1"


def have(name: str) -> bool:
    """Whether internal ``name`` (one of :data:`ENTRIES`) is in use: probed at the first call, then remembered."""
    found = _FOUND.get(name)
    if found is not None:
        return found
    if name not in ENTRIES:
        raise KeyError(f"unknown torch internal {name!r}; one of {', '.join(ENTRIES)}")
    if forced_public():
        found = False
    elif name in _TRACED:
        if torch.compiler.is_compiling():  # a trace inside dynamo's own: not now (and not remembered)
            return False
        try:
            _FOUND.update(_trace_probe())
        except Exception:  # noqa: BLE001 - whatever went wrong, the fallbacks are safe
            _FOUND.update(dict.fromkeys(_TRACED, False))
        return _FOUND[name]
    else:
        try:
            found = bool(_PROBES[name]())
        except Exception:  # noqa: BLE001
            found = False
    _FOUND[name] = found
    return found


def probe() -> dict[str, bool]:
    """Which of torch's private internals adamlab uses in this process (True) and which take their public fallback
    (False), probing every one that was not probed yet (this imports dynamo). ``ADAMLAB_TORCH_PUBLIC=1`` turns
    them all off; the entries are described in :mod:`adamlab.optim._torch_private`. ``direct_calls`` (not an
    internal itself) says whether the compiled path's chunks call their graphs directly."""
    out = {name: have(name) for name in ENTRIES}
    out["direct_calls"] = direct_calls()
    return out


def direct_calls() -> bool:
    """Whether a compiled chunk may call the graph dynamo picked for it directly (see :class:`GraphRecorder`)."""
    return have("recording_backend") and have("graph_input_sources") and have("cache_entries")


# ---------------------------------------------------------------------- the probes
def _probe_lazy_graph_break() -> bool:
    return callable(getattr(torch, "_disable_dynamo", None))


def _probe_recording_backend() -> bool:
    import inspect

    wrapper = getattr(torch, "_TorchCompileInductorWrapper", None)
    if not inspect.isclass(wrapper) or not callable(vars(wrapper).get("__call__")):
        return False
    params = list(inspect.signature(wrapper.__init__).parameters)
    return params[1:4] == ["mode", "options", "dynamic"]


def _probe_cpp_shape_guards() -> bool:
    import torch._dynamo.config as dynamo_config

    return isinstance(getattr(dynamo_config, "enable_cpp_symbolic_shape_guards", None), bool)


_PROBES: dict[str, Callable[[], bool]] = {"lazy_graph_break": _probe_lazy_graph_break,
                                          "recording_backend": _probe_recording_backend,
                                          "cpp_shape_guards": _probe_cpp_shape_guards}


def _probe_body(x, y):  # the tiny function of the trace probe (a fresh copy of its code object each time)
    return x.sum() + y.sum()


def _trace_probe() -> dict[str, bool]:
    """One dynamo trace of a tiny function (a backend that compiles nothing: ~40 ms once dynamo has warmed up),
    which probes the entries of :data:`_TRACED`. dynamo's statistics are left as they were."""
    import torch.fx.experimental._config as fx_config

    out = dict.fromkeys(_TRACED, False)
    seen: list[tuple[list, list]] = []

    def backend(gm, example_inputs):  # torch.compile's public backend interface
        seen.append((_source_names(gm), list(example_inputs)))
        return gm.forward

    code = _probe_body.__code__.replace(co_name="adamlab_torch_probe")
    fn = types.FunctionType(code, _probe_body.__globals__, code.co_name)
    x, y = torch.ones(3), torch.ones(3)
    local = {"x": x, "y": y}
    counters = _counters()
    saved = None if counters is None else {k: dict(v) for k, v in counters.items()}
    before = None if counters is None else counters["stats"]["unique_graphs"]
    duck = getattr(fx_config, "use_duck_shape", None)
    try:
        if isinstance(duck, bool):
            fx_config.use_duck_shape = False
        torch.compile(fn, backend=backend, dynamic=True, fullgraph=True)(**local)
    finally:
        if isinstance(duck, bool):
            fx_config.use_duck_shape = duck
        if counters is not None:
            out["graph_counter"] = counters["stats"]["unique_graphs"] - before == 1
            for k in list(counters):  # in place: a module may hold one of the inner counters
                if k not in saved:
                    del counters[k]
                else:
                    counters[k].clear()
                    counters[k].update(saved[k])
    if len(seen) != 1:
        return out
    names, example = seen[0]
    sizes = [e for e in example if not isinstance(e, torch.Tensor)]
    out["no_duck_shape"] = isinstance(duck, bool) and len(sizes) == 2
    build = _argument_builder(names)
    if build is not None:
        args = build(local)
        out["graph_input_sources"] = len(args) == len(example) and len(sizes) < len(example) and all(
            a is e if isinstance(e, torch.Tensor) else type(a) is int for a, e in zip(args, example))
    entries = _cache_entries(fn)
    if entries is not None and len(entries) == 1:
        check = entries[0].guard_manager.check
        out["cache_entries"] = check(local) is True and check({"x": x, "y": y.double()}) is False
    return out


# ---------------------------------------------------------------------- the internals, each with its fallback
def graph_break(fn: Callable, lazy: bool = True) -> Callable:
    """``fn``, run eagerly as a graph break when dynamo traces a call to it: ``torch.compiler.disable(fn,
    recursive=True)``, made without importing dynamo where ``lazy`` and ``lazy_graph_break`` allow."""
    if lazy and have("lazy_graph_break"):
        return torch._disable_dynamo(fn, recursive=True)
    return torch.compiler.disable(fn, recursive=True)


def is_compiler_failure(err: BaseException) -> bool:
    """Whether ``err`` (or the exception it was raised from) is an error of torch's compiler (dynamo, inductor)."""
    mods = {type(e).__module__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return any(m.startswith(("torch._dynamo", "torch._inductor")) for m in mods)


def graph_count() -> int | None:
    """The graphs dynamo has compiled in this process, or None where that is unknown (``graph_counter`` off)."""
    if not have("graph_counter"):
        return None
    counters = _counters()
    return None if counters is None else int(counters["stats"]["unique_graphs"])


def _counters():
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - another torch
        return None
    return counters


class shape_settings:
    """While a chunk is traced: equal sizes not equated (``no_duck_shape``) and shape guards in C++
    (``cpp_shape_guards``), each where it is in use; the rest is torch's default."""

    def __enter__(self):
        self._old: list[tuple[Any, str, Any]] = []
        if have("no_duck_shape"):
            import torch.fx.experimental._config as fx_config

            self._set(fx_config, "use_duck_shape", False)
        if have("cpp_shape_guards"):
            import torch._dynamo.config as dynamo_config

            self._set(dynamo_config, "enable_cpp_symbolic_shape_guards", True)
        return self

    def _set(self, mod, attr: str, value) -> None:
        self._old.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, value)

    def __exit__(self, *exc):
        for mod, attr, value in reversed(self._old):
            setattr(mod, attr, value)
        return False


def _source_names(gm) -> list:
    """Where dynamo found each input of graph ``gm`` (``"L['ps'][3]"``, ...), None for an input it does not say."""
    names = []
    for node in gm.graph.find_nodes(op="placeholder"):
        arg = node.meta.get("grapharg")
        name = getattr(getattr(arg, "source", None), "name", None)
        names.append(name() if callable(name) else name)
    return names


def _argument_builder(names: list) -> Callable | None:
    """A function of the call's arguments (a dict of the compiled function's locals) that gives a graph's inputs in
    dynamo's order, from their source names; None where a name is not of the locals."""
    if not names or not all(isinstance(n, str) and n.startswith("L[") for n in names):
        return None
    try:
        return eval("lambda L: [" + ", ".join(names) + "]", {"__builtins__": {}})  # noqa: S307 - dynamo's names
    except SyntaxError:
        return None


def _cache_entries(fn: Callable) -> list | None:
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    except Exception:  # noqa: BLE001 - another torch
        return None
    return list(_debug_get_cache_entry_list(fn))


class GraphRecorder:
    """One function compiled by inductor (``torch.compile(body, fullgraph=True, dynamic=True)``) and, where
    :func:`direct_calls` allows, the graphs dynamo compiled for it, each as (compiled callable, argument builder),
    with which of dynamo's cache entries holds which, so that a call can skip dynamo.

    The backend is torch.compile's own inductor backend; it only records, beside compiling, the source of each
    graph input (``L['ps'][3]``, ``L['sts']['exp_avg'][0].size()[0]``, ...): the order in which dynamo passes them."""

    def __init__(self, body: Callable) -> None:
        self.body = body
        self.new: list[tuple[Callable, Callable] | None] = []  # compiled since the last :meth:`call`
        self.by_code: dict[int, tuple[Any, tuple[Callable, Callable] | None]] = {}  # cache entry's code -> graph

    def compile(self, options: dict) -> Callable:
        """``body`` compiled with inductor's ``options``: through the recording backend where it is in use."""
        if have("recording_backend"):
            return torch.compile(self.body, fullgraph=True, dynamic=True, backend=self._recording(options))
        return torch.compile(self.body, fullgraph=True, dynamic=True, backend="inductor", options=dict(options))

    def _recording(self, options: dict):
        graphs = self

        class Recording(torch._TorchCompileInductorWrapper):
            def __call__(self, gm, example_inputs, **kw):
                try:  # (no probe here: this runs inside dynamo; call() uses the builder only where probed)
                    mk = _argument_builder(_source_names(gm))
                except Exception:  # noqa: BLE001 - pragma: no cover - another torch
                    mk = None
                fn = super().__call__(gm, example_inputs, **kw)
                graphs.new.append(None if mk is None else (fn, mk))
                return fn

        return Recording(None, dict(options), True)

    def call(self, fn: Callable, local: dict[str, Any]) -> tuple[Callable, Callable] | None:
        """Call ``fn`` (``body``, compiled by :meth:`compile`) through dynamo with ``local`` as its arguments; return
        the graph that served them (callable and argument builder), or None where it cannot be told (always None
        unless :func:`direct_calls`)."""
        if not direct_calls():
            fn(**local)
            return None
        self.new.clear()
        try:
            before = {id(e.code) for e in _cache_entries(self.body)}
        except Exception:  # noqa: BLE001 - pragma: no cover - probed, so not expected
            fn(**local)
            return None
        fn(**local)
        try:
            now = _cache_entries(self.body)
            added = [e for e in now if id(e.code) not in before]
            if len(added) == 1 and len(self.new) == 1:
                self.by_code[id(added[0].code)] = (added[0].code, self.new[0])
            for e in now:  # the entry dynamo's lookup picks: the first whose guards pass
                if e.guard_manager.check(local):
                    hit = self.by_code.get(id(e.code))
                    return hit[1] if hit is not None and hit[0] is e.code else None
        except Exception:  # noqa: BLE001 - pragma: no cover
            return None
        finally:
            self.new.clear()
        return None
