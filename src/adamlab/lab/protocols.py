"""The papers' own protocols, run beside the tuned one.

The tuned protocol gives every optimizer the same quasi-random budget and re-runs the best point over the
final seeds. The papers measured their claims differently, and a claim can hold under one protocol and not
another, so each of these is run too, on the same final seeds (the comparisons stay paired):

* ``untuned-lr1e-4`` (EXAdam's table): every optimizer at its defaults with lr 1e-4, on the CNN tasks.
* ``ademamix-paper``: AdEMAMix on AdamW's tuned setting with α = 8 and β3 = 0.9999, both warmups over the
  whole run (the AdEMAMix paper's recommendation, which reuses AdamW's hyperparameters).
* ``ademamix-short``: as above with β3 = 0.999 and no β3 warmup (found better for short runs by a later
  benchmark).
* ``adamcm-toy``: AdamCM on Adam's tuned setting with the toy experiments' buffer C = 5 and decay λ = 0.7,
  on the 2-D landscapes.

A protocol is data: where it applies and, per optimizer, the fixed setting as a function of the task and
of the tuned settings. Its runs are stored as final runs of the optimizer named ``OPT~PROTOCOL`` (trial −1).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SEP = "~"
TRIAL = -1  # the trial number protocol runs are stored under (no tuning trial made them)

Settings = Callable[[object, dict[str, dict], tuple[str, ...]], dict[str, dict]]


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    families: tuple[str, ...]          # task families it runs on
    settings: Settings                 # (task, tuned, optimizers) -> {optimizer: create_optimizer kwargs}
    tasks: tuple[str, ...] = ()        # only these tasks of those families (all when empty)
    baseline: str = "adam"             # what the report compares each of its runs with ...
    baseline_same_protocol: bool = False  # ... run under this protocol too (else: its tuned runs)


def _untuned(task, tuned, optimizers=()):
    return {o: {"lr": 1e-4} for o in optimizers}


def _ademamix(beta3: float, beta3_warmup: bool):
    def settings(task, tuned, optimizers=()):
        if "adamw" not in tuned or "ademamix" not in optimizers:
            return {}
        steps = int(task.config.get("steps", 1))
        base = {k: v for k, v in tuned["adamw"].items() if k in ("lr", "beta1", "beta2", "eps", "weight_decay")}
        p = {**base, "alpha": 8.0, "beta3": beta3, "alpha_warmup": steps}
        if beta3_warmup:
            p["beta3_warmup"] = steps
        return {"ademamix": p}
    return settings


def _adamcm_toy(task, tuned, optimizers=()):
    if "adam" not in tuned or "adamcm" not in optimizers:
        return {}
    return {"adamcm": {**tuned["adam"], "buffer_size": 5, "priority_decay": 0.7}}


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("untuned-lr1e-4", "every optimizer at its defaults with lr 1e-4, untuned (EXAdam's table)",
             ("vision",), _untuned, ("digits_cnn", "cifar10_cnn"), baseline_same_protocol=True),
    Protocol("ademamix-paper", "AdEMAMix on AdamW's tuned setting, α = 8, β3 = 0.9999, α and β3 warmups over the "
             "whole run (the AdEMAMix paper)", ("lm", "vision"), _ademamix(0.9999, True), baseline="adamw"),
    Protocol("ademamix-short", "AdEMAMix on AdamW's tuned setting, α = 8 with its warmup over the run, "
             "β3 = 0.999 without warmup (better for short runs)", ("lm",), _ademamix(0.999, False), baseline="adamw"),
    Protocol("adamcm-toy", "AdamCM on Adam's tuned setting with the toy experiments' C = 5, λ = 0.7",
             ("landscape",), _adamcm_toy),
)}


def variant(opt: str, protocol: str) -> str:
    """The optimizer name a protocol's runs are stored under."""
    return f"{opt}{SEP}{protocol}"


def split(name: str) -> tuple[str, str | None]:
    """('adamcm', 'adamcm-toy') for 'adamcm~adamcm-toy'; (name, None) for a plain optimizer."""
    opt, _, proto = name.partition(SEP)
    return opt, proto or None


def settings(protocol: str, task, tuned: dict[str, dict], optimizers: list[str]) -> dict[str, dict]:
    """{optimizer: params} the protocol runs on `task` (empty where it does not apply)."""
    p = PROTOCOLS[protocol]
    if task.family not in p.families or (p.tasks and task.name not in p.tasks):
        return {}
    return {o: dict(v) for o, v in p.settings(task, tuned, tuple(optimizers)).items() if o in optimizers}
