"""Signum (Bernstein et al. 2018, arXiv:1802.04434) written out directly, one tensor at a time, as
``tests/test_signum.py`` derives it: decoupled decay ``p *= 1 − lr·wd`` first, then ``m = β·m + (1 − β)·g`` (no
buffer when β = 0: signSGD) and ``p −= lr·sign(m)``; ``maximize`` negates g."""

import torch


class RefSignum(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                p.mul_(1 - lr * wd)
                if beta:
                    m = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    m.mul_(beta).add_(g, alpha=1 - beta)
                    d = m
                else:
                    d = g
                p.add_(torch.sign(d), alpha=-lr)
