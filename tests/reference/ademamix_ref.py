"""Port of AdEMAMix's reference step: ``apple/ml-ademamix``, ``pytorch/ademamix.py``,
commit e7327151bbf2c812ae2c080de5491c685b6eb509.

What the reference does, kept here: an ``int`` step per parameter, incremented before use; the warmup schedules
evaluated at that incremented step (α linear from 0; β3 linear in the half-life f(β) = ln 0.5/ln(β + 1e-8) − 1
from f(β1) to f(β3)), each only while ``step < warmup``; with β1 = 0 no fast buffer (``exp_avg_fast = None``)
and m1 := g; the slow EMA never bias-corrected; ``denom = √ν/√(1 − β2ᵗ) + ε``;
``update = (m1/(1 − β1ᵗ) + α·m2)/denom + λ·θ`` (the decay term is added even when λ = 0); ``θ += −lr·update``.
"""

import math

import torch


def _linear_warmup(step, end, start=0, warmup=1):
    if step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * start + a * end
    return end


def _linear_half_life_warmup(step, end, start=0, warmup=1):
    def f(beta, eps=1e-8):
        return math.log(0.5) / math.log(beta + eps) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0 - a) * f(start) + a * f(end))
    return end


class RefAdEMAMix(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None,
                 alpha_warmup=None, eps=1e-8, weight_decay=0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, alpha=alpha, beta3_warmup=beta3_warmup,
                                      alpha_warmup=alpha_warmup, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, lmbda, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2, beta3_final = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg_fast"] = torch.zeros_like(p) if beta1 != 0.0 else None
                    state["exp_avg_slow"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                fast, slow, sq = state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]
                bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
                alpha = group["alpha"]
                if group["alpha_warmup"] is not None:
                    alpha = _linear_warmup(t, end=alpha, start=0, warmup=group["alpha_warmup"])
                beta3 = beta3_final
                if group["beta3_warmup"] is not None:
                    beta3 = _linear_half_life_warmup(t, end=beta3_final, start=beta1, warmup=group["beta3_warmup"])
                if beta1 != 0.0:
                    fast.mul_(beta1).add_(grad, alpha=1 - beta1)
                else:
                    fast = grad
                slow.mul_(beta3).add_(grad, alpha=1 - beta3)
                sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (sq.sqrt() / math.sqrt(bc2)).add_(eps)
                update = (fast.div(bc1) + alpha * slow) / denom
                update.add_(p, alpha=lmbda)
                p.add_(-lr * update)
