"""Pieces shared by the neural-network tasks: classification training, sharpness at the end."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import sharpness
from .base import RunResult, train_model


def train_classifier(model: torch.nn.Module, opt, *, x_train: torch.Tensor, y_train: torch.Tensor,
                     x_val: torch.Tensor, y_val: torch.Tensor, steps: int, batch: int, eval_every: int,
                     seed: int, final: bool, sharp_batch: int = 256) -> RunResult:
    """Minibatch cross-entropy training with a seeded sampler; held-out loss and accuracy on (x_val, y_val)."""
    gen = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    perm: list[torch.Tensor] = []

    def next_batch(step: int):
        nonlocal perm
        if not perm:  # reshuffle every epoch
            perm = list(torch.randperm(n, generator=gen).split(batch))
            if len(perm) > 1 and perm[-1].numel() < batch:
                perm.pop()
        idx = perm.pop(0)
        return x_train[idx], y_train[idx]

    def evaluate(m):
        logits = m(x_val)
        return {"val_loss": float(F.cross_entropy(logits, y_val)),
                "val_acc": float((logits.argmax(1) == y_val).float().mean())}

    res = train_model(model, opt, steps=steps, eval_every=eval_every, batch=next_batch,
                      loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]), evaluate=evaluate)
    if final and not res.diverged:
        model.eval()
        xs, ys = x_train[:sharp_batch], y_train[:sharp_batch]
        with torch.no_grad():
            res.extra["train_acc"] = float((model(x_train).argmax(1) == y_train).float().mean())
        res.extra["sharpness"] = sharpness(lambda: F.cross_entropy(model(xs), ys), list(model.parameters()))
    return res
