"""adamlab: exact, fast PyTorch implementations of recent Adam variants, and a lab that tests their claims."""

from . import train
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop
from .optim import AdamNX, AdamX, AdEMAMix, EXAdam
from .registry import create_optimizer, get_optimizer_info, list_optimizers

__version__ = "0.1.0"

__all__ = ["create_optimizer", "list_optimizers", "get_optimizer_info", "train", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "EXAdam", "AdamX", "AdamNX", "AdEMAMix",
           "__version__"]
