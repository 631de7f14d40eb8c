"""Suites: which tasks, how long each trains, and the tuning budget (trials per optimizer) and seeds.

`cost` is the measured seconds one run takes on one core of the 2-core reference machine, evaluation
included (used for the runtime estimate printed before a bench starts). The default suite is sized to finish
within 10 minutes on two cores (the CHANGELOG has the measurements). A suite may also name the papers'
protocols it runs (`protocols`), the tasks of its tuning-budget axis and their budgets (`budgets`), and sizes
of a task (an entry with a `base`: the scale axis).
"""
from __future__ import annotations

from .tasks import TASK_NAMES

_LANDSCAPE_DEFAULT = {"steps": 200, "eval_every": 5, "cost": 0.11}

SUITES: dict[str, dict] = {
    "smoke": {
        "trials": 2, "seeds": 2,
        "tasks": {
            "sharp_flat": {"steps": 60, "eval_every": 5, "cost": 0.02},
            "quadratic_deep": {"steps": 30, "eval_every": 10, "dim": 50, "cost": 0.02},
            "digits_mlp": {"steps": 30, "eval_every": 10, "hidden": 32, "cost": 0.03},
            "char_gpt": {"steps": 10, "eval_every": 5, "d": 16, "layers": 1, "block": 16, "batch": 8,
                         "val_batch": 16, "max_chars": 50_000, "cost": 0.06},
            "word_lm": {"steps": 20, "eval_every": 10, "vocab": 300, "d": 16, "batch": 32, "val_batch": 256,
                        "max_words": 20_000, "cost": 0.04},
            "cifar10_cnn": {"steps": 10, "eval_every": 5, "width": 4, "n_train": 256, "n_test": 128,
                            "batch": 32, "downsample": 4, "cost": 0.05},
        },
    },
    "default": {
        "trials": 8, "seeds": 3,
        "protocols": ["untuned-lr1e-4", "ademamix-paper", "ademamix-short", "adamcm-toy"],
        "budgets": {"trials": [4, 16], "tasks": ["quadratic_deep"]},
        "tasks": {
            **{name: dict(_LANDSCAPE_DEFAULT) for name in TASK_NAMES[:6]},
            "quadratic_deep": {"steps": 150, "eval_every": 10, "cost": 0.14},
            "digits_mlp": {"steps": 250, "eval_every": 25, "cost": 0.21},
            "digits_cnn": {"steps": 200, "eval_every": 25, "cost": 0.45},
            "char_gpt": {"steps": 120, "eval_every": 12, "cost": 1.35},
            "word_lm": {"steps": 250, "eval_every": 25, "val_batch": 1024, "cost": 0.85},
            "cifar10_cnn": {"steps": 120, "eval_every": 20, "n_test": 500, "width": 10, "cost": 0.9},
            # the scale axis: the char GPT at a smaller size beside the one above (a smaller word LM saves little
            # time here: its cost is the 2,000-word softmax, so it runs in the full suite only)
            "char_gpt_s": {"base": "char_gpt", "steps": 120, "eval_every": 12, "d": 24, "layers": 1, "cost": 0.5},
        },
    },
    "full": {
        "trials": 30, "seeds": 5,
        "protocols": ["untuned-lr1e-4", "ademamix-paper", "ademamix-short", "adamcm-toy"],
        "budgets": {"trials": [4, 8, 16, 60], "tasks": ["quadratic_deep", "digits_mlp", "digits_cnn"]},
        "tasks": {
            **{name: {"steps": 1000, "eval_every": 10, "cost": 0.3} for name in TASK_NAMES[:6]},
            "quadratic_deep": {"steps": 1000, "eval_every": 20, "cost": 0.7},
            "digits_mlp": {"steps": 2000, "eval_every": 50, "cost": 1.2},
            "digits_cnn": {"steps": 2000, "eval_every": 50, "width": 16, "cost": 6.0},
            "char_gpt": {"steps": 2000, "eval_every": 100, "d": 128, "layers": 4, "heads": 4, "block": 64,
                         "batch": 32, "cost": 150.0},
            "word_lm": {"steps": 3000, "eval_every": 100, "vocab": 5000, "d": 64, "hidden": 128, "cost": 25.0},
            "cifar10_cnn": {"steps": 3000, "eval_every": 100, "n_train": 50000, "n_test": 10000, "width": 32,
                            "downsample": 1, "batch": 128, "cost": 400.0},
            "char_gpt_s": {"base": "char_gpt", "steps": 2000, "eval_every": 100, "d": 64, "layers": 2, "heads": 2,
                           "block": 64, "batch": 32, "cost": 50.0},
            "char_gpt_l": {"base": "char_gpt", "steps": 2000, "eval_every": 100, "d": 256, "layers": 6, "heads": 8,
                           "block": 64, "batch": 32, "cost": 600.0},
            "word_lm_s": {"base": "word_lm", "steps": 3000, "eval_every": 100, "vocab": 5000, "d": 32, "hidden": 64,
                          "cost": 12.0},
            "word_lm_l": {"base": "word_lm", "steps": 3000, "eval_every": 100, "vocab": 5000, "d": 128,
                          "hidden": 256, "cost": 60.0},
        },
    },
}


def suite(name: str) -> dict:
    return SUITES[name]


def all_task_names() -> list[str]:
    """Every task any suite defines (the sizes of the scale axis included), in a stable order."""
    names = list(TASK_NAMES)
    for s in SUITES.values():
        names += [n for n in s["tasks"] if n not in names]
    return names
