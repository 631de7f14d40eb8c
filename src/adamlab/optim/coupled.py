"""Coupled Adam: AdamW whose second moment, for the tensors of coupled groups, is averaged over dim 0 (the
vocabulary axis of an embedding matrix), so that every token shares one denominator per embedding dimension."""

from __future__ import annotations

import warnings
from typing import TypedDict

import torch

from ._base import AdamlabOptimizer, check_bool, check_common, check_range
from .adam import AdamScalars, adam_bias_scalars, adam_denominator

__all__ = ["CoupledAdam"]


class CoupledAdamScalars(AdamScalars):
    coupled_scale: float


class CoupledAdamConstants(TypedDict):
    coupled: bool  #: v is averaged over dim 0 (the vocabulary) in this group


class CoupledAdam(AdamlabOptimizer):
    r"""Coupled Adam (Stollenwerk & Stollenwerk, 2025): AdamW with the second moment of coupled tensors averaged over
    dim 0, which keeps the mean embedding of a language model from drifting.

    .. math::
        \begin{aligned}
        &\theta \leftarrow \theta(1-\eta\lambda);\quad m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t;\quad
          v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \quad \text{(stored per element)} \\
        &\bar v_{t,j} = s\cdot\tfrac{1}{V}\textstyle\sum_i v_{t,ij} \quad \text{(coupled groups; else } \bar v_t = v_t)
          \\
        &\theta_{ij} \leftarrow \theta_{ij} - \frac{\eta}{1-\beta_1^t}\,
          \frac{m_{t,ij}}{\sqrt{\bar v_{t,j}}/\sqrt{1-\beta_2^t} + \epsilon}
        \end{aligned}

    ``coupled`` and ``coupled_scale`` (s) are per param group: put the embedding matrices [V, H] (a tied LM head
    included) in a group with ``coupled=True`` and everything else in groups with ``coupled=False``, which is AdamW
    exactly; :func:`adamlab.groups.coupled_param_groups` builds those groups and :func:`adamlab.groups.coupled_adam`
    the optimizer. A coupled tensor with a single row is AdamW exactly too (for s = 1). The LM-head gradient of an
    embedding sums to zero over the vocabulary, and with one shared denominator per column so does the update: the
    mean embedding stays fixed (with λ = 0) for as long as the whole gradient sums to zero, e.g. an output-only
    embedding. The input-side gradient of a tied embedding does not sum to zero, so there the mean still moves, under
    both optimizers (the paper's argument concerns the output side).

    Paper: "Better Embeddings with Coupled Adam", Stollenwerk & Stollenwerk, 2025 (arXiv 2502.08441).
    Reference code: flxst/coupled-adam, ``nanoGPT/coupled_adam.py`` (commit ba54c74); ``avg_scale`` →
    ``coupled_scale``.

    Differences from the reference code:

    * Coupling is per param group (``coupled``, ``coupled_scale``) and works in every implementation; the
      reference couples every tensor the optimizer holds, with one ``avg_scale`` per optimizer, and only in its
      multi-tensor path (its single-tensor and fused paths raise, and ``amsgrad`` silently uncouples).
    * ``amsgrad``, ``capturable``, ``differentiable`` and ``fused`` are not ported; the defaults are the reference's
      (``weight_decay=1e-2``; its training script trains the embeddings without weight decay, as the group helper does).

    Args:
        params: the tensors to optimise: an iterable of tensors, of param-group dicts (any argument below
            may be set per group) or of ``(name, tensor)`` pairs.
        lr: learning rate η (a float or a 0-d tensor; schedulers may change it every step).
        betas: (β₁, β₂), the decay rates of the first and second moments, each in [0, 1).
        eps: ε, added to the denominator for numerical stability.
        weight_decay: λ, decoupled: θ ← θ(1 − ηλ).
        coupled: average the second moment over dim 0 for this group's tensors (set it per param group: ``True``
            for the embedding matrices, ``False`` for the rest).
        coupled_scale: s > 0, a factor on the averaged second moment (the reference's ``avg_scale``).
        maximize: maximise the objective instead of minimising it (the gradient's sign is flipped).
        **impl: the implementation options every optimizer shares (``foreach``, ``compiled``, ``state_dtype``,
            ``param_update``), keyword-only; see :class:`~adamlab.optim.AdamlabOptimizer`.

    Example::

        >>> emb = torch.nn.Embedding(100, 16)
        >>> opt = CoupledAdam([{"params": emb.parameters(), "weight_decay": 0.0}], lr=1e-3)
        >>> emb(torch.randint(0, 100, (8,))).pow(2).sum().backward(); opt.step()
    """

    _weight_decay = "decoupled"
    Scalars, Constants = CoupledAdamScalars, CoupledAdamConstants

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, coupled: bool = True, coupled_scale: float = 1.0, maximize: bool = False,
                 **impl):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, coupled=coupled, coupled_scale=coupled_scale, maximize=maximize)
        super().__init__(params, defaults, **impl)

    def _validate(self, group):
        check_common(group, n_betas=2)
        check_bool("coupled", group["coupled"])
        check_range("coupled_scale", group["coupled_scale"], 0.0, lo_open=True)
        flat = [tuple(p.shape) for p in group["params"] if p.dim() < 2]
        if group["coupled"] and flat:
            warnings.warn(f"CoupledAdam: a coupled group holds {len(flat)} tensor(s) with fewer than 2 dims (e.g. "
                          f"shape {list(flat[0])}), whose second moment is then averaged over all their elements; "
                          "coupling is meant for embedding matrices [V, H]: pass the groups of "
                          "adamlab.groups.coupled_param_groups(model), or build the optimizer with "
                          "adamlab.groups.coupled_adam(model), to couple the embeddings only", UserWarning,
                          stacklevel=4)

    def _init_state(self, p, group):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _constants(self, group):
        return CoupledAdamConstants(coupled=group["coupled"])

    def _flattens(self, c):
        return not c["coupled"]  # the mean over dim 0 needs the tensor's own shape

    def _extra_reads(self, group, p, state):
        # the mean over the vocabulary: a coupled tensor's step reads its moment once more
        return state["exp_avg"].nbytes if group.get("coupled") and "exp_avg" in state else 0

    def _scalars(self, group, step):
        s = adam_bias_scalars(group, step)
        return CoupledAdamScalars(**s, coupled_scale=group["coupled_scale"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        m = o.lerp_(st["exp_avg"], g, s["one_minus_beta1"])
        v = o.addcmul_(o.mul_(st["exp_avg_sq"], s["beta2"]), g, g, s["one_minus_beta2"])
        if c["coupled"]:  # one value per column, broadcast over the rows (the mean over every shard's rows)
            v = o.mul(o.mean(v, 0), s["coupled_scale"])
        o.addcdiv_(p, m, adam_denominator(o, v, s), s["neg_step_size"])
