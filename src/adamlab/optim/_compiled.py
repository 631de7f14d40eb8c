"""The compiled path: ``torch.compile`` of the plain per-tensor loop, run over fixed-size chunks of tensors.

Three choices make it fast and keep it from recompiling:

* **One graph per optimizer configuration.** Every tensor is passed flattened to 1-D (state tensors with
  leading dimensions, like a ``[C, *p.shape]`` buffer, as ``[C, numel]``), sizes are symbolic and not
  equated with each other (no duck sizing), and every chunk holds exactly :data:`CHUNK` tensors (:data:`BIG_CHUNK`
  for buckets of more tensors): a short last chunk is padded with scratch tensors of two elements. So one graph
  (two for an optimizer used on both small and big buckets) serves any model, any mix of sizes.
* **No views as inputs.** Flattened tensors are ``view(-1).detach()``: they share the storage but are not
  views, so dynamo does not guard on (and specialise to) the rank of their base, and AOT autograd has no
  aliasing to replay.
* **Scalars as one tensor.** The per-step scalars (learning rate, bias corrections, schedules) arrive packed in
  one 1-D tensor and are indexed inside the graph, so an LR scheduler or a warmup never recompiles, and a step
  costs one small host-to-tensor copy, not one per scalar.

What a step reuses (the flattened parameter and state tensors, chunk lists, padding) is built once per
parameter group and bucket, in :class:`ChunkRunner`; a step only flattens the gradients (and runs the optimizer's
per-step hook where it has one: AdamCM/AdamCG decide their buffer offers there, before the graphs).

**Calling the compiled graph directly.** A call through ``torch.compile`` runs dynamo's guards and its generated
calling code (one Python-level size lookup per symbolic size): about 90 us for a chunk of 32 tensors, against
about 20 us for the compiled graph itself. So each chunk goes through dynamo once; the graph dynamo chose for it
(the cache entry whose guards pass for this chunk's tensors) is then called directly, with its arguments read from
the chunk's tensors in the order dynamo passes them. What dynamo's guards check cannot change between steps: the
chunk's parameter, state and padding tensors are the same objects, flattened once, and a gradient always has its
parameter's dtype, device and shape (torch enforces it) and is flattened to a contiguous 1-D tensor. Where that
mapping cannot be established (several graphs without a matching entry, a torch without these internals, a step
traced by dynamo itself), the chunk keeps going through dynamo.

Every use of torch's private API (the recording backend, dynamo's cache entries and graph-input sources, the shape
settings, the lazy graph break) is in :mod:`adamlab.optim._torch_private`, each probed once and each with a public
fallback; ``ADAMLAB_TORCH_PUBLIC=1`` takes them all (every chunk is then called through ``torch.compile``).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _ops
from . import _torch_private as _tp
from ._lowp import LowPrecision

#: tensors per compiled call: the compile time grows with it (cold inductor cache, Adam: 16 -> 7 s, 32 -> 16 s,
#: 64 -> 39 s), the per-call overhead shrinks with it: ~75 us with warm caches, but ~400 us in a real step, where
#: the forward and backward passes have evicted dynamo's and the wrappers' Python objects from the caches
#: (25M-parameter GPT, Adam, 2 threads: 10 calls 25.4 ms, 5 calls 23.6 ms, 1 call 21.4 ms)
CHUNK = 16
BIG_CHUNK = 32  # for buckets of more than CHUNK tensors
_PAD_NUMEL = 2  # sizes 0 and 1 are specialised by dynamo; 2 is the smallest generic size

#: call each chunk's compiled graph directly once dynamo has picked it, where torch's internals allow
#: (:func:`adamlab.optim._torch_private.direct_calls`; False: every call goes through dynamo)
DIRECT = True

_COMPILED: dict[tuple, Callable] = {}
_GRAPHS: dict[tuple, _tp.GraphRecorder] = {}  # per compiled function: the graphs its backend compiled

#: Inductor decides at compile time, from the sizes it first sees, which loops run in parallel; one graph serves
#: every size here, so in the graph for big tensors every loop is parallel (a big tensor never runs on one thread),
#: and the graph for small tensors (under SMALL_NUMEL elements, on a CPU) has no parallel loop at all (no barrier
#: per small tensor).
_INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True, "size_asserts": False, "emulate_precision_casts": True}
_SERIAL_OPTIONS = {"cpp.threads": 1, "size_asserts": False, "emulate_precision_casts": True}

#: on a CPU, tensors of fewer elements take the one-thread graph (torch's CPU kernels split work at 32768 too)
SMALL_NUMEL = 1 << 15


def graph_break(fn: Callable) -> Callable:
    """``fn``, run eagerly as a graph break when dynamo traces a call to it (``torch.compiler.disable(fn,
    recursive=True)``), without importing dynamo when ``fn`` is decorated: ``torch.compiler.disable`` imports
    dynamo, inductor and sympy at once (about a second), which ``import adamlab`` must not pay. torch's own lazy form
    (the one ``torch.optim`` decorates its methods with, which imports dynamo at the first call) is used where this
    torch has it; else the public call (see :func:`adamlab.optim._torch_private.graph_break`)."""
    return _tp.graph_break(fn, lazy=LAZY_GRAPH_BREAK)


#: :func:`graph_break` through torch's lazy form where it is in use (False: the public ``torch.compiler.disable``)
LAZY_GRAPH_BREAK = True

is_compiler_failure = _tp.is_compiler_failure


class no_duck_shapes:
    """Compile chunks shape-generically without equating equal sizes (one graph for any mix of sizes), with the
    symbolic-shape guards compiled to C++ (checked on every call: in Python they cost ~15 us per call), where
    torch's internals allow (:class:`adamlab.optim._torch_private.shape_settings`).

    It also tags the compile caches' keys with torch's thread count: inductor's CPU code for a graph compiled while
    torch ran one thread gave wrong results when a process running two threads loaded it from the on-disk cache
    (AdamCG's parallel graph: 1.3e-2 relative error; the key does not cover the thread count)."""

    def __enter__(self):
        self._shapes = _tp.shape_settings().__enter__()
        self._old = torch.compiler.config.cache_key_tag
        torch.compiler.config.cache_key_tag = f"{self._old}adamlab-threads-{torch.get_num_threads()}"

    def __exit__(self, *exc):
        torch.compiler.config.cache_key_tag = self._old
        self._shapes.__exit__(*exc)
        return False


def _chunk_body(ps, gs, sts, packed, extra):  # the template whose code object is copied per configuration
    # (_NAMES, _APPLY, _RULE, _OPS, _CONSTS: globals injected into each copy, see compiled_chunk)
    s = {k: packed[i] for i, k in enumerate(_NAMES)}  # noqa: F821
    s.update(extra)
    for i in range(len(ps)):
        _APPLY(_RULE, _OPS, ps[i], gs[i], {k: v[i] for k, v in sts.items()}, s, _CONSTS)  # noqa: F821


def _key(cls: type, c: dict, mode: str, names: tuple[str, ...], size: int, serial: bool) -> tuple:
    return (cls, tuple(sorted(c.items())), mode, names, size, serial)


def compiled_chunk(cls: type, c: dict, mode: str, names: tuple[str, ...], size: int = CHUNK,
                   serial: bool = False) -> Callable:
    """One compiled function per (optimizer class, constants, rounding mode, scalar names, chunk size, serial),
    each with its own code object, so that every configuration keeps its own compile cache and never evicts
    another's. ``serial``: compiled for one thread (no parallel loops, no barriers)."""
    key = _key(cls, c, mode, names, size, serial)
    fn = _COMPILED.get(key)
    if fn is None:
        lowp = LowPrecision(mode)
        glb = dict(_chunk_body.__globals__)
        glb.update(_APPLY=lowp.apply, _RULE=cls._update, _OPS=_ops.C, _CONSTS=dict(c), _NAMES=names)
        code = _chunk_body.__code__.replace(co_name=f"{cls.__name__}_step_{len(_COMPILED)}")
        body = types.FunctionType(code, glb, code.co_name)
        graphs = _GRAPHS[key] = _tp.GraphRecorder(body)
        fn = graphs.compile(_SERIAL_OPTIONS if serial else _INDUCTOR_OPTIONS)
        _COMPILED[key] = fn
    return fn


def flat(t: Tensor, p: Tensor, flatten: bool = True) -> Tensor:
    """``t`` (``p`` itself, its gradient or a state tensor whose trailing dims are ``p``'s) as a detached
    ``[leading..., numel]`` tensor sharing its storage (not a view: no ``_base`` for dynamo to guard on)."""
    if not flatten:
        return t.detach()
    lead = t.dim() - p.dim()
    if lead >= 0 and t.shape[lead:] == p.shape:
        if t.is_contiguous():
            return t.view(t.shape[:lead] + (-1,)).detach()
        return t.reshape(t.shape[:lead] + (-1,))  # a copy: only for gradients, never for updated tensors
    return t.detach()


def compilable(p: Tensor, st: dict, keys) -> bool:
    """Whether a parameter can take the compiled path (the rest take the per-tensor loop)."""
    return p.numel() >= 2 and p.is_contiguous() and all(st[k].is_contiguous() for k in keys)


class Chunk(NamedTuple):
    """One chunk of a :class:`ChunkRunner`: the tensors one compiled call steps."""

    first: int  #: the index (in the runner's order) of its first tensor
    end: int  #: one past its last real tensor (the padding follows)
    params: list[Tensor]  #: the flattened parameters, then the padding's
    states: dict[str, list[Tensor]]  #: per state name, the flattened state tensors, then the padding's
    pad_grads: list[Tensor]  #: the padding's gradients (zeros)
    size: int  #: the chunk size its graph was compiled for
    serial: bool  #: whether it runs in the one-thread graph


class CompiledStepFailed(Exception):
    """The compiler failed on a chunk (``error``, also the ``__cause__``); the tensors at ``stepped`` (indices in the
    step's order) had this step from the chunks before it, and only the others must still take it."""

    def __init__(self, error: Exception, stepped: list[int]) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error, self.stepped = error, stepped


class ChunkRunner:
    """The compiled step of one bucket of tensors (same device and dtype): flattened parameters and states,
    split into chunks of :data:`CHUNK` (or :data:`BIG_CHUNK`), the last chunk of each part padded, built once and
    reused by every step.

    On a CPU the bucket has two parts. Tensors of fewer than :data:`SMALL_NUMEL` elements (biases, norms) run
    through a graph compiled for one thread: a parallel loop over a few hundred elements costs a barrier between
    the threads that is worth more than the loop, and many times more when another process holds a core. The rest
    run through the parallel graph. (torch's own CPU kernels draw the same line, with their grain size.)"""

    def __init__(self, opt, group: dict, ps: list[Tensor], sts: list[dict], keys: list[str],
                 dtype: torch.dtype, device: torch.device, flatten: bool = True) -> None:
        self.flatten = bool(flatten)
        n = len(ps)
        if torch.device(device).type == "cpu":
            small = [i for i in range(n) if ps[i].numel() < SMALL_NUMEL]
            big = [i for i in range(n) if ps[i].numel() >= SMALL_NUMEL]
        else:
            small, big = [], list(range(n))
        self.order = small + big
        self.ordered = self.order == list(range(n))
        ps = [ps[i] for i in self.order]
        sts = [sts[i] for i in self.order]
        fl = self.flatten
        self.fp = [flat(p, p, fl) for p in ps]
        self.fst = {k: [flat(st[k], p, fl) for st, p in zip(sts, ps)] for k in keys}
        self.cdtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        self.device = device
        self.chunks: list[Chunk] = []
        for serial, lo, hi in ((True, 0, len(small)), (False, len(small), n)):
            if hi > lo:
                self._add_part(opt, group, keys, dtype, device, serial, lo, hi)
        self.key: tuple | None = None  # the configuration the chunks' graphs were found for
        self.graphs: list[tuple[Callable, Callable] | bool | None] = []  # per chunk: its graph, False, None: not yet
        #: the optimizer's per-step work before the chunks' graphs, or None (see ``AdamlabOptimizer._compiled_hook``)
        self.hook = opt._compiled_hook(self)

    def _add_part(self, opt, group, keys, dtype, device, serial: bool, lo: int, hi: int) -> None:
        size = CHUNK if hi - lo <= CHUNK else BIG_CHUNK
        pad = (-(hi - lo)) % size if self.flatten else 0
        if pad:
            dummy = torch.zeros(_PAD_NUMEL, dtype=dtype, device=device)
            pst = [opt._new_state(dummy, group) for _ in range(pad)]
            for st in pst:
                opt._settle_state(st)
            pad_p = [torch.zeros(_PAD_NUMEL, dtype=dtype, device=device) for _ in range(pad)]
            pad_g = [torch.zeros(_PAD_NUMEL, dtype=dtype, device=device) for _ in range(pad)]
            pad_st = {k: [flat(st[k], dummy) for st in pst] for k in keys}
        else:
            pad_p, pad_g, pad_st = [], [], {k: [] for k in keys}
        for a in range(lo, hi, size):
            b = min(a + size, hi)
            if not self.flatten and b - a < size:  # shaped tensors: the tail goes one by one
                for i in range(a, b):
                    self.chunks.append(Chunk(i, i + 1, self.fp[i:i + 1],
                                             {k: v[i:i + 1] for k, v in self.fst.items()}, [], 1, serial))
                continue
            m = size - (b - a)
            states = {k: v[a:b] + pad_st[k][:m] for k, v in self.fst.items()}
            self.chunks.append(Chunk(a, b, self.fp[a:b] + pad_p[:m], states, pad_g[:m], size, serial))

    def positions(self) -> list[tuple[dict[str, list], int, int | None, bool]]:
        """Every position of every chunk: (the chunk's state lists, the position in them, the tensor's index in
        this runner's order or None for padding, whether the chunk runs in the one-thread graph)."""
        return [(ch.states, q, ch.first + q if ch.first + q < ch.end else None, ch.serial) for ch in self.chunks
                for q in range(len(ch.params))]

    def run(self, cls: type, c: dict, mode: str, gs: list[Tensor], s: dict[str, Any]) -> None:
        names = tuple(k for k, v in s.items() if not isinstance(v, Tensor))
        packed = torch.tensor([float(s[k]) for k in names], dtype=self.cdtype, device=self.device)
        extra = {k: v.detach().to(device=self.device, dtype=self.cdtype)
                 for k, v in s.items() if isinstance(v, Tensor)}
        if not self.ordered:
            gs = [gs[i] for i in self.order]
        if self.flatten:  # the only per-tensor work of a step (~1 us each)
            fg = [g.view(-1).detach() if g.is_contiguous() else g.reshape(-1) for g in gs]
        else:
            fg = [g.detach() for g in gs]
        if self.hook is not None:
            self.hook.before(fg, s)
        done = self._call_chunks(cls, c, mode, names, fg, packed, extra)
        if done is not None:  # a chunk failed: its tensors and the later chunks' were not stepped
            err, end = done
            if self.hook is not None:
                self.hook.undo(set(range(end)))
            # for the caller: step the rest, and only the rest
            raise CompiledStepFailed(err, sorted(self.order[:end])) from err

    def _call_chunks(self, cls: type, c: dict, mode: str, names: tuple[str, ...], fg: list[Tensor],
                     packed: Tensor, extra: dict[str, Tensor]) -> tuple[Exception, int] | None:
        """Step every chunk; on an exception, return it with the number of tensors (in this runner's order) that the
        chunks before the failing one stepped."""
        if self.key != (cls, c, mode, names):  # the first step, or new constants: find each chunk's graph (again)
            self.graphs = [None] * len(self.chunks)
            self.key = (cls, dict(c), mode, names)
        tracing = torch.compiler.is_compiling()  # this step is being traced by dynamo: no bookkeeping
        direct = DIRECT and not tracing and _tp.direct_calls()
        if not self.flatten:  # shaped gradients: dynamo saw contiguous ones
            direct = direct and all(g.is_contiguous() for g in fg)
        for j, (a, b, cp, cst, pad_g, size, serial) in enumerate(self.chunks):  # (a Chunk)
            local = {"ps": cp, "gs": fg[a:b] + pad_g if pad_g else fg[a:b], "sts": cst, "packed": packed,
                     "extra": extra}
            graph = self.graphs[j]
            try:
                if direct and graph:
                    call, args = graph
                    call(*args(local))
                    continue
                fn = compiled_chunk(cls, c, mode, names, size, serial)
                with no_duck_shapes():
                    if not direct or graph is False:  # (a chunk without a graph of its own: no bookkeeping either)
                        fn(**local)
                        continue
                    found = _GRAPHS[_key(cls, c, mode, names, size, serial)].call(fn, local)  # sees what it compiles
            except Exception as err:
                return err, a
            if direct:
                self.graphs[j] = found or False
        return None
