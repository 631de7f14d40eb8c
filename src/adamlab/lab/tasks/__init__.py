"""The lab's tasks. `build_tasks` makes them from a suite's configuration."""
from __future__ import annotations

from ...errors import DataError
from .base import RunResult, Task
from .charlm import CharLM
from .cifar import Cifar10Task
from .digits import DigitsCNNTask, DigitsMLPTask
from .embeddings import WordLMTask
from .landscapes import LANDSCAPES, LandscapeTask
from .quadratic import QuadraticDeep

TASK_NAMES = [*LANDSCAPES, "quadratic_deep", "digits_mlp", "digits_cnn", "char_gpt", "word_lm", "cifar10_cnn"]


def build_task(name: str, config: dict, *, text: str | None = None, cifar_dir: str | None = None) -> Task:
    """The task `name` of a suite. A suite entry with a `base` key is a size of that task (the scale axis):
    it runs the base task with its own knobs under its own name."""
    if "base" in config:
        config = dict(config)
        task = build_task(config.pop("base"), config, text=text, cifar_dir=cifar_dir)
        task.name = name
        return task
    if name in LANDSCAPES:
        return LandscapeTask(name, **config)
    if name == "quadratic_deep":
        return QuadraticDeep(**config)
    if name == "digits_mlp":
        return DigitsMLPTask(**config)
    if name == "digits_cnn":
        return DigitsCNNTask(**config)
    if name == "char_gpt":
        return CharLM(text=text, **config)
    if name == "word_lm":
        return WordLMTask(text=text, **config)
    if name == "cifar10_cnn":
        return Cifar10Task(data_dir=cifar_dir, **config)
    raise KeyError(name)


__all__ = ["Task", "RunResult", "DataError", "TASK_NAMES", "build_task"]
