"""The hooked transformer: `load` a model, run it with hooks, cache its activations."""

from probe.errors import CheckpointMismatch, InputError, MissingHook, ModelNotFound, ProbeError, UnsupportedArchitecture

from . import utils  # TransformerLens's `utils` helpers: `from models import utils`
from .activation_cache import ActivationCache, act_name
from .config import TransformerConfig
from .factored_matrix import FactoredMatrix
from .hooked_transformer import HookedTransformer
from .loading import load, save, zoo

get_act_name = act_name  # TransformerLens's name for it (`from transformer_lens.utils import get_act_name`)

__all__ = [
    "ActivationCache", "CheckpointMismatch", "HookedTransformer", "InputError", "MissingHook", "ModelNotFound", "ProbeError",
    "FactoredMatrix", "TransformerConfig", "UnsupportedArchitecture", "act_name", "get_act_name", "load", "save", "utils", "zoo",
]
