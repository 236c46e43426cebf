"""GPT-2: learned positions, pre-LayerNorm, GELU (tanh), causal, tied unembedding.
Hugging Face stores its projections as Conv1D ([in, out]), hence the transposes."""

from __future__ import annotations

from ..config import TransformerConfig
from . import UnsupportedArchitecture, WeightRule, transpose

MODEL_TYPES = ("gpt2",)
PREFIXES = ("transformer.",)
IGNORED = (r"attn\.bias$", r"attn\.masked_bias$")


def config_from_hf(hf: dict) -> TransformerConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise UnsupportedArchitecture("GPT-2 variants with non-standard attention scaling are not supported")
    d = hf["n_embd"]
    return TransformerConfig(
        d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"], d_vocab=hf["vocab_size"],
        n_ctx=hf["n_positions"], d_mlp=hf.get("n_inner") or 4 * d, causal=True, norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), positional="learned",
        act_fn=_act(hf.get("activation_function", "gelu_new")), tie_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
        default_prepend_bos=True, family="gpt2",
    )


def _act(name: str) -> str:
    acts = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
    if name not in acts:
        raise UnsupportedArchitecture(f"GPT-2 activation {name!r} is not supported; known: {sorted(acts)}")
    return acts[name]


def _qkv(i: int, bias: bool):
    def pick(w, cfg: TransformerConfig):
        # c_attn: weight [m, 3m] (Conv1D), bias [3m]; columns are [q | k | v].
        part = w.chunk(3, dim=-1)[i]
        return part.contiguous() if bias else part.T.contiguous()

    return pick


def weight_table(cfg: TransformerConfig) -> list[WeightRule]:
    b = "blocks.{l}"
    h = "h.{l}"
    rules = [
        WeightRule("embed.W_E", "wte.weight"),
        WeightRule("pos_embed.W_pos", "wpe.weight"),
        WeightRule(f"{b}.ln1.w", f"{h}.ln_1.weight"),
        WeightRule(f"{b}.ln1.b", f"{h}.ln_1.bias"),
        WeightRule(f"{b}.attn.q_proj.weight", f"{h}.attn.c_attn.weight", _qkv(0, False)),
        WeightRule(f"{b}.attn.k_proj.weight", f"{h}.attn.c_attn.weight", _qkv(1, False)),
        WeightRule(f"{b}.attn.v_proj.weight", f"{h}.attn.c_attn.weight", _qkv(2, False)),
        WeightRule(f"{b}.attn.q_proj.bias", f"{h}.attn.c_attn.bias", _qkv(0, True)),
        WeightRule(f"{b}.attn.k_proj.bias", f"{h}.attn.c_attn.bias", _qkv(1, True)),
        WeightRule(f"{b}.attn.v_proj.bias", f"{h}.attn.c_attn.bias", _qkv(2, True)),
        WeightRule(f"{b}.attn.o_proj.weight", f"{h}.attn.c_proj.weight", transpose),
        WeightRule(f"{b}.attn.o_proj.bias", f"{h}.attn.c_proj.bias"),
        WeightRule(f"{b}.ln2.w", f"{h}.ln_2.weight"),
        WeightRule(f"{b}.ln2.b", f"{h}.ln_2.bias"),
        WeightRule(f"{b}.mlp.w_in.weight", f"{h}.mlp.c_fc.weight", transpose),
        WeightRule(f"{b}.mlp.w_in.bias", f"{h}.mlp.c_fc.bias"),
        WeightRule(f"{b}.mlp.w_out.weight", f"{h}.mlp.c_proj.weight", transpose),
        WeightRule(f"{b}.mlp.w_out.bias", f"{h}.mlp.c_proj.bias"),
        WeightRule("ln_final.w", "ln_f.weight"),
        WeightRule("ln_final.b", "ln_f.bias"),
    ]
    if not cfg.tie_embeddings:
        rules.append(WeightRule("unembed.weight", "lm_head.weight"))
    return rules
