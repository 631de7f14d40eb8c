"""adamlab: exact, fast PyTorch implementations of recent Adam variants, and a lab that tests their claims."""

from . import groups, train
from .groups import coupled_adam, coupled_param_groups, param_groups_weight_decay
from .optim import SGD, Adagrad, Adam, AdamCG, AdamCM, AdamNX, AdamW, AdamX, AdEMAMix, CoupledAdam, EXAdam, RMSprop
from .optim.sam import SAM
from .optim.signum import Signum
from .registry import create_optimizer, get_optimizer_info, list_optimizers

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["create_optimizer", "list_optimizers", "get_optimizer_info", "groups", "train",
           "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "EXAdam", "AdamX", "AdamNX", "AdEMAMix",
           "AdamCM", "AdamCG", "CoupledAdam", "Signum", "SAM", "param_groups_weight_decay", "coupled_param_groups",
           "coupled_adam", "__version__"]
