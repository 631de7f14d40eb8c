"""adamlab's optimizers: the classic family and the research optimizers, on one shared engine."""

from ._base import AdamlabOptimizer, compiler_available
from ._lowp import state_bytes
from ._torch_private import probe as torch_internals
from .adam import Adam, AdamW
from .adamx import AdamNX, AdamX
from .ademamix import AdEMAMix
from .coupled import CoupledAdam
from .critical import AdamCG, AdamCM
from .exadam import EXAdam
from .sam import SAM
from .sgd import SGD, Adagrad, RMSprop
from .signum import Signum

__all__ = ["AdamlabOptimizer", "compiler_available", "state_bytes", "torch_internals",
           "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "EXAdam", "AdamX", "AdamNX", "AdEMAMix",
           "AdamCM", "AdamCG", "CoupledAdam", "Signum", "SAM"]
