"""What a task is, what a run returns, and the one training loop every neural-network task shares."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import DataError
from ..comparators import capabilities

Curve = list  # list of (step, seconds of training so far, value)


@dataclass
class RunResult:
    curves: dict[str, Curve]
    initial_val_loss: float
    final_val_loss: float
    best_val_loss: float
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    diverged: bool = False
    steps: int = 0
    train_time: float = 0.0
    step_time: float = 0.0
    opt_step_time: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in ("initial_val_loss", "final_val_loss", "best_val_loss", "final_val_acc",
                                              "best_val_acc", "diverged", "steps", "train_time", "step_time",
                                              "opt_step_time")}


class Task:
    """A small training problem with a train and a held-out split.

    Subclasses set `name`, `family` ('landscape', 'quadratic', 'vision', 'lm'), `description`, and implement
    `run(make_optimizer, seed, final)`. `config` (the suite's knobs) and the content of the data files fully
    determine the results, and their hash keys the stored runs, so changing a knob or editing a data file
    never mixes old and new numbers. Tasks on user data name the config keys holding file paths in
    `path_keys` (the hash covers the files' content, not their names) and implement `data_files`.
    """

    name = "task"
    family = "nn"
    description = ""
    has_accuracy = False
    lr_key = "lr"
    path_keys: tuple[str, ...] = ()

    def __init__(self, **config: Any):
        self.config = dict(config)

    def available(self) -> tuple[bool, str]:
        """Whether the data is there at all (a task whose data is absent is skipped)."""
        return True, ""

    def check(self) -> None:
        """Raise DataError (one line naming the file and the problem) if the data cannot make this task.
        Called before any training, so that broken data fails its task instead of counting as divergence."""

    def data_files(self) -> list[str]:
        return []

    @functools.cached_property
    def data_digest(self) -> str | None:
        """sha256 of the data files' bytes (read once per task object), None for a task without files."""
        files = self.data_files()
        return file_digest(files) if files else None

    @property
    def hash(self) -> str:
        key = {k: v for k, v in self.config.items() if k not in self.path_keys}
        if self.data_digest is not None:
            key["data_sha256"] = self.data_digest
        blob = json.dumps({"task": self.name, **key}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def run(self, make_optimizer: Callable[[Any], torch.optim.Optimizer], seed: int, final: bool) -> RunResult:
        raise NotImplementedError

    def cost(self) -> float:
        """Rough seconds per run on one core of this 2-core machine (for the runtime estimate)."""
        return float(self.config.get("cost", 0.5))


def file_digest(files: Iterable[str]) -> str:
    """sha256 over the files' sizes and bytes, in order (their names do not matter, their content does)."""
    h = hashlib.sha256()
    for file in files:
        try:
            with open(file, "rb") as f:
                h.update(f"{os.fstat(f.fileno()).st_size}\0".encode())
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise DataError(f"cannot read {file}: {e.strerror or e}") from None
    return h.hexdigest()


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def train_model(model: torch.nn.Module, opt: torch.optim.Optimizer, *, steps: int, eval_every: int,
                batch: Callable[[int], Any], loss: Callable[[torch.nn.Module, Any], torch.Tensor],
                evaluate: Callable[[torch.nn.Module], dict], probes: dict[str, Any] | None = None,
                probe_from: dict[str, int] | None = None, clip: float | None = None) -> RunResult:
    """Train for `steps`, evaluating the held-out split every `eval_every` steps (and at 0 and the end).

    Only forward/backward/step is timed (evaluation excluded), so the `time` column of a curve is training
    seconds, the AlgoPerf clock. `probes` are fixed batches whose loss is tracked (forgetting curves), each
    from step probe_from[name] on. A non-finite or exploding loss stops the run and marks it diverged.

    The optimizer's capabilities (:func:`adamlab.lab.comparators.capabilities`) are honoured: one that needs a
    closure steps through ``opt.step(closure)`` (the closure zeroes the gradients, computes the batch's loss,
    backpropagates and clips; the loss recorded is its first evaluation, and the optimizer's time counts from the
    end of that first evaluation, so a second forward/backward, SAM's, is the optimizer's cost); one with
    train/eval modes gets ``opt.train()`` before the first step, ``opt.eval()`` before every evaluation and
    ``opt.train()`` after it, and ``opt.eval()`` once more at the end, so the model it returns holds the
    evaluation point (schedule-free's average), as its final metrics are taken there.
    """
    caps = capabilities(opt)
    probes = probes or {}
    probe_from = probe_from or {}
    curves: dict[str, Curve] = {"train_loss": [], "val_loss": []}
    elapsed = opt_time = 0.0
    running, count = 0.0, 0

    def do_eval(step: int) -> dict:
        if caps.train_eval:
            opt.eval()
        model.eval()
        with torch.no_grad():
            ev = evaluate(model)
            for name, b in probes.items():
                if step >= probe_from.get(name, 0):
                    curves.setdefault(name, []).append((step, elapsed, float(loss(model, b))))
        model.train()
        if caps.train_eval:
            opt.train()
        for k, v in ev.items():
            curves.setdefault(k, []).append((step, elapsed, float(v)))
        return ev

    first = do_eval(0)
    initial = float(first["val_loss"])
    diverged = False
    step = 0
    if caps.train_eval:
        opt.train()
    for step in range(1, steps + 1):
        b = batch(step)
        t0 = time.perf_counter()
        if caps.needs_closure:
            marks: list[float] = []

            def closure(b=b, marks=marks):
                opt.zero_grad(set_to_none=True)
                lc = loss(model, b)
                lc.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                marks.append(time.perf_counter())
                return lc

            lv = opt.step(closure)
            t2 = time.perf_counter()
            t1 = marks[0] if marks else t0
        else:
            opt.zero_grad(set_to_none=True)
            lv = loss(model, b)
            lv.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
        elapsed += t2 - t0
        opt_time += t2 - t1
        lf = float(lv.detach())
        if not math.isfinite(lf) or lf > 1e3 * max(1.0, abs(initial)):
            diverged = True
            break
        running += lf
        count += 1
        if step % eval_every == 0 or step == steps:
            curves["train_loss"].append((step, elapsed, running / count))
            running, count = 0.0, 0
            ev = do_eval(step)
            if not _finite(ev["val_loss"]):
                diverged = True
                break
    if caps.train_eval:
        opt.eval()
    vals = [v for _, _, v in curves["val_loss"] if _finite(v)]
    accs = [v for _, _, v in curves.get("val_acc", [])]
    n = max(step, 1)
    return RunResult(
        curves=curves, initial_val_loss=initial,
        final_val_loss=math.inf if diverged else curves["val_loss"][-1][2],
        best_val_loss=min(vals) if vals else math.inf,
        final_val_acc=(None if not accs else (accs[0] if diverged else accs[-1])),
        best_val_acc=max(accs) if accs else None, diverged=diverged, steps=step,
        train_time=elapsed, step_time=elapsed / n, opt_step_time=opt_time / n)


def seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
