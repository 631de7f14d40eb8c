"""adamlab: exact, fast PyTorch implementations of recent Adam variants, and a lab that tests their claims."""

from .optim import SGD, Adagrad, Adam, AdamW, RMSprop

__version__ = "0.1.0"

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "__version__"]
