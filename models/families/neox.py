"""GPT-NeoX / Pythia: parallel attention and MLP, partial rotary, LayerNorm, GELU.
The fused query_key_value weight is laid out per head as [q | k | v]."""

from __future__ import annotations

from ..config import TransformerConfig
from . import UnsupportedArchitecture, WeightRule, rope_settings

MODEL_TYPES = ("gpt_neox",)
PREFIXES = ("gpt_neox.",)
IGNORED = (r"attention\.bias$", r"attention\.masked_bias$", r"rotary_emb\.inv_freq$")


def config_from_hf(hf: dict) -> TransformerConfig:
    base, frac = rope_settings(hf)
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    act = hf.get("hidden_act", "gelu")
    acts = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_new", "relu": "relu"}
    if act not in acts:
        raise UnsupportedArchitecture(f"GPT-NeoX activation {act!r} is not supported")
    return TransformerConfig(
        d_model=d, n_layers=hf["num_hidden_layers"], n_heads=h, d_vocab=hf["vocab_size"],
        n_ctx=hf.get("max_position_embeddings", 2048), d_mlp=hf["intermediate_size"], causal=True,
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5), positional="rotary",
        rotary_dim=_rotary_dim(d, h, frac), rotary_base=base, act_fn=acts[act],
        parallel_attn_mlp=bool(hf.get("use_parallel_residual", True)),
        attn_qkv_bias=bool(hf.get("attention_bias", True)), attn_out_bias=bool(hf.get("attention_bias", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), family="gpt_neox",
    )


def _rotary_dim(d_model, n_heads, frac: float) -> int | None:
    """The rotary width of a head; None for sizes no model has (no heads), which
    TransformerConfig then refuses by name instead of a division by zero here."""
    if not (isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0):
        return None
    return int((d_model // n_heads) * frac)


def _qkv(i: int):
    def pick(w, cfg: TransformerConfig):
        # [h*3*d, m] (or [h*3*d] for the bias) viewed per head as [h, 3, d, ...].
        per_head = w.reshape(cfg.n_heads, 3, cfg.d_head, *w.shape[1:])
        return per_head[:, i].reshape(cfg.n_heads * cfg.d_head, *w.shape[1:]).contiguous()

    return pick


def weight_table(cfg: TransformerConfig) -> list[WeightRule]:
    b, h = "blocks.{l}", "layers.{l}"
    rules = [WeightRule("embed.W_E", "embed_in.weight")]
    params = ("weight", "bias") if cfg.attn_qkv_bias else ("weight",)
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        for p in params:
            rules.append(WeightRule(f"{b}.attn.{proj}.{p}", f"{h}.attention.query_key_value.{p}", _qkv(i)))
    for p in params:
        rules.append(WeightRule(f"{b}.attn.o_proj.{p}", f"{h}.attention.dense.{p}"))
    for ours, theirs in [("ln1.w", "input_layernorm.weight"), ("ln1.b", "input_layernorm.bias"),
                         ("ln2.w", "post_attention_layernorm.weight"), ("ln2.b", "post_attention_layernorm.bias"),
                         ("mlp.w_in.weight", "mlp.dense_h_to_4h.weight"), ("mlp.w_in.bias", "mlp.dense_h_to_4h.bias"),
                         ("mlp.w_out.weight", "mlp.dense_4h_to_h.weight"), ("mlp.w_out.bias", "mlp.dense_4h_to_h.bias")]:
        rules.append(WeightRule(f"{b}.{ours}", f"{h}.{theirs}"))
    rules += [WeightRule("ln_final.w", "final_layer_norm.weight"), WeightRule("ln_final.b", "final_layer_norm.bias")]
    if not cfg.tie_embeddings:
        # embed_out sits outside the gpt_neox. prefix
        rules.append(WeightRule("unembed.weight", "embed_out.weight"))
    return rules
