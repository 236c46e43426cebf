"""The hooked transformer: `load` a model, run it with hooks, cache its activations."""

from .activation_cache import ActivationCache, act_name
from .config import TransformerConfig
from .families import CheckpointMismatch, UnsupportedArchitecture
from .hooked_transformer import HookedTransformer
from .loading import ModelNotFound, load, save, zoo
from .tokens import InputError

__all__ = [
    "ActivationCache", "CheckpointMismatch", "HookedTransformer", "InputError", "ModelNotFound",
    "TransformerConfig", "UnsupportedArchitecture", "act_name", "load", "save", "zoo",
]
