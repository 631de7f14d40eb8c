"""Port of flxst/coupled-adam ``CoupledAdam`` (its ``_multi_tensor_adamw`` path)."""

import math

import torch
from torch.optim import Optimizer


class CoupledAdam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, avg_scale=1.0, weight_decay=1e-2,
                 *, maximize=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)
        self.avg_scale = avg_scale

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                params.append(p)
                grads.append(p.grad)
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if params:
                _multi_tensor_adamw(params, grads, exp_avgs, exp_avg_sqs, steps, beta1=beta1, beta2=beta2,
                                    lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                                    avg_scale=self.avg_scale, maximize=group["maximize"])


def _multi_tensor_adamw(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, beta1, beta2, lr, weight_decay, eps,
                        avg_scale, maximize):
    device_params, device_grads = params, grads
    device_exp_avgs, device_exp_avg_sqs = exp_avgs, list(exp_avg_sqs)
    if maximize:
        device_grads = torch._foreach_neg(device_grads)
    torch._foreach_add_(state_steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    if weight_decay != 0:
        torch._foreach_mul_(device_params, 1 - lr * weight_decay)
    torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta1)
    torch._foreach_mul_(device_exp_avg_sqs, beta2)
    torch._foreach_addcmul_(device_exp_avg_sqs, device_grads, device_grads, 1 - beta2)
    del device_grads
    bias_correction1 = [1 - beta1 ** step.item() for step in state_steps]
    bias_correction2 = [1 - beta2 ** step.item() for step in state_steps]
    step_size = [(lr / bc) * -1 for bc in bias_correction1]
    bias_correction2_sqrt = [math.sqrt(bc) for bc in bias_correction2]  # _dispatch_sqrt
    ### COUPLED ADAM START
    for i in range(len(device_exp_avg_sqs)):
        tensor = device_exp_avg_sqs[i]  # shape = [V, H]
        mean_tensor = avg_scale * torch.mean(tensor, dim=0)  # shape = [H]
        mean_tensor_broadcasted = torch.broadcast_to(mean_tensor, tensor.shape)  # shape = [V, H]
        device_exp_avg_sqs[i] = mean_tensor_broadcasted
    ### COUPLED ADAM END
    exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)
    torch._foreach_div_(exp_avg_sq_sqrt, bias_correction2_sqrt)
    torch._foreach_add_(exp_avg_sq_sqrt, eps)
    torch._foreach_addcdiv_(device_params, device_exp_avgs, exp_avg_sq_sqrt, step_size)
