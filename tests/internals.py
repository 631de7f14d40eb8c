"""The one place the tests reach into adamlab's engine (its private plans, compiled runners and per-step scalars).

When the engine changes, change these helpers, not the tests that use them.
"""

from __future__ import annotations

from typing import Any

import torch


def chunk_runners(opt: torch.optim.Optimizer) -> list:
    """The compiled path's chunk runners of ``opt``, every param group's, in plan order (those that have one)."""
    return [part.runner for plan in opt._plans.values() for part in plan.parts if part.runner is not None]


def group_runner(opt: torch.optim.Optimizer, group: int = 0, part: int = 0):
    """The chunk runner of part ``part`` of param group ``group``'s plan (None if it has none)."""
    return opt._plans[id(opt.param_groups[group])].parts[part].runner


def step_scalars(opt: torch.optim.Optimizer, step: int, group: int = 0) -> dict[str, Any]:
    """The per-step scalars the rule gets at step ``step`` (1-based) for param group ``group``."""
    return opt._scalars(opt.param_groups[group], step)


def auto_compile_numel() -> int:
    """The bucket size from which the default ('auto') path compiles."""
    from adamlab.optim import _base

    return _base._AUTO_COMPILE_NUMEL


def record_compiled_runs(monkeypatch, record) -> None:
    """Replace the compiled path's per-bucket call with ``record(opt, params)`` (nothing is stepped)."""
    from adamlab.optim import _base

    monkeypatch.setattr(_base.AdamlabOptimizer, "_run_compiled", lambda self, ps, *a, **k: record(self, ps))
