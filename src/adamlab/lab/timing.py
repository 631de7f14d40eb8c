"""Step-time overhead, measured fairly: an interleaved micro-benchmark of optimizer.step() per task.

Training-run timings are kept (they give time-to-target) but they are taken while other workers, and
other programs, share the CPU. Here every optimizer steps the same task's parameters with the same fixed
gradients, in rounds that rotate the order, in one process after the pool is done; the median over all timed
steps is the optimizer's step time. The forward/backward time is the same for every optimizer, so a whole
training step is that (pooled from the training runs) plus the measured optimizer step.

An optimizer that steps only through a closure (SAM) is given one that puts the fixed gradients back, with no
forward or backward pass: its time here is its own arithmetic (perturbing, restoring, the base step), not its
second forward/backward, which only its training runs' step times include. An optimizer with train/eval modes
(schedule-free) is put in train mode first.
"""
from __future__ import annotations

import copy
import time
from statistics import median

import torch

from . import space
from .comparators import capabilities
from .tasks import Task


class _Captured(Exception):
    pass


def capture_parameters(task: Task, seed: int = 0):
    """The model (or parameter list) a task would hand its optimizer, without training it."""
    box = {}

    def grab(model):
        box["model"] = model
        raise _Captured

    try:
        task.run(grab, seed, False)
    except _Captured:
        pass
    return box["model"]


def _params(model) -> list[torch.Tensor]:
    return list(model.parameters()) if isinstance(model, torch.nn.Module) else list(model)


def _fixed_gradients(params: list[torch.Tensor], grads: list[torch.Tensor]):
    """A closure that gives every parameter its fixed gradient again (no forward or backward pass)."""
    def closure():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return None
    return closure


def step_times(task: Task, params_by_opt: dict[str, dict], rounds: int = 5, steps: int = 10) -> dict[str, float]:
    """Median seconds per optimizer.step() for each optimizer, on `task`'s parameters."""
    proto = capture_parameters(task)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-3 for p in _params(proto)]
    names = list(params_by_opt)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model = copy.deepcopy(proto)
            for p, g in zip(_params(model), grads):
                p.grad = g.clone()
            opt = space.build_optimizer(name, model, params_by_opt[name])
            caps = capabilities(opt)
            if caps.train_eval:
                opt.train()
            closure = _fixed_gradients(_params(model), grads) if caps.needs_closure else None
            with torch.no_grad():
                opt.step(closure)  # state initialisation is not part of the steady-state cost
                for _ in range(steps):  # each step timed alone: the median shrugs off preemption spikes
                    t0 = time.perf_counter()
                    opt.step(closure)
                    times[name].append(time.perf_counter() - t0)
    return {n: float(median(ts)) for n, ts in times.items()}
