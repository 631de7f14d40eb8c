"""DeepOBS `quadratic_deep`: a noisy quadratic whose Hessian has a deep-net-like eigenspectrum.

loss(θ; x) = ½ (θ − x)ᵀ H (θ − x) with x ~ N(0, I) per example. H = Q diag(λ) Qᵀ with 90 % of λ in U(0, 1)
and 10 % in U(30, 60) (Schneider et al. 2019), Q a fixed random rotation; θ₀ = 1. Training draws fresh
noise every step (batch 128 in DeepOBS); the held-out split is a fixed set of noise vectors.
"""
from __future__ import annotations

import torch

from .base import RunResult, Task, train_model


def deep_spectrum_hessian(dim: int, seed: int = 42) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n_big = max(1, dim // 10)
    eig = torch.cat([torch.rand(dim - n_big, generator=g, dtype=torch.float64),
                     30 + 30 * torch.rand(n_big, generator=g, dtype=torch.float64)])
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return (q * eig) @ q.T


class Quadratic(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.ones(dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        d = self.theta - x  # [B, dim]
        return 0.5 * ((d @ H) * d).sum(1).mean()


class QuadraticDeep(Task):
    name = "quadratic_deep"
    family = "quadratic"

    def __init__(self, **config):
        super().__init__(**config)
        self.dim = int(config.get("dim", 100))
        self.H = deep_spectrum_hessian(self.dim)
        g = torch.Generator().manual_seed(7)
        self.val_x = torch.randn(int(config.get("val_size", 1000)), self.dim, generator=g, dtype=torch.float64)
        self.description = (f"DeepOBS quadratic_deep: {self.dim}-d noisy quadratic, eigenvalues 90 % U(0,1) / "
                            f"10 % U(30,60); batch {config.get('batch', 128)}, {config.get('steps', 200)} steps")

    def top_eigenvalue(self) -> float:
        return float(torch.linalg.eigvalsh(self.H)[-1])

    def run(self, make_optimizer, seed: int, final: bool) -> RunResult:
        model = Quadratic(self.dim)
        opt = make_optimizer(model)
        gen = torch.Generator().manual_seed(seed)
        bs = int(self.config.get("batch", 128))
        H = self.H

        res = train_model(
            model, opt, steps=int(self.config.get("steps", 200)), eval_every=int(self.config.get("eval_every", 10)),
            batch=lambda step: torch.randn(bs, self.dim, generator=gen, dtype=torch.float64),
            loss=lambda m, x: m(x, H),
            evaluate=lambda m: {"val_loss": float(m(self.val_x, H))})
        # No sharpness here: the Hessian is H everywhere, so every optimizer would score top_eigenvalue().
        return res
