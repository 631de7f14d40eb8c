"""2-D test landscapes: the classic benchmark functions plus a sharp-vs-flat minimum (AdamCM's escape test).

There is no data here, so the "held-out" loss is the function itself, minus its global minimum. What varies
with the seed is the start: a fixed start plus a small seeded jitter. Every run records its path, so the
report can draw all optimizers on one contour plot, and whether it ended in the global basin.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..comparators import capabilities
from ..metrics import sharpness
from .base import RunResult, Task

TWO_PI = 2 * math.pi


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def ackley(x, y):
    r = torch.sqrt(0.5 * (x**2 + y**2) + 1e-12)
    return (-20 * torch.exp(-0.2 * r) - torch.exp(0.5 * (torch.cos(TWO_PI * x) + torch.cos(TWO_PI * y)))
            + math.e + 20)


def goldstein_price(x, y):
    a = 1 + (x + y + 1) ** 2 * (19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2)
    b = 30 + (2 * x - 3 * y) ** 2 * (18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2)
    return a * b


def beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def rastrigin(x, y):
    return 20 + x**2 - 10 * torch.cos(TWO_PI * x) + y**2 - 10 * torch.cos(TWO_PI * y)


SHARP, FLAT = (-1.0, 0.0), (1.5, 0.5)


def sharp_flat(x, y):
    """A narrow minimum (width 0.1, depth 1) next to a wide, deeper one (width 0.7, depth 1.2) in a bowl."""
    ds = (x - SHARP[0]) ** 2 + (y - SHARP[1]) ** 2
    df = (x - FLAT[0]) ** 2 + (y - FLAT[1]) ** 2
    return 1.25 - torch.exp(-ds / (2 * 0.1**2)) - 1.2 * torch.exp(-df / (2 * 0.7**2)) + 0.02 * (x**2 + y**2)


@dataclass(frozen=True)
class Landscape:
    fn: Callable
    start: tuple[float, float]
    minimum: tuple[float, float]
    basin_radius: float
    box: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax for the contour plot
    jitter: float = 0.1
    sharp: tuple[float, float] | None = None  # centre of the sharp basin to escape (sharp_flat only)


LANDSCAPES = {
    "rosenbrock": Landscape(rosenbrock, (-1.2, 1.0), (1.0, 1.0), 0.1, (-2, 2, -1, 3)),
    "ackley": Landscape(ackley, (1.8, 2.2), (0.0, 0.0), 0.3, (-3.5, 3.5, -3.5, 3.5)),
    "goldstein_price": Landscape(goldstein_price, (-1.2, 0.3), (0.0, -1.0), 0.2, (-2, 2, -2, 2), 0.05),
    "beale": Landscape(beale, (1.0, 1.4), (3.0, 0.5), 0.2, (-4.5, 4.5, -4.5, 4.5)),
    "rastrigin": Landscape(rastrigin, (2.2, 2.4), (0.0, 0.0), 0.3, (-3.5, 3.5, -3.5, 3.5)),
    "sharp_flat": Landscape(sharp_flat, (-0.93, 0.05), FLAT, 0.5, (-2, 3, -1.5, 2), 0.03, sharp=SHARP),
}


def global_min(spec: Landscape) -> float:
    x, y = (torch.tensor(v, dtype=torch.float64) for v in spec.minimum)
    if spec.fn is sharp_flat:  # the bowl shifts the flat minimum slightly: refine numerically
        p = torch.tensor(spec.minimum, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([p], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            v = spec.fn(p[0], p[1])
            v.backward()
            return v
        opt.step(closure)
        return float(spec.fn(p[0], p[1]).detach())
    return float(spec.fn(x, y))


class LandscapeTask(Task):
    family = "landscape"

    def __init__(self, name: str, **config):
        super().__init__(**config)
        self.name = name
        self.spec = LANDSCAPES[name]
        self.description = (f"2-D {name.replace('_', '-')} function from ({self.spec.start[0]}, {self.spec.start[1]}) "
                            f"± {self.spec.jitter}; {config.get('steps', 300)} full-gradient steps")
        self.f_star = global_min(self.spec)

    def start(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.tensor(self.spec.start, dtype=torch.float64) + self.spec.jitter * torch.randn(2, generator=g,
                                                                                                  dtype=torch.float64)

    def value(self, p: torch.Tensor) -> torch.Tensor:
        return self.spec.fn(p[0], p[1]) - self.f_star

    def run(self, make_optimizer, seed: int, final: bool) -> RunResult:
        steps = int(self.config.get("steps", 300))
        every = int(self.config.get("eval_every", 5))
        p = torch.nn.Parameter(self.start(seed))
        opt = make_optimizer([p])
        caps = capabilities(opt)  # SAM steps through a closure; schedule-free is evaluated at its average
        initial = float(self.value(p.detach()))
        curve = [(0, 0.0, initial)]
        path = [p.detach().tolist()]
        elapsed = opt_time = 0.0
        diverged = False
        step = 0

        def closure():
            opt.zero_grad(set_to_none=True)
            v = self.value(p)
            v.backward()
            return v

        def evaluated() -> float:
            if caps.train_eval:
                opt.eval()
            v = float(self.value(p.detach()))
            if caps.train_eval:
                opt.train()
            return v

        if caps.train_eval:
            opt.train()
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            if caps.needs_closure:
                t1 = t0
                opt.step(closure)
            else:
                closure()
                t1 = time.perf_counter()
                opt.step()
            t2 = time.perf_counter()
            elapsed += t2 - t0
            opt_time += t2 - t1
            q = p.detach()
            if not bool(torch.isfinite(q).all()) or float(q.abs().max()) > 1e4:
                diverged = True
                break
            path.append(q.tolist())
            if step % every == 0 or step == steps:
                curve.append((step, elapsed, evaluated()))
        if caps.train_eval:
            opt.eval()
            path[-1] = p.detach().tolist()
        final_v = math.inf if diverged else float(self.value(p.detach()))
        vals = [c[2] for c in curve if math.isfinite(c[2])]
        end = torch.tensor(path[-1], dtype=torch.float64)
        dist = float((end - torch.tensor(self.spec.minimum, dtype=torch.float64)).norm())
        extra = {"reached_global": bool(not diverged and dist < self.spec.basin_radius),
                 "end": path[-1], "distance_to_min": dist}
        if self.spec.sharp is not None:
            d_sharp = float((end - torch.tensor(self.spec.sharp, dtype=torch.float64)).norm())
            extra["escaped_sharp"] = bool(diverged is False and d_sharp > 0.3)
        if final and not diverged:
            q = torch.nn.Parameter(end.clone())
            extra["sharpness"] = sharpness(lambda: self.value(q), [q], iters=50, tol=1e-10)
        if final:
            extra["path"] = [[round(a, 5), round(b, 5)] for a, b in path[:: max(1, len(path) // 200)]]
        n = max(step, 1)
        return RunResult(curves={"val_loss": curve}, initial_val_loss=initial, final_val_loss=final_v,
                         best_val_loss=min(vals) if vals else math.inf, diverged=diverged, steps=step,
                         train_time=elapsed, step_time=elapsed / n, opt_step_time=opt_time / n, extra=extra)
