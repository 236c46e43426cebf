"""BERT-family encoders (BERT, MiniLM): post-LayerNorm, learned positions, token types,
bidirectional attention, exact GELU. Without an LM head the model returns hidden states."""

from __future__ import annotations

from ..config import TransformerConfig
from . import UnsupportedArchitecture, WeightRule

MODEL_TYPES = ("bert",)
PREFIXES = ("bert.",)
IGNORED = (r"^pooler\.", r"^cls\.", r"position_ids$")


def config_from_hf(hf: dict) -> TransformerConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedArchitecture("BERT with relative position embeddings is not supported")
    if hf.get("is_decoder"):
        raise UnsupportedArchitecture("BERT configured as a decoder is not supported")
    act = hf.get("hidden_act", "gelu")
    if act not in ("gelu", "relu", "gelu_new"):
        raise UnsupportedArchitecture(f"BERT activation {act!r} is not supported")
    return TransformerConfig(
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"], d_mlp=hf["intermediate_size"],
        causal=False, norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post",
        final_norm=False, embed_norm=True, positional="learned", n_token_types=hf.get("type_vocab_size", 2),
        act_fn=act, has_unembed=False, tie_embeddings=False, pad_token_id=hf.get("pad_token_id"),
        family="bert",
    )


def weight_table(cfg: TransformerConfig) -> list[WeightRule]:
    b, e = "blocks.{l}", "encoder.layer.{l}"
    rules = [
        WeightRule("embed.W_E", "embeddings.word_embeddings.weight"),
        WeightRule("pos_embed.W_pos", "embeddings.position_embeddings.weight"),
        WeightRule("token_type_embed.W_token_type", "embeddings.token_type_embeddings.weight"),
        WeightRule("ln_embed.w", "embeddings.LayerNorm.weight"),
        WeightRule("ln_embed.b", "embeddings.LayerNorm.bias"),
    ]
    for ours, theirs in [("q_proj", "self.query"), ("k_proj", "self.key"), ("v_proj", "self.value"),
                         ("o_proj", "output.dense")]:
        for p in ("weight", "bias"):
            rules.append(WeightRule(f"{b}.attn.{ours}.{p}", f"{e}.attention.{theirs}.{p}"))
    for ours, theirs in [("ln1.w", "attention.output.LayerNorm.weight"), ("ln1.b", "attention.output.LayerNorm.bias"),
                         ("mlp.w_in.weight", "intermediate.dense.weight"), ("mlp.w_in.bias", "intermediate.dense.bias"),
                         ("mlp.w_out.weight", "output.dense.weight"), ("mlp.w_out.bias", "output.dense.bias"),
                         ("ln2.w", "output.LayerNorm.weight"), ("ln2.b", "output.LayerNorm.bias")]:
        rules.append(WeightRule(f"{b}.{ours}", f"{e}.{theirs}"))
    return rules
