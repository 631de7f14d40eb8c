"""SAM (Foret et al., 2021) and ASAM (Kwon et al., 2021): sharpness-aware minimisation around a base optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from ._base import check_bool, check_range

__all__ = ["SAM"]


class SAM(Optimizer):
    r"""Sharpness-aware minimisation: the base optimizer's step from θ, with the gradient taken at θ + ε.

    .. math::
        \epsilon = \rho\,\frac{g}{\lVert g\rVert_2}
        \quad\text{(ASAM, ``adaptive=True``: } \epsilon = \rho\,\frac{T^2 g}{\lVert T g\rVert_2},\ T = |\theta|\text{)};
        \quad \theta \leftarrow \text{base step from } \theta \text{ with } \nabla L(\theta + \epsilon)

    The norm is the global one, over every parameter of every group (``rho`` and ``adaptive`` may differ per
    group; the norm is shared). ``step(closure)`` needs the closure: it calls it twice, at θ (its loss is what
    ``step`` returns) and at θ + ε. The closure computes the loss and calls ``backward()``; it should zero the
    gradients first, as for any closure (SAM zeroes them itself before the second call). A parameter without a
    gradient at θ is not perturbed; θ is restored exactly (a saved copy) before the base step.

    The base optimizer is built here, ``base_optimizer_cls(param_groups, **base_kwargs)``, on the same param-group
    dicts: an LR scheduler on the SAM object changes the base's learning rate, ``state`` is the base's state, and
    ``state_dict()`` / ``load_state_dict()`` are the base's (its param groups also carry ``rho`` and ``adaptive``).
    A base with ``maximize=True`` in a group is perturbed along −g (the ascent direction of what it maximises).

    Paper: Pierre Foret, Ariel Kleiner, Hossein Mobahi, Behnam Neyshabur, "Sharpness-Aware Minimization for
    Efficiently Improving Generalization", ICLR 2021, arXiv:2010.01412; ASAM: Jungmin Kwon et al., ICML 2021,
    arXiv:2102.11600 (with T = |θ|, as in the widely used ``davda54/sam`` code).

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> opt = SAM(model.parameters(), adamlab.Adam, rho=0.05, lr=1e-3)
        >>> x, y = torch.randn(8, 4), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(self, params, base_optimizer_cls: type[Optimizer] | None = None, rho: float = 0.05,
                 adaptive: bool = False, **base_kwargs: Any) -> None:
        check_range("rho", rho, 0.0)
        check_bool("adaptive", adaptive)
        if base_optimizer_cls is None:
            from .adam import Adam

            base_optimizer_cls = Adam
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, Optimizer)):
            raise TypeError(f"base_optimizer_cls must be a torch.optim.Optimizer subclass, got {base_optimizer_cls!r}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        for group in self.param_groups:
            check_range("rho", group["rho"], 0.0)
            check_bool("adaptive", group["adaptive"])
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.defaults.update(self.base_optimizer.defaults)
        self._share()

    def _share(self) -> None:
        """Point this object's groups and state at the base's (``load_state_dict`` gives the base new ones)."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base_optimizer" not in self.__dict__:  # (torch's __init__, before the base exists)
            super().add_param_group(param_group)
            return
        param_group = dict(param_group)
        param_group.setdefault("rho", self.defaults["rho"])
        param_group.setdefault("adaptive", self.defaults["adaptive"])
        check_range("rho", param_group["rho"], 0.0)
        check_bool("adaptive", param_group["adaptive"])
        self.base_optimizer.add_param_group(param_group)
        self._share()

    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._share()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def _perturb(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move every parameter with a gradient to θ + ε; returns (parameter, saved θ) pairs."""
        items = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not items:
            return []
        scaled = [p.grad * p.abs() if group["adaptive"] else p.grad for group, p in items]  # T g
        norms = [torch.linalg.vector_norm(t) for t in scaled]
        dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
        device = norms[0].device
        norm = torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))
        # 1 / ||Tg||; where every gradient is 0, ε is 0 whatever this factor is
        inv = 1.0 / norm.clamp_min(torch.finfo(dtype).tiny)
        saved = []
        for (group, p), t in zip(items, scaled):
            sign = -1.0 if group.get("maximize", False) else 1.0
            e = t * p.abs() if group["adaptive"] else t  # T² g
            e = e * (inv.to(device=p.device, dtype=e.dtype) * (sign * float(group["rho"])))
            saved.append((p, p.detach().clone()))
            p.add_(e)
        return saved

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        """One SAM step: the closure at θ, again at θ + ε, then the base optimizer's step from θ. Returns the
        closure's first loss (at θ)."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that zeroes the gradients, computes the loss, calls "
                               "backward() and returns the loss: SAM evaluates it twice, at θ and at θ + ε")
        with torch.enable_grad():
            loss = closure()
        saved = self._perturb()
        try:
            self.zero_grad()
            with torch.enable_grad():
                closure()
        finally:
            for p, theta in saved:
                p.copy_(theta)
        self.base_optimizer.step()
        return loss

    def __repr__(self) -> str:
        return f"SAM(rho={self.defaults['rho']}, adaptive={self.defaults['adaptive']}, base={self.base_optimizer!r})"
