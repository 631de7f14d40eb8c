"""Metrics: isotropy, mean-embedding ratio, sharpness, steps-to-target, performance profiles."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch


def isotropy(E) -> float:
    """Iso(E) = min_c Z(c) / max_c Z(c), Z(c) = sum_i exp(c^T e_i) over the raw rows of E [V, H].

    {c} are the unit eigenvectors of E^T E (Mu et al. 2018; Coupled Adam paper eq. 7-8). An eigenvector
    is only defined up to sign, and Z(c) != Z(-c), so both signs are taken: the score no longer depends on
    what sign the eigen-solver happens to return. Computed in float64 with a log-sum-exp.
    """
    E = torch.as_tensor(E).detach().to(torch.float64).cpu()
    _, vecs = torch.linalg.eigh(E.T @ E)
    dirs = torch.cat([vecs, -vecs], dim=1)  # [H, 2H]
    logz = torch.logsumexp(E @ dirs, dim=0)  # log Z(c) for every direction
    return float(torch.exp(logz.min() - logz.max()))


def mean_embedding_ratio(E) -> float:
    """||(1/V) sum_i e_i|| / ((1/V) sum_i ||e_i||): 0 for centred embeddings, 1 when all rows coincide."""
    E = torch.as_tensor(E).detach().to(torch.float64).cpu()
    return float(E.mean(0).norm() / E.norm(dim=1).mean())


def sharpness(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20,
              tol: float = 1e-4, seed: int = 0) -> float:
    """Largest Hessian eigenvalue of loss_fn() at params, by power iteration on Hessian-vector products.

    loss_fn must evaluate the loss on a fixed batch. Returns the Rayleigh quotient v^T H v of the final
    iterate (the eigenvalue of largest magnitude; for a minimum that is the top one).
    """
    params = [p for p in params if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    norm = math.sqrt(sum(float((x * x).sum()) for x in v))
    v = [x / norm for x in v]
    lam = 0.0
    for i in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        new = sum(float((a * b).sum()) for a, b in zip(hv, v))
        norm = math.sqrt(sum(float((x * x).sum()) for x in hv))
        if not math.isfinite(norm) or norm == 0.0:
            return new if math.isfinite(new) else float("nan")
        v = [x.detach() / norm for x in hv]
        if i > 0 and abs(new - lam) <= tol * max(1.0, abs(new)):
            return new
        lam = new
    return lam


def steps_to_target(steps: Sequence[float], values: Sequence[float], target: float) -> float:
    """First step at which values <= target (a loss); inf if never reached."""
    for s, v in zip(steps, values):
        if v is not None and math.isfinite(v) and v <= target:
            return float(s)
    return math.inf


def target_loss(initial: float, best: float, fraction: float = 0.9) -> float:
    """Loss `fraction` of the way from the initial loss to the best loss any optimizer reached."""
    return initial - fraction * (initial - best)


def performance_profile(times: Mapping[str, Mapping[str, float]], taus: Iterable[float]
                        ) -> dict[str, list[float]]:
    """AlgoPerf/Dolan-More profile. times[optimizer][task] = time (or steps) to target, inf if missed.

    rho_o(tau) = fraction of tasks where optimizer o reached the target within tau x the best optimizer's
    time on that task. Tasks that no optimizer solved count as unsolved for everybody.
    """
    opts = list(times)
    tasks = sorted({t for o in opts for t in times[o]})
    taus = list(taus)
    best = {t: min(times[o].get(t, math.inf) for o in opts) for t in tasks}
    out: dict[str, list[float]] = {}
    for o in opts:
        ratios = []
        for t in tasks:
            x = times[o].get(t, math.inf)
            if not math.isfinite(x):
                ratios.append(math.inf)
            elif best[t] <= 0:
                ratios.append(1.0 if x <= best[t] else math.inf)
            else:
                ratios.append(x / best[t])
        r = np.asarray(ratios)
        out[o] = [float(np.mean(r <= tau)) if tasks else 0.0 for tau in taus]
    return out
