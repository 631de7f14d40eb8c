"""Where the compiled step loses to torch's fused Adam: the kernel, or the cost of calling it.

Three measurements, each adamlab's compiled Adam against ``torch.optim.Adam(fused=True)`` in the same rounds:

* ``warm``: steps back to back on the 25M-parameter GPT set (the kernel, with the calling code in the caches);
* ``after other work``: a 120 MB streaming pass runs before every step, as a forward/backward pass would
  (the calling code and the optimizer's Python objects are then cold);
* ``overhead only``: the same 148 tensors at 2-128 elements each (nothing to compute: the calling cost alone);
* ``one tensor``: the same 24.8M parameters as one flat tensor (the kernel alone: one loop, one call).

    python benchmarks/call_overhead.py --rounds 25
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import adamlab
from adamlab.speed import gpt_shapes, make_params


def _tiny(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(max(2, s[-1] // 64), generator=g)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


def measure(make_ps, rounds: int, other_work) -> dict[str, float]:
    ours = adamlab.Adam(make_ps(), lr=1e-3, compiled=True)
    fused = torch.optim.Adam(make_ps(), lr=1e-3, fused=True)
    for opt in (ours, fused):  # compile, warm up
        for _ in range(3):
            opt.step()
    times: dict[str, list[float]] = {"adamlab": [], "fused": []}
    rng = random.Random(0)
    for _ in range(rounds):
        for name, opt in rng.sample([("adamlab", ours), ("fused", fused)], 2):
            other_work()
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    return {"adamlab_ms": 1e3 * statistics.median(times["adamlab"]),
            "fused_ms": 1e3 * statistics.median(times["fused"]),
            "ratio": statistics.median(f / a for f, a in zip(times["fused"], times["adamlab"]))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = gpt_shapes()
    grads = [p.grad for p in make_params(shapes, seed=1)]
    junk = [torch.rand(1000, 1000) for _ in range(30)]

    def nothing():
        pass

    def stream():
        for j in junk:
            j.mul_(1.0)

    def one_tensor():
        p = torch.nn.Parameter(torch.cat([q.detach().flatten() for q in make_params(shapes)]))
        p.grad = torch.cat([g.flatten() for g in grads])
        return [p]

    cases = [("one tensor, warm", one_tensor, nothing),
             ("warm", lambda: make_params(shapes, grads=grads), nothing),
             ("after other work", lambda: make_params(shapes, grads=grads), stream),
             ("overhead only, warm", lambda: _tiny(shapes, 0), nothing),
             ("overhead only, after other work", lambda: _tiny(shapes, 0), stream)]
    print(f"torch {torch.__version__}, {args.threads} threads, Adam on {len(shapes)} tensors "
          f"(x fused = fused time / adamlab time, median of per-round ratios)")
    for name, make_ps, work in cases:
        r = measure(make_ps, args.rounds, work)
        print(f"{name:34s} adamlab {r['adamlab_ms']:7.2f} ms   fused {r['fused_ms']:7.2f} ms   "
              f"x fused {r['ratio']:.2f}", flush=True)


if __name__ == "__main__":
    main()
