"""Shared fixtures: tiny random-weight Hugging Face models of every supported family,
saved to disk with a small offline tokenizer, so `models.load(dir)` is tested on the same
files `transformers` reads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

VOCAB_WORDS = (
    "the animal didn't cross street because it was tired wide a cat dog sat on mat and ran "
    "to house big small red blue green old new man woman said that he she they we you i"
).split()


def make_tokenizer(kind: str):
    """A word-level tokenizer built offline. ``kind``: "bert" adds [CLS]/[SEP] like
    BERT's; "gpt2" adds nothing (BOS is prepended by the model, as for GPT-2); "llama"
    adds <s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + VOCAB_WORDS + [".", ",", "'"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>")


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included, so nothing is trivially 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name.lower() or "ln" in name.lower()) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


V = 64  # vocab size of the tiny models (>= the tokenizer's vocabulary)


def hf_configs():
    from transformers import BertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    common_dec = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64)
    return {
        "gpt2": ("gpt2", GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=4, eos_token_id=5)),
        "bert": ("bert", BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)),
        "llama": ("llama", LlamaConfig(**common_dec, num_key_value_heads=2, rope_theta=500.0,
                                       bos_token_id=4, eos_token_id=5, pad_token_id=0)),
        "qwen2": ("llama", Qwen2Config(**common_dec, num_key_value_heads=1, bos_token_id=4, eos_token_id=5,
                                       tie_word_embeddings=True)),
        "mistral": ("llama", MistralConfig(**common_dec, num_key_value_heads=2, sliding_window=None,
                                           bos_token_id=4, eos_token_id=5)),
        "neox": ("gpt2", GPTNeoXConfig(**common_dec, rotary_pct=0.5, use_parallel_residual=True,
                                       bos_token_id=4, eos_token_id=5)),
        "neox_seq": ("gpt2", GPTNeoXConfig(**common_dec, rotary_pct=0.25, use_parallel_residual=False,
                                           bos_token_id=4, eos_token_id=5)),
    }


FAMILIES = list(hf_configs())


def build_hf(family: str, path) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    tok_kind, cfg = hf_configs()[family]
    cfg._attn_implementation = "eager"
    auto = AutoModel if family == "bert" else AutoModelForCausalLM
    model = auto.from_config(cfg, attn_implementation="eager")
    randomize(model, seed=hash(family) % 1000)
    model.eval()
    model.save_pretrained(path)
    make_tokenizer(tok_kind).save_pretrained(path)
    return model


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """{family: (directory, hf model)} built once per session."""
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(family)
        out[family] = (path, build_hf(family, path))
    return out


@pytest.fixture(scope="session")
def minilm():
    import models

    return models.load("minilm")
