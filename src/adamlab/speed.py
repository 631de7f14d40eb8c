"""``adamlab speed``: how close each optimizer's step comes to the memory-bandwidth ceiling of the machine.

An optimizer step reads and writes every parameter and state tensor once, so the measure of an implementation is
its effective bandwidth (the bytes the algorithm must move, divided by the step time) as a fraction of what a
streaming kernel with the same reads and writes reaches in the same run. For every adamlab optimizer and path
(``loop``, ``foreach``, ``compiled``) it reports, on a transformer-shaped set (~25M fp32 parameters in 148
tensors) and on many small tensors (2,000 x 1,000): the median step time, bytes moved per parameter, GB/s, the
fraction of the ceiling, the first-step cost (state allocation plus compilation; inductor's FX graph cache makes
later processes cheaper), graphs compiled after warm-up (should be 0), and the speed relative to ``torch.optim``
(foreach and fused) and ``pytorch_optimizer`` (if installed) where they implement the same algorithm.

Every measurement is interleaved: one round steps the ceiling kernel, then each implementation once, and ratios are
medians of per-round ratios, so the load of a shared machine cancels out as far as it can.

Usage: ``adamlab speed [--quick] [--threads N] [--optimizers adam,ademamix] [--paths compiled] [--out DIR]``,
or ``python benchmarks/speed.py ...``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

PATHS = ("loop", "foreach", "compiled")
_PATH_FLAGS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "compiled": dict(compiled=True)}


# ---------------------------------------------------------------------- parameter sets
def gpt_shapes(d: int = 384, layers: int = 12, vocab: int = 8192, ctx: int = 1024) -> list[tuple[int, ...]]:
    """The parameter shapes of a GPT-2-style transformer (tied embedding, biases, LayerNorms)."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,),  # ln1, attention qkv and projection
                   (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # ln2, MLP
    return shapes + [(d,), (d,)]


def param_sets(quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if quick:
        return {"gpt": gpt_shapes(64, 2, 512, 64), "small": [(100,)] * 40}
    return {"gpt": gpt_shapes(), "small": [(1000,)] * 2000}


def make_params(shapes, dtype=torch.float32, device="cpu", seed: int = 0, grads=None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).to(device=device, dtype=dtype).requires_grad_() for s in shapes]
    for i, p in enumerate(ps):
        p.grad = grads[i] if grads is not None else torch.randn(p.shape, generator=g).to(device=device, dtype=dtype)
    return ps


# ---------------------------------------------------------------------- optimizers and baselines
def adamlab_names() -> list[str]:
    try:
        from .registry import list_optimizers

        return list(list_optimizers())
    except ImportError:  # pragma: no cover - the registry predates this module
        return ["sgd", "adam", "adamw"]


def make_adamlab(name: str, params: list[torch.Tensor], path: str, **kw):
    """Optimizer ``name`` on one path over a parameter set, grouped as its registry row says
    (:attr:`~adamlab.registry.OptimInfo.bench_groups`: Coupled Adam couples the token embedding only, as the
    param-group helper does for a real model)."""
    from .registry import create_optimizer, get_optimizer_info

    bench_groups = get_optimizer_info(name).bench_groups
    groups: Any = bench_groups(params) if bench_groups is not None else params
    return create_optimizer(name, groups, **_PATH_FLAGS[path], **kw)


def _baseline_class(module: Any, name: str, which: str) -> tuple[type, dict] | None:
    from .registry import get_optimizer_info

    try:
        base = getattr(get_optimizer_info(name), which)
    except ValueError:  # not a registry name: no baseline
        return None
    if base is None:
        return None
    return getattr(module, base.class_name), dict(base.kwargs)


def torch_baselines(name: str) -> dict[str, Callable]:
    """``torch.optim`` implementations of the same algorithm (foreach and fused), where torch has it (the registry
    row's :attr:`~adamlab.registry.OptimInfo.torch_equivalent`)."""
    found = _baseline_class(torch.optim, name, "torch_equivalent")
    if found is None:
        return {}
    cls, kw = found
    out = {"torch-foreach": lambda ps: cls(ps, foreach=True, **kw)}
    if "fused" in cls.__init__.__code__.co_varnames:
        out["torch-fused"] = lambda ps: cls(ps, fused=True, **kw)
    return out


def po_baselines(name: str) -> dict[str, Callable]:
    """``pytorch_optimizer``'s versions (optional), with adamlab's default hyperparameters (the registry row's
    :attr:`~adamlab.registry.OptimInfo.pytorch_optimizer`)."""
    try:
        import pytorch_optimizer as po
    except ImportError:
        return {}
    found = _baseline_class(po, name, "pytorch_optimizer")
    if found is None:
        return {}
    cls, kw = found
    return {"po": lambda ps: cls(ps, foreach=False, **kw), "po-foreach": lambda ps: cls(ps, foreach=True, **kw)}


# ---------------------------------------------------------------------- bytes moved
def traffic(opt, name: str | None = None) -> tuple[int, int, int]:
    """(bytes read, bytes written, parameter elements) of one step: the algorithm's minimum for adamlab's state
    layout. Every tensor shaped like the parameter is read and written once; a ``[C, *shape]`` buffer is read
    whole (the buffer mean) and one slot is written; what an optimizer reads beyond that (a gradient norm of
    AdamCM/AdamCG priorities reads the gradient once more; CoupledAdam's mean over the vocabulary makes its coupled
    tensors read the momentum twice) its class declares (``_extra_reads``). ``name`` is not needed (kept for old
    callers)."""
    extra = getattr(opt, "_extra_reads", None)  # a torch.optim or pytorch_optimizer baseline declares none
    r = w = n = 0
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            b = p.numel() * p.element_size()
            gb = p.numel() * p.grad.element_size()
            n += p.numel()
            r += b + gb
            w += b
            st = opt.state.get(p, {})
            for k, t in st.items():
                if not isinstance(t, torch.Tensor) or k == "step":
                    continue
                if t.shape == p.shape:
                    r += t.nbytes
                    w += t.nbytes
                elif t.dim() == p.dim() + 1 and t.shape[1:] == p.shape:
                    r += t.nbytes
                    w += t.nbytes // t.shape[0]
            if extra is not None:
                r += extra(group, p, st)
    return r, w, n


# ---------------------------------------------------------------------- the ceiling
_CEILINGS: dict[tuple, Callable] = {}


def _rmw_body(xs):
    k_w = _K_W  # noqa: F821 (a global injected per compiled copy of this template)
    acc = xs[0]
    for x in xs[1:]:
        acc = acc + x
    acc = acc * (1.0 / len(xs))  # an average: the values stay bounded however many steps run
    for i in range(k_w):
        xs[i].copy_(acc)


class Ceiling:
    """A streaming kernel over flat arrays of ``n`` elements that reads ``k_r`` arrays and writes ``k_w`` of them
    in place, the same bytes as the optimizer with nothing to compute: compiled (one pass) where a compiler works,
    else the eager ``a.mul_(b)`` stream over the same bytes."""

    def __init__(self, k_r: int, k_w: int, n: int, device, compiled: bool) -> None:
        self.k_r, self.k_w, self.n = k_r, k_w, n
        self.compiled = compiled
        if compiled:
            key = (k_r, k_w, n, str(device))
            if key not in _CEILINGS:  # one code object per kernel, so that no kernel recompiles another's
                import types

                code = _rmw_body.__code__.replace(co_name=f"ceiling_{k_r}r_{k_w}w_{len(_CEILINGS)}")
                body = types.FunctionType(code, dict(_rmw_body.__globals__, _K_W=k_w), code.co_name)
                _CEILINGS[key] = torch.compile(body, fullgraph=True, dynamic=False)
            self.fn = _CEILINGS[key]
            self.xs = [torch.rand(n, device=device) for _ in range(k_r)]
            self.bytes = 4 * n * (k_r + k_w)
        else:
            m = n * (k_r + k_w) // 3
            self.xs = [torch.rand(m, device=device), torch.rand(m, device=device)]
            self.bytes = 12 * m

    def step(self) -> None:
        if self.compiled:
            self.fn(self.xs)
        else:
            self.xs[0].mul_(self.xs[1])


# ---------------------------------------------------------------------- measurement
@dataclass
class Row:
    set: str
    optimizer: str
    impl: str  # "loop" / "foreach" / "compiled" (adamlab) or a baseline name
    ms: float = float("nan")
    bytes_per_param: float = float("nan")
    gbps: float = float("nan")
    ceiling_gbps: float = float("nan")
    frac_ceiling: float = float("nan")
    first_step_s: float = float("nan")
    graphs_first_step: int | None = None  # graphs compiled by the first step (and warm-up)
    graphs_after_warmup: int | None = None  # graphs compiled during the timed steps: should be 0
    state_bytes_per_param: float | None = None
    vs: dict[str, float] = field(default_factory=dict)  # baseline -> (baseline time / this time), same rounds
    error: str | None = None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _graphs() -> int | None:
    """Graphs dynamo has compiled in this process; None where this torch does not say (the table shows "-")."""
    from .optim._torch_private import graph_count

    return graph_count()


def _since(g0: int | None) -> int | None:
    """Graphs compiled since :func:`_graphs` gave ``g0``; None where unknown."""
    g = _graphs()
    return None if g is None or g0 is None else g - g0


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench_optimizer(name: str, set_name: str, shapes, paths, device, repeats: int, warmup: int,
                    with_baselines: bool, compiler: bool, log=print) -> list[Row]:
    """All implementations of one optimizer on one parameter set, interleaved with their ceiling kernel."""
    grads = [p.grad for p in make_params(shapes, device=device, seed=1)]  # shared, read-only
    makers: dict[str, Callable] = {p: (lambda ps, p=p: make_adamlab(name, ps, p)) for p in paths}
    if with_baselines:
        makers.update(torch_baselines(name))
        makers.update(po_baselines(name))
    opts: dict[str, Any] = {}
    rows: dict[str, Row] = {}
    for impl, make in makers.items():
        row = rows[impl] = Row(set_name, name, impl)
        try:
            ps = make_params(shapes, device=device, seed=0, grads=grads)
            opt = make(ps)
            g0 = _graphs()
            row.first_step_s = _timed(opt.step, device)
            for _ in range(warmup):
                opt.step()
            row.graphs_first_step = _since(g0)
            opts[impl] = opt
        except Exception as err:  # an optimizer that fails here is reported, not fatal
            row.error = f"{type(err).__name__}: {err}"[:200]
            log(f"  {set_name}/{name}/{impl}: {row.error}")
    if not opts:
        return list(rows.values())
    ref = opts[paths[-1]] if paths and paths[-1] in opts else next(iter(opts.values()))
    r, w, n = traffic(ref)
    k_r, k_w = max(1, round(r / (4 * n))), max(1, round(w / (4 * n)))
    ceil = Ceiling(k_r, k_w, n, device, compiler)
    for _ in range(2):
        ceil.step()
    times: dict[str, list[float]] = {k: [] for k in opts}
    ctimes: list[float] = []
    graphs: dict[str, int | None] = {k: 0 for k in opts}
    order = ["ceiling"] + list(opts)
    rng = random.Random(0)
    for _ in range(repeats):
        # a fresh order every round: a step pays for writing back the previous step's dirty cache lines, so no
        # implementation may always follow the same one
        rng.shuffle(order)
        for impl in order:
            if impl == "ceiling":
                ctimes.append(_timed(ceil.step, device))
                continue
            g = _graphs()
            times[impl].append(_timed(opts[impl].step, device))
            d = _since(g)
            graphs[impl] = None if d is None or graphs[impl] is None else graphs[impl] + d
    from .optim._lowp import state_bytes

    bpp = (r + w) / n
    for impl, opt in opts.items():
        row = rows[impl]
        ts = times[impl]
        row.ms = 1e3 * statistics.median(ts)
        row.bytes_per_param = bpp
        row.gbps = (r + w) / statistics.median(ts) / 1e9
        row.ceiling_gbps = ceil.bytes / statistics.median(ctimes) / 1e9
        row.frac_ceiling = statistics.median(((r + w) / t) / (ceil.bytes / c) for t, c in zip(ts, ctimes))
        row.graphs_after_warmup = graphs[impl]
        if impl in PATHS:
            try:
                row.state_bytes_per_param = state_bytes(opt).per_param
            except Exception:  # pragma: no cover
                pass
            for base in opts:
                if base not in PATHS:
                    row.vs[base] = statistics.median(b / t for b, t in zip(times[base], ts))
        row.first_step_s = row.first_step_s - statistics.median(ts)
    del opts, ceil
    gc.collect()
    return list(rows.values())


# ---------------------------------------------------------------------- output
def _fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)


def table(rows: list[Row]) -> str:
    bases = sorted({b for r in rows for b in r.vs})
    head = ["set", "optimizer", "impl", "ms/step", "B/param", "GB/s", "ceiling", "%ceil", "first s", "graphs"]
    head += [f"x {b}" for b in bases]
    lines = [head]
    for r in rows:
        if r.error:
            lines.append([r.set, r.optimizer, r.impl, "error: " + r.error])
            continue
        line = [r.set, r.optimizer, r.impl, _fmt(r.ms, ".2f"), _fmt(r.bytes_per_param, ".0f"), _fmt(r.gbps, ".1f"),
                _fmt(r.ceiling_gbps, ".1f"), _fmt(100 * r.frac_ceiling, ".0f"), _fmt(r.first_step_s, ".2f"),
                _fmt(r.graphs_after_warmup, "d")]
        line += [_fmt(r.vs.get(b), ".2f") for b in bases]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines if i < len(row) and not row[-1].startswith("error"))
              for i in range(len(head))]
    out = []
    for row in lines:
        if len(row) == 4 and row[3].startswith("error"):
            out.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]), row[3]]))
        else:
            out.append("  ".join(c.rjust(wd) if i >= 3 else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths))))
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r.set for r in rows}, key=lambda s: s != "gpt")
    fig, axes = plt.subplots(len(sets), 1, figsize=(13, 4.2 * len(sets)), squeeze=False)
    for ax, s in zip(axes[:, 0], sets):
        rs = [r for r in rows if r.set == s and not r.error]
        names = list(dict.fromkeys(r.optimizer for r in rs))
        impls = list(dict.fromkeys(r.impl for r in rs))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for i, n in enumerate(names):
                for r in rs:
                    if r.optimizer == n and r.impl == impl:
                        xs.append(i + (j - (len(impls) - 1) / 2) * width)
                        ys.append(100 * r.frac_ceiling)
            ax.bar(xs, ys, width, label=impl)
        ax.axhline(100, color="k", lw=0.8)
        ax.axhline(85, color="r", lw=0.8, ls="--", label="85 % target")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel("% of streaming ceiling")
        ax.set_title(f"{s}: effective bandwidth of one optimizer step (same-run ceiling = 100 %)")
        ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), load=os.getloadavg() if hasattr(os, "getloadavg") else None,
                date=_dt.datetime.now().isoformat(timespec="seconds"))


# ---------------------------------------------------------------------- CLI
def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, checked: a bad one is a one-line error (exit status 2) before anything runs or is written."""
    from .cli import Parser

    ap = Parser(prog="adamlab speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--optimizers", default=None, help="comma-separated registry names (default: all)")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated: loop,foreach,compiled")
    ap.add_argument("--sets", default="gpt,small", help="comma-separated parameter sets: gpt,small")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (for tests)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15, quick 3)")
    ap.add_argument("--no-baselines", action="store_true", help="skip torch.optim / pytorch_optimizer")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="compile into an empty inductor cache (cold first-step cost)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default="speed-results", help="directory for speed.json and speed.png")
    args = ap.parse_args(argv)
    for opt, value, known in (("--optimizers", args.optimizers, adamlab_names()), ("--paths", args.paths, PATHS),
                              ("--sets", args.sets, list(param_sets(True)))):
        if value is None:  # --optimizers: all
            continue
        names = _split(value)
        if not names:
            ap.error(f"{opt}: no names given; choose from {', '.join(known)}")
        for n in names:
            if n not in known:
                ap.error(f"{opt}: unknown name {n!r}; choose from {', '.join(known)}")
    for opt, n in (("--threads", args.threads), ("--repeats", args.repeats)):
        if n is not None and n < 1:
            ap.error(f"{opt} {n}: must be at least 1")
    try:
        torch.empty(1, device=args.device)
    except Exception as e:  # noqa: BLE001 - unknown device, or one this torch or machine does not have
        ap.error(f"--device {args.device}: {(str(e).strip() or type(e).__name__).splitlines()[0][:200]}")
    from .errors import LabError
    from .lab.files import check_out

    try:
        check_out(args.out)
    except LabError as e:
        ap.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fresh_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="adamlab-speed-inductor-")
    from .optim._base import compiler_available

    names = _split(args.optimizers) or adamlab_names()
    paths = _split(args.paths)
    sets = param_sets(args.quick)
    chosen = _split(args.sets)
    repeats = args.repeats or (3 if args.quick else 15)
    compiler = compiler_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"adamlab speed: {info['cpu']}, {info['cores']} cores, {info['threads']} threads, torch {info['torch']}, "
          f"device {args.device}, compiler {'yes' if compiler else 'no'}, load {info['load']}", flush=True)
    rows: list[Row] = []
    for s in chosen:
        shapes = sets[s]
        n = sum(torch.Size(x).numel() for x in shapes)
        print(f"set {s}: {len(shapes)} tensors, {n / 1e6:.2f}M parameters", flush=True)
        for name in names:
            t0 = time.perf_counter()
            rs = bench_optimizer(name, s, shapes, paths, args.device, repeats, 1 if args.quick else 2,
                                 not args.no_baselines, compiler)
            rows += rs
            best = max((r for r in rs if r.impl in PATHS and not r.error), key=lambda r: r.frac_ceiling, default=None)
            if best is not None:
                print(f"  {name:12s} best {best.impl:8s} {best.ms:8.2f} ms  {100 * best.frac_ceiling:4.0f} % of ceiling"
                      f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = table(rows)
    print(text)
    (out / "speed.json").write_text(json.dumps(dict(machine=info, args=vars(args), rows=[asdict(r) for r in rows]),
                                               indent=1))
    (out / "speed.txt").write_text(text + "\n")
    if not args.no_plot:
        plot(rows, out / "speed.png")
    print(f"wrote {out / 'speed.json'}, {out / 'speed.txt'}" + ("" if args.no_plot else f", {out / 'speed.png'}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
