"""Low-precision parameters and optimizer state: the maths runs in float32, storage may be narrower.

* ``state_dtype`` (per-state dtype policy): e.g. ``torch.bfloat16`` stores every moment-like state tensor
  (one shaped like the parameter) in bf16, halving state memory; a mapping ``{"exp_avg_sq": torch.float32}``
  chooses per state name (``"*"`` for the rest). The policy is the loading optimizer's: ``load_state_dict``
  casts saved tensors to it.
* ``param_update`` for bf16/fp16 parameters: ``"nearest"`` (round to nearest), ``"kahan"`` (compensated summation:
  the rounding error of each update is kept in a ``kahan_comp`` state tensor and added to the next one) or
  ``"stochastic"`` (bf16 only: unbiased stochastic rounding of the float32 result).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

_LOW = (torch.bfloat16, torch.float16)
_MODES = ("nearest", "kahan", "stochastic")


def resolve_state_dtype(state_dtype: torch.dtype | Mapping[str, torch.dtype] | None) -> dict[str, torch.dtype]:
    if state_dtype is None:
        return {}
    if isinstance(state_dtype, torch.dtype):
        policy = {"*": state_dtype}
    elif isinstance(state_dtype, Mapping):
        policy = dict(state_dtype)
    else:
        raise TypeError(f"state_dtype must be a torch.dtype, a mapping of state name to dtype, or None; "
                        f"got {type(state_dtype).__name__}")
    for k, v in policy.items():
        if not isinstance(v, torch.dtype) or not v.is_floating_point:
            raise ValueError(f"Invalid state_dtype[{k!r}]: {v!r} (expected a floating-point torch.dtype)")
    return policy


def stochastic_round_bf16(x: Tensor) -> Tensor:
    """Round float32 ``x`` to bf16 up or down with probability given by the distance (unbiased)."""
    bits = x.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


class LowPrecision:
    """Runs a per-tensor rule in float32 when the parameter or a state tensor is stored narrower."""

    def __init__(self, mode: str = "nearest") -> None:
        if mode not in _MODES:
            raise ValueError(f"Invalid param_update: {mode!r} (expected one of {_MODES})")
        self.mode = mode

    def apply(self, rule, o, p: Tensor, g: Tensor, st: dict, s: dict, c: dict) -> None:
        comp = st.pop("kahan_comp", None)
        low = p.dtype in _LOW
        cd = torch.float32 if low else p.dtype
        # (a state entry that is not a tensor, like the compiled AdamCM's tuple of buffer rows, is the rule's own)
        cast = [k for k, v in st.items() if isinstance(v, Tensor) and v.is_floating_point() and v.dtype != cd]
        if not low and not cast:
            rule(o, p, g, st, s, c)
            if comp is not None:
                st["kahan_comp"] = comp
            return
        st32 = dict(st)
        for k in cast:
            st32[k] = st[k].to(cd)
        x = p.to(cd)
        x_new = x.clone()
        rule(o, x_new, g.to(cd), st32, s, c)
        for k in cast:
            st[k].copy_(st32[k])
        if not low:
            p.copy_(x_new)
        elif self.mode == "kahan" and comp is not None:
            u = (x_new - x) + comp.to(cd)
            p_new = (x + u).to(p.dtype)
            comp.copy_(u - (p_new.to(cd) - x))
            p.copy_(p_new)
        elif self.mode == "stochastic" and p.dtype == torch.bfloat16:
            p.copy_(stochastic_round_bf16(x_new))
        else:
            p.copy_(x_new)
        if comp is not None:
            st["kahan_comp"] = comp


class StateBytes(NamedTuple):
    """Bytes of optimizer state: ``per_element`` counts the tensors that grow with a parameter (shaped like it, or
    ``[k, *p.shape]`` like AdamCM's buffer), ``fixed`` the rest (step counters, priorities, counts)."""

    per_element: int
    fixed: int
    numel: int  # parameter elements that have state

    @property
    def total(self) -> int:
        return self.per_element + self.fixed

    @property
    def per_param(self) -> float:
        """Bytes of state per parameter element (the ``per_element`` part: 8 for fp32 Adam, 4 with bf16 state)."""
        return self.per_element / self.numel if self.numel else 0.0


def state_bytes(optimizer) -> StateBytes:
    """How much memory an optimizer's state takes, per parameter element and in total."""
    per = fixed = numel = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            numel += p.numel()
            for k, v in st.items():
                if not isinstance(v, Tensor):
                    continue
                if k != "step" and (v.shape == p.shape or v.dim() == p.dim() + 1 and v.shape[1:] == p.shape):
                    per += v.nbytes
                else:
                    fixed += v.nbytes
    return StateBytes(per, fixed, numel)
