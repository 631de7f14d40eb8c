"""scikit-learn's bundled 8x8 digits (1,797 images, no download): an MLP and a small CNN."""
from __future__ import annotations

import functools

import torch
from torch import nn

from .base import RunResult, Task
from .common import train_classifier


@functools.lru_cache(maxsize=1)
def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 0.1  # standardise with training statistics only
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], 64))


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 4, 10))

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], 1, 8, 8))


class _Digits(Task):
    family = "vision"
    has_accuracy = True

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def run(self, make_optimizer, seed: int, final: bool) -> RunResult:
        xtr, ytr, xte, yte = load_digits_split()
        torch.manual_seed(seed)
        model = self.make_model()
        opt = make_optimizer(model)
        return train_classifier(model, opt, x_train=xtr, y_train=ytr, x_val=xte, y_val=yte,
                                steps=int(self.config.get("steps", 300)), batch=int(self.config.get("batch", 64)),
                                eval_every=int(self.config.get("eval_every", 25)), seed=seed, final=final)


class DigitsMLPTask(_Digits):
    name = "digits_mlp"

    def __init__(self, **config):
        super().__init__(**config)
        self.description = (f"sklearn digits (1437 train / 360 held out), MLP 64-{config.get('hidden', 64)}-"
                            f"{config.get('hidden', 64)}-10, batch {config.get('batch', 64)}, {config.get('steps', 300)} steps")

    def make_model(self):
        return DigitsMLP(int(self.config.get("hidden", 64)))


class DigitsCNNTask(_Digits):
    name = "digits_cnn"

    def __init__(self, **config):
        super().__init__(**config)
        w = config.get("width", 8)
        self.description = (f"sklearn digits, CNN conv{w}-pool-conv{2 * w}-pool-linear, batch {config.get('batch', 64)}, "
                            f"{config.get('steps', 300)} steps")

    def make_model(self):
        return DigitsCNN(int(self.config.get("width", 8)))
