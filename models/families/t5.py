"""T5 (v1.0: ReLU MLP, tied embeddings with the d_model^-1/2 logit scale) and T5 v1.1 / Flan-T5
(gated-GELU MLP, untied head): pre-norm RMSNorm without biases, unscaled attention, a relative
position bias per stack (learned by the first layer, shared by all)."""

from __future__ import annotations

from ..config import TransformerConfig
from . import UnsupportedArchitecture, WeightRule

MODEL_TYPES = ("t5",)
PREFIXES = ()
IGNORED = (r"^encoder\.embed_tokens\.", r"^decoder\.embed_tokens\.")
MLPS = {"relu": ("relu", False), "gated-gelu": ("gelu_new", True), "gated-relu": ("relu", True),
        "gelu": ("gelu_new", False)}


def config_from_hf(hf: dict) -> TransformerConfig:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in MLPS:
        raise UnsupportedArchitecture(f"T5 feed_forward_proj {proj!r} is not supported; supported: {sorted(MLPS)}")
    act, gated = MLPS[proj]
    # Original T5 ties the head to the embeddings and scales the last stream by d_model^-1/2; v1.1 /
    # Flan-T5 configs say tie_word_embeddings=false and do neither. transformers >= 5 always ties
    # (it saves tie_word_embeddings=true) and keeps the scaling as scale_decoder_outputs.
    tied = hf.get("tie_word_embeddings", True)
    scaled = hf.get("scale_decoder_outputs", tied)
    d = hf["d_model"]
    return TransformerConfig(
        d_model=d, n_layers=hf["num_layers"], n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        n_heads=hf["num_heads"], d_head=hf["d_kv"], d_vocab=hf["vocab_size"], n_ctx=hf.get("n_positions", 512),
        d_mlp=hf["d_ff"], encoder_decoder=True, causal=True, norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        norm_position="pre", final_norm=True, positional="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        act_fn=act, gated_mlp=gated, attn_qkv_bias=False, attn_out_bias=False, mlp_bias=False, attn_scale=1.0,  # type: ignore[arg-type]
        tie_embeddings=tied, logit_scale=d ** -0.5 if scaled else 1.0,
        pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id")), family="t5",
    )


def _attention(ours: str, theirs: str) -> list[WeightRule]:
    return [WeightRule(f"{ours}.{a}.weight", f"{theirs}.{b}.weight")
            for a, b in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"))]


def _mlp(cfg: TransformerConfig, ours: str, theirs: str) -> list[WeightRule]:
    if cfg.gated_mlp:  # act(x wi_0) * (x wi_1): wi_0 is the gate
        ins = [WeightRule(f"{ours}.w_gate.weight", f"{theirs}.wi_0.weight"),
               WeightRule(f"{ours}.w_in.weight", f"{theirs}.wi_1.weight")]
    else:
        ins = [WeightRule(f"{ours}.w_in.weight", f"{theirs}.wi.weight")]
    return ins + [WeightRule(f"{ours}.w_out.weight", f"{theirs}.wo.weight")]


def weight_table(cfg: TransformerConfig) -> list[WeightRule]:
    e, d = "encoder.{l}", "decoder.{d}"
    he, hd = "encoder.block.{l}.layer", "decoder.block.{d}.layer"
    rules = [WeightRule("embed.W_E", "shared.weight"),
             WeightRule("encoder_rel_pos.W_rel", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
             WeightRule("decoder_rel_pos.W_rel", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
             WeightRule("encoder_final_ln.w", "encoder.final_layer_norm.weight"),
             WeightRule("decoder_final_ln.w", "decoder.final_layer_norm.weight")]
    if not cfg.tie_embeddings:
        rules.append(WeightRule("unembed.weight", "lm_head.weight"))
    rules += _attention(f"{e}.attn", f"{he}.0.SelfAttention") + [WeightRule(f"{e}.ln1.w", f"{he}.0.layer_norm.weight")]
    rules += _mlp(cfg, f"{e}.mlp", f"{he}.1.DenseReluDense") + [WeightRule(f"{e}.ln2.w", f"{he}.1.layer_norm.weight")]
    rules += _attention(f"{d}.attn", f"{hd}.0.SelfAttention") + [WeightRule(f"{d}.ln1.w", f"{hd}.0.layer_norm.weight")]
    rules += _attention(f"{d}.cross_attn", f"{hd}.1.EncDecAttention")
    rules += [WeightRule(f"{d}.ln_cross.w", f"{hd}.1.layer_norm.weight")]
    rules += _mlp(cfg, f"{d}.mlp", f"{hd}.2.DenseReluDense") + [WeightRule(f"{d}.ln2.w", f"{hd}.2.layer_norm.weight")]
    return rules
