"""`TransformerConfig`: every architectural difference between families is a field here.

A new architecture is a new set of field values plus a weight-conversion table in
`models/families/`, never a subclass (docs/design.md, "The hooked transformer").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from probe.errors import InputError

Positional = Literal["learned", "sinusoidal", "rotary", "relative", "none"]
Norm = Literal["layernorm", "rmsnorm"]
Act = Literal["gelu", "gelu_new", "relu", "silu"]


@dataclass
class TransformerConfig:
    d_model: int
    n_layers: int
    n_heads: int
    d_vocab: int
    n_ctx: int
    d_head: int | None = None  # default d_model // n_heads
    d_mlp: int | None = None  # default 4 * d_model
    n_kv_heads: int | None = None  # grouped-query attention; default n_heads
    attn_only: bool = False  # no MLP sublayer (toy induction models)

    causal: bool = True  # False: bidirectional encoder (BERT)
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_position: Literal["pre", "post"] = "pre"
    final_norm: bool = True  # pre-norm models normalise before the unembedding
    embed_norm: bool = False  # BERT normalises the summed embeddings
    # False after `fold_layer_norm`: the norms keep only their normalisation, their weights (and
    # biases) folded into the layers that read them (TransformerLens's LNPre/RMSPre). A field
    # because the forward pass must not look for an affine map that no longer exists.
    norm_affine: bool = True

    positional: Positional = "learned"
    rotary_dim: int | None = None  # partial rotary (NeoX); default d_head
    rotary_base: float = 10000.0
    n_token_types: int = 0  # BERT's segment embeddings

    act_fn: Act = "gelu_new"
    gated_mlp: bool = False  # SwiGLU: act(x W_gate) * (x W_in)
    parallel_attn_mlp: bool = False  # NeoX: x + attn(ln1 x) + mlp(ln2 x)

    attn_qkv_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    unembed_bias: bool = False
    tie_embeddings: bool = False
    has_unembed: bool = True  # encoders without an LM head return final hidden states
    attn_scale: float | None = None  # default 1/sqrt(d_head)

    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    default_prepend_bos: bool = False  # GPT-2 style tokenizers that do not add BOS themselves

    # Encoder-decoder models (Vaswani et al. 2017; T5, BART, Marian): `HookedEncoderDecoder`.
    # n_layers is then the encoder's depth; both stacks share the other sizes (as TransformerLens
    # requires), the decoder's blocks adding cross-attention. causal describes the decoder.
    encoder_decoder: bool = False
    n_decoder_layers: int | None = None  # default n_layers
    decoder_start_token_id: int | None = None  # the first target token generation starts from
    embed_scale: float = 1.0  # token embeddings times this (BART/Marian's scale_embedding: sqrt(d_model))
    pos_offset: int = 0  # learned positions read row position + offset (BART keeps rows 0-1 unused)
    # "interleaved": sin/cos alternate (Vaswani et al.); "halves": sines then cosines (Marian)
    sinusoidal_layout: Literal["interleaved", "halves"] = "interleaved"
    relative_buckets: int = 32  # T5's relative position buckets (positional="relative")
    relative_max_distance: int = 128
    logit_scale: float = 1.0  # the last stream times this before the unembedding (tied T5: d_model^-0.5)

    model_name: str = "custom"
    family: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)  # provenance only; never read by forward

    # TransformerLens's run-time switches (`set_use_attn_result`, ...) live on the config as
    # there, so `model.cfg.use_attn_result = True` also works. Class attributes, not fields:
    # they describe how a model is run, not the model, so they are never saved with it.
    use_attn_result = False
    use_split_qkv_input = False
    use_attn_in = False
    use_hook_mlp_in = False

    def __post_init__(self) -> None:
        # A config is often read from a user's file: refuse what cannot describe a model here,
        # once, before a division by zero or a truthy "false" reaches the forward pass.
        _check_types(self)
        _check_ranges(self)
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise InputError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                                 "set d_head, or choose n_heads dividing d_model")
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise InputError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.positional == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.rotary_dim is not None and self.rotary_dim % 2:
            raise InputError(f"rotary_dim={self.rotary_dim} must be even")
        if self.encoder_decoder:
            if self.n_decoder_layers is None:
                self.n_decoder_layers = self.n_layers
            if self.parallel_attn_mlp or self.attn_only:
                raise InputError("encoder-decoder models have sequential attention and MLP sublayers; "
                                 "set parallel_attn_mlp and attn_only to false")
        elif self.positional == "relative":
            raise InputError("relative position buckets (T5) are implemented for encoder-decoder models only")
        if self.norm_position == "post" and self.final_norm:
            # Post-norm blocks already end in a norm; a second one would be a silent bug.
            raise InputError("post-norm models have no separate final norm; set final_norm=False")

    @property
    def is_encoder(self) -> bool:
        return not self.causal

    # ---------------------------------------------------------------- TransformerLens's names
    # Read-only aliases so notebook code written for TransformerLens's config runs unchanged.
    @property
    def n_key_value_heads(self) -> int | None:
        """The key/value heads of grouped-query attention; None without it (TransformerLens's
        convention: a model whose n_kv_heads equals n_heads reads as None here)."""
        return self.n_kv_heads if self.n_kv_heads != self.n_heads else None

    @property
    def normalization_type(self) -> str:
        """"LN" or "RMS"; "LNPre"/"RMSPre" once the norms' weights are folded (no affine map)."""
        kind = "LN" if self.norm == "layernorm" else "RMS"
        return kind if self.norm_affine else kind + "Pre"

    @property
    def positional_embedding_type(self) -> str:
        """TransformerLens's word: "standard" for learned absolute positions, "rotary", and
        (no TransformerLens counterpart) "sinusoidal" or "none"."""
        return "standard" if self.positional == "learned" else self.positional

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def final_rms(self) -> bool:
        """Whether the final norm is an RMSNorm (TransformerLens's flag, read by its weight processing)."""
        return self.final_norm and self.norm == "rmsnorm"

    @property
    def device(self) -> str:
        """Where the model's weights are (kept by `HookedTransformer` when it moves), as
        TransformerLens's ``cfg.device``; "cpu" for a config no model has used yet."""
        return getattr(self, "_device", "cpu")

    @property
    def dtype(self) -> Any:
        """The model's weight dtype (kept by `HookedTransformer`), TransformerLens's ``cfg.dtype``."""
        import torch

        return getattr(self, "_dtype", torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        """The config a dict (a probe_config.json) describes; InputError naming a field that is
        unknown, missing or of the wrong kind."""
        if not isinstance(d, dict):
            raise InputError(f"a TransformerConfig must be a JSON object of fields, not a {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise InputError(f"unknown field {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1
                             else "") + f"; known fields: {', '.join(sorted(known))}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise InputError(f"lacks the field {missing[0]!r}, which every config needs (the required fields: "
                             f"{', '.join(required)})")
        return cls(**d)


# Sizes a model cannot have zero (or fewer) of; the optional ones only when given.
_POSITIVE = ("d_model", "n_layers", "n_heads", "d_vocab", "n_ctx")
_POSITIVE_IF_GIVEN = ("d_head", "d_mlp", "n_kv_heads", "rotary_dim", "n_decoder_layers")
_POSITIVE_FLOATS = ("norm_eps", "rotary_base", "embed_scale", "logit_scale")


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TransformerConfig)


def _check_types(cfg: TransformerConfig) -> None:
    for name, hint in _field_types().items():
        value = getattr(cfg, name)
        if not _fits(value, hint):
            raise InputError(f"{name} must be {_kind_of(hint)}, not {_shown(value, hint)}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is what the annotation ``hint`` allows (bool is not an int here: JSON
    true for a size is a mistake)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, origin or hint)


def _kind_of(hint: Any) -> str:
    """An annotation in words, for the error message."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind_of(arm) for arm in typing.get_args(hint))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return words.get(hint, f"a {getattr(origin or hint, '__name__', hint)}")


def _shown(value: Any, hint: Any) -> str:
    """The wrong value in words: a misspelt choice as itself, anything else with its type."""
    if typing.get_origin(hint) is Literal and isinstance(value, str):
        return f"{value!r:.40}"
    return f"the {type(value).__name__} {value!r:.40}"


def _check_ranges(cfg: TransformerConfig) -> None:
    for name in _POSITIVE + _POSITIVE_IF_GIVEN:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise InputError(f"{name} must be a positive integer, not {value}")
    for name in _POSITIVE_FLOATS:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive finite number, not {value}")
    for name in ("pos_offset", "n_token_types"):
        if getattr(cfg, name) < 0:
            raise InputError(f"{name} must be 0 or more, not {getattr(cfg, name)}")
    for name in ("relative_buckets", "relative_max_distance"):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name} must be a positive integer, not {getattr(cfg, name)}")
