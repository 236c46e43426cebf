"""The hooked transformer: `load` a model, run it with hooks, cache its activations."""

from probe.errors import CheckpointMismatch, InputError, MissingHook, ModelNotFound, ProbeError, UnsupportedArchitecture

from .activation_cache import ActivationCache, act_name
from .config import TransformerConfig
from .hooked_transformer import HookedTransformer
from .loading import load, save, zoo

__all__ = [
    "ActivationCache", "CheckpointMismatch", "HookedTransformer", "InputError", "MissingHook", "ModelNotFound", "ProbeError",
    "TransformerConfig", "UnsupportedArchitecture", "act_name", "load", "save", "zoo",
]
