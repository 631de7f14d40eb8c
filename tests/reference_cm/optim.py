"""Port of chandar-lab/CMOptimizer ``Adam_CM`` / ``Adam_C`` and their ``TensorList`` priority buffer."""

import math
from copy import deepcopy

import torch
from torch.optim import Optimizer


class TensorList(dict):
    """The reference's priority buffer: ``k`` slots, priorities ``_heap_key``, values ``_heap``, running sum."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aggr_sum = None
        self.smallest = 0

    def size(self):
        return self.curr_k

    def set_hyper(self, decay_rate=0.5, K=5, dtype=None):
        self.k = K
        self.curr_k = 0
        self.decay_rate = decay_rate
        self.dtype = dtype

    def add_item(self, key, val, alpha=1):
        if self.k == 0:
            return
        if self.dtype is not None:
            val = val.to(dtype=self.dtype)
        if self.is_full():
            self._heap = self._heap.to(val.device)
            self.aggr_sum.add_(-self._heap[self.smallest])
            self._heap_key[self.smallest] = key
            self._heap[self.smallest] = val
        else:
            if self.curr_k == 0:
                self._heap_key = torch.zeros(self.k, device=key.device, dtype=key.dtype)
                self._heap = torch.zeros(self.k, *val.shape, device=val.device, dtype=val.dtype)
            self._heap_key[self.curr_k] = key
            self._heap[self.curr_k] = val
            self.curr_k += 1
        if self.aggr_sum is None:
            self.aggr_sum = torch.zeros_like(val)
        self.aggr_sum.add_(val, alpha=alpha)

    def poke_smallest(self):
        self.smallest = torch.argmin(self._heap_key)
        return self._heap_key[self.smallest]

    def decay(self):
        self._heap_key = torch.mul(self._heap_key, self.decay_rate)

    def is_full(self):
        return self.curr_k == self.k

    def __len__(self):
        return self.curr_k


class Adam_CM(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, decay=0.7, kappa=1.0, topC=5,
                 weight_decay=0, synced=True):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, kappa=kappa, topC=topC,
                        decay=decay, synced=synced)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            grad_norm = 0.0
            if group['synced']:
                for p in group['params']:
                    if p.grad is None:
                        continue
                    d_p = p.grad.data
                    grad_norm += torch.sqrt(torch.sum(torch.square(d_p)))

            for p in group['params']:
                if p.grad is None:
                    continue
                if group['weight_decay'] != 0:
                    p.mul_(1 - group['lr'] * group['weight_decay'])
                grad = p.grad.data
                if not group['synced']:
                    grad_norm = grad.norm()
                kappa = group['kappa']
                decay = group['decay']
                topc = group['topC']
                state = self.state[p]
                beta1, beta2 = group['betas']
                exp_avg = None

                if len(state) == 0 or ('critical gradients' not in state or len(state['critical gradients']) == 0):
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p.data)
                    exp_avg = state['exp_avg']
                    state['exp_avg_sq'] = torch.zeros_like(p.data)
                    if kappa > 0.:
                        state['critical gradients'] = TensorList()
                        state['critical gradients'].set_hyper(decay_rate=decay, K=topc, dtype=None)
                        state['critical gradients'].add_item(grad_norm, deepcopy(grad))
                else:
                    exp_avg = state['exp_avg']
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    if kappa > 0.:
                        aggr_mean = state['critical gradients'].aggr_sum.div(state['critical gradients'].size())
                        aggr_grad = torch.add(exp_avg, aggr_mean)
                        if state['critical gradients'].is_full():
                            if grad_norm > state['critical gradients'].poke_smallest():
                                state['critical gradients'].add_item(grad_norm, deepcopy(exp_avg))
                        else:
                            state['critical gradients'].add_item(grad_norm, deepcopy(exp_avg))
                        exp_avg = aggr_grad

                exp_avg_sq = state['exp_avg_sq']
                state['step'] += 1
                bias_correction1 = 1 - beta1 ** state['step']
                bias_correction2 = 1 - beta2 ** state['step']
                exp_avg_sq.mul_(beta2).addcmul_(exp_avg, exp_avg, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
                step_size = group['lr'] / bias_correction1
                state['critical gradients'].decay()
                p.addcdiv_(exp_avg, denom, value=-step_size)


class Adam_C(Optimizer):
    """``Adam_C`` (aggregation "sum" only, as in the reference); see :func:`aggregate` for the ICLR'22 variants."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, decay=0.7, kappa=1.0, topC=10,
                 weight_decay=0, synced=True, aggr="sum"):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, kappa=kappa, topC=topC,
                        decay=decay, synced=synced, aggr=aggr)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            grad_norm = 0.0
            if group['synced']:
                for p in group['params']:
                    if p.grad is None:
                        continue
                    d_p = p.grad.data
                    grad_norm += torch.sqrt(torch.sum(torch.square(d_p)))

            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad.data
                if not group['synced']:
                    grad_norm = grad.norm()
                kappa = group['kappa']
                decay = group['decay']
                topc = group['topC']
                state = self.state[p]

                if len(state) == 0 or ('critical gradients' not in state or len(state['critical gradients']) == 0):
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p.data)
                    state['exp_avg_sq'] = torch.zeros_like(p.data)
                    if kappa > 0.:
                        state['critical gradients'] = TensorList()
                        state['critical gradients'].set_hyper(decay_rate=decay, K=topc, dtype=None)
                        state['critical gradients'].add_item(grad_norm, deepcopy(grad))
                else:
                    if kappa > 0.:
                        aggr_grad = aggregate(grad, state['critical gradients'], group['aggr'])
                        if state['critical gradients'].is_full():
                            if grad_norm > state['critical gradients'].poke_smallest():
                                state['critical gradients'].add_item(grad_norm, deepcopy(grad))
                        else:
                            state['critical gradients'].add_item(grad_norm, deepcopy(grad))
                    grad = aggr_grad

                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                beta1, beta2 = group['betas']
                state['step'] += 1
                bias_correction1 = 1 - beta1 ** state['step']
                bias_correction2 = 1 - beta2 ** state['step']
                if group['weight_decay'] != 0:
                    grad = grad.add(p.data, alpha=group['weight_decay'])  # the reference's deprecated add(wd, p)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
                step_size = group['lr'] / bias_correction1
                state['critical gradients'].decay()
                p.addcdiv_(exp_avg, denom, value=-step_size)


def aggregate(d_p, crit_buf, func):
    """CMOptimizer's ``Adam_C`` line ``torch.add(grad, aggr_sum.div(size))`` ("sum"), and the ICLR'22
    CGOptimizer ``aggregate`` variants "mid" and "mean" (kappa = 1), computed from the buffer's running sum."""
    if func == "sum":
        return torch.add(d_p, crit_buf.aggr_sum.div(crit_buf.size()))
    if func == "mid":
        return torch.mul(torch.add(d_p, crit_buf.aggr_sum.div(crit_buf.size())), 0.5)
    if func == "mean":
        return torch.div(torch.add(d_p, crit_buf.aggr_sum), crit_buf.size() + 1)
    raise ValueError("Invalid aggregation function")
