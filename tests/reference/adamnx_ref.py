"""Port of AdamX's reference step: ``mengzhu0308/AdamNX``, ``adamnx/adamnx.py`` (class ``AdamNX``,
function ``_single_tensor_adamnx``), commit b68c319005c3aa5ab8d122a523b1b8d1f99aebb4.

What the reference does, kept here: a float32 ``step`` tensor per parameter, incremented first and read back with
``.item()`` (so the betas are computed from a Python float step); weight decay ``p *= 1 − lr·wd`` after the
increment and before the moments; ``exp_avg.lerp_(g, 1 − β1_t)`` with β1_t = (β1 − β1ᵗ)/(1 − β1ᵗ);
``exp_avg_sq.mul_(β2_t).addcmul_(g, g, 1 − β2_t)`` with β2_t = (1 − β2^((1−β2)(t−1)))/(1 − β2^((1−β2)t));
``p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=−lr)``. Dropped: the complex-number views, tensor
betas and the ``grad_scale``/``found_inf`` plumbing (unused by the reference's own step).
"""

import torch


class RefAdamNX(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

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
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_t += 1
                if wd != 0:
                    p.mul_(1 - lr * wd)
                step = step_t.item()
                beta1_t = (beta1 - beta1 ** step) / (1 - beta1 ** step)
                exp_avg.lerp_(grad, 1 - beta1_t)
                beta2_t = (1 - beta2 ** ((1 - beta2) * (step - 1))) / (1 - beta2 ** ((1 - beta2) * step))
                exp_avg_sq.mul_(beta2_t).addcmul_(grad, grad, value=1 - beta2_t)
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-lr)
