"""BART and Marian (MarianMT), the post-norm encoder-decoders of the BART family: learned
positions offset by 2 and an embedding LayerNorm (BART), or sinusoidal positions in halves and
embeddings scaled by sqrt(d_model) (Marian); a ``final_logits_bias`` added to the logits."""

from __future__ import annotations

import math

from ..config import TransformerConfig
from . import UnsupportedArchitecture, WeightRule

MODEL_TYPES = ("bart", "marian")
PREFIXES = ("model.",)
# The token table is stored once (shared); the stacks' copies are the same tensor, and Marian's
# sinusoidal tables are computed, not learned.
IGNORED = (r"^encoder\.embed_tokens\.", r"^decoder\.embed_tokens\.", r"^(en|de)coder\.embed_positions\.weight$")
ACTS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new", "swish": "silu", "silu": "silu"}


def config_from_hf(hf: dict) -> TransformerConfig:
    marian = hf["model_type"] == "marian"
    for enc, dec in (("encoder_layers", "decoder_layers"), ("encoder_attention_heads", "decoder_attention_heads"),
                     ("encoder_ffn_dim", "decoder_ffn_dim")):
        if enc != "encoder_layers" and hf[enc] != hf[dec]:
            raise UnsupportedArchitecture(f"{enc}={hf[enc]} differs from {dec}={hf[dec]}; both stacks must match")
    if hf.get("normalize_before"):
        raise UnsupportedArchitecture("pre-norm BART variants (normalize_before) are not supported")
    act = hf.get("activation_function", "gelu")
    if act not in ACTS:
        raise UnsupportedArchitecture(f"activation {act!r} is not supported; supported: {sorted(ACTS)}")
    if marian and not hf.get("share_encoder_decoder_embeddings", True):
        raise UnsupportedArchitecture("Marian with separate source and target vocabularies is not supported")
    d = hf["d_model"]
    return TransformerConfig(
        d_model=d, n_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"],
        n_heads=hf["encoder_attention_heads"], d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"],
        d_mlp=hf["encoder_ffn_dim"], encoder_decoder=True, causal=True, norm="layernorm", norm_eps=1e-5,
        norm_position="post", final_norm=False, embed_norm=not marian,
        positional="sinusoidal" if marian else "learned", sinusoidal_layout="halves", pos_offset=0 if marian else 2,
        embed_scale=math.sqrt(d) if hf.get("scale_embedding", marian) else 1.0, act_fn=ACTS[act],  # type: ignore[arg-type]
        unembed_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
        decoder_start_token_id=hf.get("decoder_start_token_id"), family="bart",
    )


def _attention(ours: str, theirs: str) -> list[WeightRule]:
    return [WeightRule(f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}")
            for a, b in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("o_proj", "out_proj"))
            for p in ("weight", "bias")]


def _linear(ours: str, theirs: str) -> list[WeightRule]:
    return [WeightRule(f"{ours}.weight", f"{theirs}.weight"), WeightRule(f"{ours}.bias", f"{theirs}.bias")]


def _norm(ours: str, theirs: str) -> list[WeightRule]:
    return [WeightRule(f"{ours}.w", f"{theirs}.weight"), WeightRule(f"{ours}.b", f"{theirs}.bias")]


def weight_table(cfg: TransformerConfig) -> list[WeightRule]:
    e, d = "encoder.{l}", "decoder.{d}"
    he, hd = "encoder.layers.{l}", "decoder.layers.{d}"
    rules = [WeightRule("embed.W_E", "shared.weight"),
             WeightRule("unembed.bias", "final_logits_bias", lambda t, cfg: t.reshape(-1))]
    if not cfg.tie_embeddings:
        rules.append(WeightRule("unembed.weight", "lm_head.weight"))
    if cfg.positional == "learned":
        rules += [WeightRule("pos_embed.W_pos", "encoder.embed_positions.weight"),
                  WeightRule("decoder_pos_embed.W_pos", "decoder.embed_positions.weight")]
    if cfg.embed_norm:
        rules += _norm("encoder_ln_embed", "encoder.layernorm_embedding")
        rules += _norm("decoder_ln_embed", "decoder.layernorm_embedding")
    for ours, theirs in ((e, he), (d, hd)):
        rules += _attention(f"{ours}.attn", f"{theirs}.self_attn") + _norm(f"{ours}.ln1", f"{theirs}.self_attn_layer_norm")
        rules += _linear(f"{ours}.mlp.w_in", f"{theirs}.fc1") + _linear(f"{ours}.mlp.w_out", f"{theirs}.fc2")
        rules += _norm(f"{ours}.ln2", f"{theirs}.final_layer_norm")
    rules += _attention(f"{d}.cross_attn", f"{hd}.encoder_attn") + _norm(f"{d}.ln_cross", f"{hd}.encoder_attn_layer_norm")
    return rules
