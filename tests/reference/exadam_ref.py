"""Port of EXAdam's reference step: ``AhmedMostafa16/EXAdam``, ``exadam.py`` (MIT licence).

* v2 (``dynamic_step_size=False``): commit 5ad536f7fbb1fa7e6b275851b106fa442aefad88, constant step size ``lr``.
* v1 (``dynamic_step_size=True``): commit 9ff8463903924bf5f71efb0b5e49a95f0edc2c4c, step size
  ``lr * np.log(np.sqrt(step + 1) * np.sqrt(2.0))`` computed with numpy, as there.

What the reference does, kept here: weight decay ``p += (lr * -wd) * p`` first (before the state is created),
an ``int`` step per parameter, m and v updated with ``mul_``/``add_``/``addcmul_``, ε inside d1/d2 and outside
the square root, and ``p += -step_size * (m̃ + g̃) / (√ṽ + ε)``. Fixed: the current file uses ``np`` without
importing numpy (it fails to construct); this port imports it.
"""

import numpy as np
import torch


class RefEXAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, dynamic_step_size=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.dynamic_step_size = dynamic_step_size
        self.sqrt_2 = np.sqrt(2.0)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if wd != 0.0:
                    p.add_(p, alpha=lr * -wd)
                if len(state) == 0:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                m, v = state["m"], state["v"]
                state["step"] += 1
                t = state["step"]
                beta1_t, beta2_t = beta1 ** t, beta2 ** t
                bc1, bc2 = 1 - beta1_t, 1 - beta2_t
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                d1 = 1 + v.div(v + eps) * beta2_t
                d2 = 1 + m.pow(2).div(m.pow(2) + eps) * beta1_t
                m_tilde = m.div(bc1) * d1
                v_tilde = v.div(bc2) * d2
                g_tilde = grad.div(bc1) * d1
                step_size = lr * np.log(np.sqrt(t + 1) * self.sqrt_2) if self.dynamic_step_size else lr
                p.add_(-step_size * (m_tilde + g_tilde) / (v_tilde.sqrt() + eps))
