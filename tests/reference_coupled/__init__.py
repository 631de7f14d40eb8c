"""A minimal float64 port of the authors' Coupled Adam, for tests only.

Source: flxst/coupled-adam, ``nanoGPT/coupled_adam.py`` (commit ba54c74): ``CoupledAdam`` with the only code path
that runs there, ``_multi_tensor_adamw`` (the single-tensor and fused paths raise), without amsgrad, capturable,
complex or grad scaling. Every tensor the optimizer holds is coupled: the mean of ``exp_avg_sq`` over dim 0, times
``avg_scale`` (one value per optimizer, not per group), replaces it in the denominator.
"""

from .coupled_adam import CoupledAdam

__all__ = ["CoupledAdam"]
