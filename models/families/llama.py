"""Llama-family decoders (Llama, Mistral, Qwen2): rotary positions, RMSNorm, SwiGLU MLP,
grouped-query attention, no biases except Qwen2's q/k/v biases."""

from __future__ import annotations

from ..config import TransformerConfig
from . import UnsupportedArchitecture, WeightRule, rope_settings

MODEL_TYPES = ("llama", "mistral", "qwen2")
PREFIXES = ("model.",)
IGNORED = (r"rotary_emb\.inv_freq$",)


def config_from_hf(hf: dict) -> TransformerConfig:
    base, frac = rope_settings(hf)
    if frac != 1.0:
        raise UnsupportedArchitecture("partial rotary is not expected in a Llama-family config")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitecture(f"Llama-family activation {act!r} is not supported (only silu)")
    n_ctx = hf.get("max_position_embeddings", 2048)
    window = hf.get("sliding_window")
    if window and hf.get("use_sliding_window", hf["model_type"] == "mistral"):
        # Sliding-window attention equals full attention on inputs no longer than the
        # window; longer inputs are refused (context check) rather than computed wrong.
        n_ctx = min(n_ctx, window)
    qkv_bias = hf["model_type"] == "qwen2" or bool(hf.get("attention_bias", False))
    return TransformerConfig(
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"], d_head=hf.get("head_dim"),
        d_vocab=hf["vocab_size"], n_ctx=n_ctx, d_mlp=hf["intermediate_size"], causal=True, norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), positional="rotary", rotary_base=base, act_fn="silu",
        gated_mlp=True, attn_qkv_bias=qkv_bias, attn_out_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"), family=hf["model_type"],
    )


def _first(x):
    return x[0] if isinstance(x, list) else x


def weight_table(cfg: TransformerConfig) -> list[WeightRule]:
    b, h = "blocks.{l}", "layers.{l}"
    rules = [WeightRule("embed.W_E", "embed_tokens.weight")]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        rules.append(WeightRule(f"{b}.attn.{proj}.weight", f"{h}.self_attn.{proj}.weight"))
    if cfg.attn_qkv_bias:
        for proj in ("q_proj", "k_proj", "v_proj"):
            rules.append(WeightRule(f"{b}.attn.{proj}.bias", f"{h}.self_attn.{proj}.bias"))
    if cfg.attn_out_bias:
        rules.append(WeightRule(f"{b}.attn.o_proj.bias", f"{h}.self_attn.o_proj.bias"))
    for ours, theirs in [("w_gate", "gate_proj"), ("w_in", "up_proj"), ("w_out", "down_proj")]:
        rules.append(WeightRule(f"{b}.mlp.{ours}.weight", f"{h}.mlp.{theirs}.weight"))
        if cfg.mlp_bias:
            rules.append(WeightRule(f"{b}.mlp.{ours}.bias", f"{h}.mlp.{theirs}.bias"))
    rules += [
        WeightRule(f"{b}.ln1.w", f"{h}.input_layernorm.weight"),
        WeightRule(f"{b}.ln2.w", f"{h}.post_attention_layernorm.weight"),
        WeightRule("ln_final.w", "norm.weight"),
    ]
    if not cfg.tie_embeddings:
        rules.append(WeightRule("unembed.weight", "lm_head.weight"))
    return rules
