"""`TransformerConfig`: every architectural difference between families is a field here.

A new architecture is a new set of field values plus a weight-conversion table in
`models/families/`, never a subclass (docs/design.md, "The hooked transformer").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Positional = Literal["learned", "sinusoidal", "rotary", "none"]
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

    model_name: str = "custom"
    family: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)  # provenance only; never read by forward

    def __post_init__(self) -> None:
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set d_head"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.positional == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.rotary_dim is not None and self.rotary_dim % 2:
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even")
        if self.norm_position == "post" and self.final_norm:
            # Post-norm blocks already end in a norm; a second one would be a silent bug.
            raise ValueError("post-norm models have no separate final norm; set final_norm=False")

    @property
    def is_encoder(self) -> bool:
        return not self.causal

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
