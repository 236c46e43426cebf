"""Llama-family GGUF files (llama.cpp's format) as Hugging Face checkpoints: config, float
weights and tokenizer, read with the ``gguf`` package (pure Python and numpy).

A GGUF carries no config.json and no tokenizer.json: the metadata is the config, under
llama.cpp's key names, and the vocabulary and merges are arrays in it. This module turns a
file into exactly what a Hugging Face Llama checkpoint directory holds (``config.json``,
float32 ``model.safetensors`` under Hugging Face's tensor names, ``tokenizer.json``), so the
rest of the loader treats it as one: `models.families.llama` maps it, no special case.

Choices, written down because TransformerLens refuses quantized checkpoints and offers no
precedent:
  - Weights are dequantized to float32 once, with the ``gguf`` package's numpy dequantizers.
    The analyses then run on the exact values the quantized model computes with (4-bit
    weights, exactly representable in float32), not on the original bf16 checkpoint.
  - llama.cpp's converter permutes the rows of the query and key projections of Llama-family
    models (architecture ``llama``, which is also how it writes Mistral) so that rotary pairs
    are adjacent; it is undone here. ``qwen2`` files are written unpermuted.
  - The conversion is cached as a Hugging Face directory in the user's cache directory
    (`cache_root`), keyed by the file's SHA-256, published by renaming a complete temporary
    directory; never next to the GGUF (which may sit in site-packages).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe.errors import CheckpointMismatch, InputError, UnsupportedArchitecture

# GGUF's general.architecture -> Hugging Face model_type, and whether llama.cpp permuted q/k.
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("mistral", True), "qwen2": ("qwen2", False)}
MAGIC = b"GGUF"
# llama.cpp's token types (llama_token_type): control and user-defined tokens are matched whole.
CONTROL, USER_DEFINED = 3, 4
# How each pre-tokenizer type splits text before byte-level BPE (llama.cpp's llama-vocab.cpp).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# (split digits one by one first?, the regex). "smollm" and the starcoder group split every
# digit, then apply GPT-2's regex; unknown or absent types fall back to GPT-2's.
PRE_TOKENIZERS = {
    "default": (False, _GPT2_SPLIT), "gpt-2": (False, _GPT2_SPLIT),
    "smollm": (True, _GPT2_SPLIT), "starcoder": (True, _GPT2_SPLIT), "refact": (True, _GPT2_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT), "llama-bpe": (False, _LLAMA3_SPLIT), "llama-v3": (False, _LLAMA3_SPLIT),
    "qwen2": (False, _QWEN2_SPLIT),
}
INSTALL_GGUF = "pip install gguf"
# Part of the cache key: bump it whenever the conversion's output changes, so a cache written by
# an older converter is not read as if this one had written it.
CONVERSION_VERSION = 1


@dataclass
class Converted:
    """A GGUF file as a Hugging Face checkpoint, in memory."""

    hf_config: dict[str, Any]  # config.json
    state: dict[str, torch.Tensor]  # Hugging Face tensor names, float32
    tokenizer_json: str  # tokenizer.json
    tokenizer_config: dict[str, Any]  # tokenizer_config.json


# ---------------------------------------------------------------------------- reading


def is_gguf(path: Path) -> bool:
    """Whether a file starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def open_gguf(path: Path) -> Any:
    """The file opened with ``gguf.GGUFReader``; CheckpointMismatch for one that is not a
    complete GGUF (wrong magic, truncated, damaged header)."""
    try:
        import gguf
    except ImportError:
        raise InputError(f"reading {path} needs the gguf package; install it with `{INSTALL_GGUF}`") from None
    if not is_gguf(path):
        raise CheckpointMismatch(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); "
                                 "pass a .gguf model file or a checkpoint directory")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors... for a bad file
        why = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointMismatch(f"{path} is not a readable GGUF file ({type(e).__name__}: {why}); it may be "
                                 "truncated: download it again") from None


def metadata(reader: Any) -> dict[str, Any]:
    """Every metadata field as a Python value (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def architecture(meta: dict[str, Any], path: Path) -> tuple[str, bool]:
    """(Hugging Face model_type, whether q/k rows are permuted) of a supported file."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(f"{path} holds a {arch!r} model; GGUF files of the Llama family are "
                                      f"supported: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def hf_config(meta: dict[str, Any], tensor_names: set[str], path: Path) -> dict[str, Any]:
    """The Hugging Face config.json a Llama-family GGUF's metadata describes."""
    model_type, _ = architecture(meta, path)
    arch = meta["general.architecture"]

    def key(name: str, default: Any = KeyError) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is KeyError:
            raise CheckpointMismatch(f"{path}: the metadata lacks {arch}.{name}, which a {arch} model needs; "
                                     "the file is incomplete")
        return value

    n_heads = int(key("attention.head_count"))
    d_model = int(key("embedding_length"))
    head_dim = int(key("attention.key_length", d_model // n_heads))
    rope_dim = int(key("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise UnsupportedArchitecture(f"{path}: rotary over {rope_dim} of {head_dim} head dimensions (partial "
                                      "rotary) is not implemented for the Llama family")
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", None, ""):
        raise UnsupportedArchitecture(f"{path}: RoPE scaling {scaling!r} is not implemented; only the default "
                                      "rotary embedding is")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    vocab = int(key("vocab_size", len(tokens)))
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM"}[model_type]],
        "hidden_size": d_model,
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(key("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "intermediate_size": int(key("feed_forward_length")),
        "max_position_embeddings": int(key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_names,
        # Qwen2 always has q/k/v biases (its model_type says so) and no output bias; a Llama with
        # attention_bias has all four.
        "attention_bias": model_type != "qwen2" and "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    if model_type == "qwen2":
        cfg["use_sliding_window"] = False
    window = key("attention.sliding_window", None)
    if window:
        cfg["sliding_window"] = int(window)
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{theirs}" in meta:
            cfg[ours] = int(meta[f"tokenizer.ggml.{theirs}"])
    return cfg


# Hugging Face tensor name (with {l}) for each GGUF tensor name (llama.cpp's gguf-py names).
_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{l}.attn_norm.weight": "model.layers.{l}.input_layernorm.weight",
    "blk.{l}.ffn_norm.weight": "model.layers.{l}.post_attention_layernorm.weight",
    "blk.{l}.attn_q.weight": "model.layers.{l}.self_attn.q_proj.weight",
    "blk.{l}.attn_k.weight": "model.layers.{l}.self_attn.k_proj.weight",
    "blk.{l}.attn_v.weight": "model.layers.{l}.self_attn.v_proj.weight",
    "blk.{l}.attn_output.weight": "model.layers.{l}.self_attn.o_proj.weight",
    "blk.{l}.attn_q.bias": "model.layers.{l}.self_attn.q_proj.bias",
    "blk.{l}.attn_k.bias": "model.layers.{l}.self_attn.k_proj.bias",
    "blk.{l}.attn_v.bias": "model.layers.{l}.self_attn.v_proj.bias",
    "blk.{l}.attn_output.bias": "model.layers.{l}.self_attn.o_proj.bias",
    "blk.{l}.ffn_gate.weight": "model.layers.{l}.mlp.gate_proj.weight",
    "blk.{l}.ffn_up.weight": "model.layers.{l}.mlp.up_proj.weight",
    "blk.{l}.ffn_down.weight": "model.layers.{l}.mlp.down_proj.weight",
}
# llama.cpp writes these in some files; the model does not use them.
_UNUSED = ("rope_freqs.weight",)


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for one llama.cpp adds for itself."""
    if name in _UNUSED:
        return None
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        pattern = ".".join(["blk", "{l}", *parts[2:]])
        theirs = _TENSOR_NAMES.get(pattern)
        return theirs.format(l=parts[1]) if theirs else None
    return _TENSOR_NAMES.get(name)


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's `permute` of a query/key projection [n_heads * d_head, ...]: within each
    head it stores the rotary pairs' first halves interleaved with their second halves."""
    d_half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, d_half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized(tensor: Any, path: Path) -> np.ndarray:
    """One tensor as float32 [rows, cols] (numpy's order: GGUF lists its shape innermost first)."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(tensor.tensor_type)
    try:
        values = quants.dequantize(tensor.data, qtype)
    except NotImplementedError:
        raise UnsupportedArchitecture(
            f"{path}: tensor {tensor.name} is quantized as {qtype.name}, which the gguf package cannot "
            f"dequantize; use a file quantized as one of {supported_quantizations()}") from None
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return np.asarray(values, dtype=np.float32).reshape(shape)


def supported_quantizations() -> list[str]:
    """The tensor types the installed gguf package can dequantize (tried on one block of zeros)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    names = []
    for qtype in GGMLQuantizationType:
        block, size = GGML_QUANT_SIZES[qtype]
        try:
            quants.dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
        except Exception:  # NotImplementedError, or a type whose block shape differs
            continue
        names.append(qtype.name)
    return names


def convert(path: Path) -> Converted:
    """Read, dequantize and rename a Llama-family GGUF: a Hugging Face checkpoint in memory."""
    reader = open_gguf(path)
    meta = metadata(reader)
    _, permuted = architecture(meta, path)
    names = {t.name for t in reader.tensors}
    cfg = hf_config(meta, names, path)
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for tensor in reader.tensors:
        theirs = hf_name(tensor.name)
        if theirs is None:
            if tensor.name not in _UNUSED:
                unknown.append(tensor.name)
            continue
        w = dequantized(tensor, path)
        if permuted and tensor.name.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = cfg["num_attention_heads"] if ".attn_q." in tensor.name else cfg["num_key_value_heads"]
            w = unpermute_rows(w, heads)
        # F32 tensors are views of the memory-mapped file: copy them into memory torch may own.
        state[theirs] = torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True))
    if unknown:
        raise UnsupportedArchitecture(f"{path}: tensors {unknown[:4]} ({len(unknown)} in all) have no place in a "
                                      f"{meta['general.architecture']} model here; the file has parts this "
                                      "workbench does not implement")
    tokenizer_json, tokenizer_config = tokenizer_files(meta, path)
    return Converted(cfg, state, tokenizer_json, tokenizer_config)


# ---------------------------------------------------------------------------- tokenizer


def tokenizer_files(meta: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json) of the byte-level BPE tokenizer a GGUF describes:
    its vocabulary and merges, llama.cpp's pre-tokenizer split for ``tokenizer.ggml.pre``,
    control and user-defined tokens matched whole, BOS added only where the metadata says."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedArchitecture(f"{path}: tokenizer model {kind!r} is not supported; byte-level BPE "
                                      "('gpt2', as SmolLM, Llama 3 and Qwen2 use) is")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    split_digits, regex = PRE_TOKENIZERS.get(meta.get("tokenizer.ggml.pre", "default"), PRE_TOKENIZERS["default"])
    steps = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    steps += [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=(t == CONTROL), normalized=False)
               for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
    tok.add_tokens(special)

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        bos_id = tokens.index(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos, "pad_token": token("padding_token_id"), "unk_token": token("unknown_token_id"),
        "add_bos_token": add_bos, "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{meta['general.architecture']}.context_length", 2048)),
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tok.to_str(), config


def hf_tokenizer(tokenizer_json: str, config: dict[str, Any]) -> Any:
    """The tokenizer as transformers' fast tokenizer, built from our tokenizer.json as it is.
    Not through AutoTokenizer: transformers 5 picks a class from config.json's model_type (e.g.
    Qwen2Tokenizer) that replaces the pre-tokenizer the GGUF's metadata asked for."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    kwargs = {k: v for k, v in config.items() if k != "tokenizer_class"}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **kwargs)


def tokenizer_from_dir(folder: Path) -> Any:
    """`hf_tokenizer` of a cached conversion's tokenizer files."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    return hf_tokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"), config)


# ---------------------------------------------------------------------------- the cache


def cache_root() -> Path:
    """Where converted models are kept: $PROBE_CACHE, else $XDG_CACHE_HOME/probe, else ~/.cache/probe."""
    if os.environ.get("PROBE_CACHE"):
        return Path(os.environ["PROBE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "probe"


def digest(path: Path) -> str:
    """SHA-256 of the file: the cache key, so an edited or replaced file is converted again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_dir(path: Path) -> Path:
    """The cache directory of this file's conversion (it may not exist yet)."""
    return cache_root() / "gguf" / f"{path.stem}-{digest(path)[:20]}-v{CONVERSION_VERSION}"


def write_checkpoint(converted: Converted, target: Path) -> Path:
    """Publish a conversion as a Hugging Face directory: written whole into a temporary sibling,
    every file fsynced, then renamed into place, so a crash leaves no half-written cache entry."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(converted.state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(converted.hf_config, indent=2))
        (tmp / "tokenizer.json").write_text(converted.tokenizer_json)
        (tmp / "tokenizer_config.json").write_text(json.dumps(converted.tokenizer_config, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent writer's finished copy
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process published the same conversion first
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


_warned_uncached: set[str] = set()


def checkpoint(path: Path) -> Path | Converted:
    """The cached Hugging Face directory of a GGUF file, converting it on first use; where the
    cache cannot be written, the conversion in memory (with one warning per cache location)."""
    target = cached_dir(path)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    converted = convert(path)
    try:
        return write_checkpoint(converted, target)
    except OSError as e:
        root = str(cache_root())
        if root not in _warned_uncached:
            _warned_uncached.add(root)
            warnings.warn(f"cannot cache the conversion of {path.name} in {root} ({e.strerror or e}); converted in "
                          "memory, which every load repeats. Set PROBE_CACHE to a writable directory to keep it.",
                          stacklevel=3)
        return converted
