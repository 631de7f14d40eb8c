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
parameter group and bucket, in :class:`ChunkRunner`; a step only flattens the gradients.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import Tensor

from . import _ops
from ._lowp import LowPrecision

#: tensors per compiled call: the compile time grows with it (cold inductor cache, Adam: 16 -> 7 s, 32 -> 16 s,
#: 64 -> 39 s), the per-call overhead shrinks with it: ~75 us with warm caches, but ~400 us in a real step, where
#: the forward and backward passes have evicted dynamo's and the wrappers' Python objects from the caches
#: (25M-parameter GPT, Adam, 2 threads: 10 calls 25.4 ms, 5 calls 23.6 ms, 1 call 21.4 ms)
CHUNK = 16
BIG_CHUNK = 32  # for buckets of more than CHUNK tensors
_PAD_NUMEL = 2  # sizes 0 and 1 are specialised by dynamo; 2 is the smallest generic size

_COMPILED: dict[tuple, Callable] = {}

#: Inductor decides at compile time, from the sizes it first sees, which loops run in parallel; one graph serves
#: every size here, so in the graph for big tensors every loop is parallel (a big tensor never runs on one thread),
#: and the graph for small tensors (under SMALL_NUMEL elements, on a CPU) has no parallel loop at all (no barrier
#: per small tensor).
_INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True, "size_asserts": False, "emulate_precision_casts": True}
_SERIAL_OPTIONS = {"cpp.threads": 1, "size_asserts": False, "emulate_precision_casts": True}

#: on a CPU, tensors of fewer elements take the one-thread graph (torch's CPU kernels split work at 32768 too)
SMALL_NUMEL = 1 << 15


def is_compiler_failure(err: Exception) -> bool:
    mods = {type(e).__module__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return any(m.startswith(("torch._dynamo", "torch._inductor")) for m in mods)


class no_duck_shapes:
    """Compile chunks shape-generically without equating equal sizes (one graph for any mix of sizes), with the
    symbolic-shape guards compiled to C++ (checked on every call: in Python they cost ~15 us per call)."""

    def __enter__(self):
        import torch._dynamo.config as dynamo_config
        import torch.fx.experimental._config as fx_config

        self._cfgs = (fx_config, dynamo_config)
        self._old = (fx_config.use_duck_shape, dynamo_config.enable_cpp_symbolic_shape_guards)
        fx_config.use_duck_shape = False
        dynamo_config.enable_cpp_symbolic_shape_guards = True

    def __exit__(self, *exc):
        fx_config, dynamo_config = self._cfgs
        fx_config.use_duck_shape, dynamo_config.enable_cpp_symbolic_shape_guards = self._old
        return False


def _chunk_body(ps, gs, sts, packed, extra):  # the template whose code object is copied per configuration
    s = {k: packed[i] for i, k in enumerate(_NAMES)}
    s.update(extra)
    for i in range(len(ps)):
        _APPLY(_RULE, _OPS, ps[i], gs[i], {k: v[i] for k, v in sts.items()}, s, _CONSTS)


def compiled_chunk(cls: type, c: dict, mode: str, names: tuple[str, ...], size: int = CHUNK,
                   serial: bool = False) -> Callable:
    """One compiled function per (optimizer class, constants, rounding mode, scalar names, chunk size, serial),
    each with its own code object, so that every configuration keeps its own compile cache and never evicts
    another's. ``serial``: compiled for one thread (no parallel loops, no barriers)."""
    key = (cls, tuple(sorted(c.items())), mode, names, size, serial)
    fn = _COMPILED.get(key)
    if fn is None:
        lowp = LowPrecision(mode)
        glb = dict(_chunk_body.__globals__)
        glb.update(_APPLY=lowp.apply, _RULE=cls._rule, _OPS=_ops.C, _CONSTS=dict(c), _NAMES=names)
        code = _chunk_body.__code__.replace(co_name=f"{cls.__name__}_step_{len(_COMPILED)}")
        body = types.FunctionType(code, glb, code.co_name)
        fn = torch.compile(body, fullgraph=True, dynamic=True, options=_SERIAL_OPTIONS if serial else _INDUCTOR_OPTIONS)
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
        self.chunks = []  # (first, end, params, states, padding, chunk size, serial)
        for serial, lo, hi in ((True, 0, len(small)), (False, len(small), n)):
            if hi > lo:
                self._add_part(opt, group, keys, dtype, device, serial, lo, hi)

    def _add_part(self, opt, group, keys, dtype, device, serial: bool, lo: int, hi: int) -> None:
        size = CHUNK if hi - lo <= CHUNK else BIG_CHUNK
        pad = (-(hi - lo)) % size if self.flatten else 0
        if pad:
            dummy = torch.zeros(_PAD_NUMEL, dtype=dtype, device=device)
            pst = [opt._new_state(dummy, group) for _ in range(pad)]
            pad_p = [torch.zeros(_PAD_NUMEL, dtype=dtype, device=device) for _ in range(pad)]
            pad_g = [torch.zeros(_PAD_NUMEL, dtype=dtype, device=device) for _ in range(pad)]
            pad_st = {k: [flat(st[k], dummy) for st in pst] for k in keys}
        else:
            pad_p, pad_g, pad_st = [], [], {k: [] for k in keys}
        for a in range(lo, hi, size):
            b = min(a + size, hi)
            if not self.flatten and b - a < size:  # shaped tensors: the tail goes one by one
                for i in range(a, b):
                    self.chunks.append((i, i + 1, self.fp[i:i + 1], {k: v[i:i + 1] for k, v in self.fst.items()},
                                        [], 1, serial))
                continue
            m = size - (b - a)
            self.chunks.append((a, b, self.fp[a:b] + pad_p[:m], {k: v[a:b] + pad_st[k][:m] for k, v in self.fst.items()},
                                pad_g[:m], size, serial))

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
        fns: dict[tuple[int, bool], Callable] = {}
        with no_duck_shapes():
            for a, b, cp, cst, pad_g, size, serial in self.chunks:
                fn = fns.get((size, serial))
                if fn is None:
                    fn = fns[size, serial] = compiled_chunk(cls, c, mode, names, size, serial)
                fn(cp, fg[a:b] + pad_g if pad_g else fg[a:b], cst, packed, extra)
