"""The run format of docs/cache-format.md, checked when a run is read: every defect of a
manifest or of prompts.jsonl becomes one `StoreError` naming the file, the field and what is
wrong, instead of a KeyError or TypeError deep in whichever command touched it first.

Only what readers rely on is checked (the fields, their types, the shard list's consistency);
values the format leaves open (model config fields, label fields) are not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import StoreError

# A shard's file name as the writer makes it: inside shards/, so a crafted manifest can
# never make a reader open a file outside the run.
# NNNNN.h5 numbered by the single-process recorder; pNNNNNNNNN.h5 named by first prompt by Ray workers
SHARD_FILE = re.compile(r"shards/(\d{5}|p\d{9})\.h5")
HOOK_KINDS = ("token", "attention")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """``manifest`` (parsed run.json) if it has the documented shape, else StoreError."""

    def bad(what: str) -> StoreError:
        return StoreError(f"{where}: {what}; the run is damaged and cannot be read (record it again, or "
                          "--resume an interrupted recording)")

    if not isinstance(manifest, dict):
        raise bad(f"holds a JSON {type(manifest).__name__}, not an object")
    model = manifest["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(
            model.get("config"), dict):
        raise bad("'model' must be an object with a 'name' string and a 'config' object")
    config = model["config"]
    for key in ("n_layers", "n_heads", "d_model", "n_kv_heads"):
        if key in config and not (_whole(config[key]) and config[key] > 0) and not (
                key == "n_kv_heads" and config[key] is None):  # None: as many as n_heads
            raise bad(f"model config {key!r} is {config[key]!r}, not a positive whole number")
    if config.get("n_kv_heads") and "n_heads" in config and config["n_heads"] % config["n_kv_heads"]:
        raise bad(f"model config 'n_heads' ({config['n_heads']}) is not a multiple of 'n_kv_heads' "
                  f"({config['n_kv_heads']}); grouped-query heads share key/value heads in equal groups")
    hooks = manifest["hooks"]
    if not isinstance(hooks, dict):
        raise bad("'hooks' must be an object of hook name -> {kind, shape}")
    for name, info in hooks.items():
        if not (isinstance(info, dict) and info.get("kind") in HOOK_KINDS and isinstance(info.get("shape"), list)
                and all(_whole(n) for n in info["shape"])):
            raise bad(f"hook {name!r} must be {{\"kind\": \"token\" or \"attention\", \"shape\": [whole numbers]}}")
    if not _whole(manifest["n_prompts"]):
        raise bad(f"'n_prompts' is {manifest['n_prompts']!r}, not a whole number")
    if not isinstance(manifest["complete"], bool):
        raise bad(f"'complete' is {manifest['complete']!r}, not true or false")
    _check_shards(manifest, bad)
    return manifest


def _check_shards(manifest: dict[str, Any], bad) -> None:
    shards = manifest["shards"]
    if not isinstance(shards, list):
        raise bad(f"'shards' is {json.dumps(shards)[:40]}, not a list")
    next_prompt = 0
    for k, s in enumerate(shards):
        if not isinstance(s, dict):
            raise bad(f"shard {k} is a JSON {type(s).__name__}, not an object")
        if not (isinstance(s.get("file"), str) and SHARD_FILE.fullmatch(s["file"])):
            raise bad(f"shard {k} has file {s.get('file')!r}; shard files are named shards/NNNNN.h5 (or "
                      "shards/pNNNNNNNNN.h5, by first prompt, from Ray workers)")
        for key in ("first_prompt", "n_prompts", "n_tokens"):
            if not _whole(s.get(key)):
                raise bad(f"shard {k} has {key} {s.get(key)!r}, not a whole number")
        if s["first_prompt"] != next_prompt:
            raise bad(f"shard {k} starts at prompt {s['first_prompt']}, but the shards before it end at {next_prompt}")
        next_prompt += s["n_prompts"]
    if next_prompt > manifest["n_prompts"]:
        raise bad(f"the shards hold {next_prompt} prompts, more than the run's {manifest['n_prompts']}")
    if manifest["complete"] and next_prompt != manifest["n_prompts"]:
        raise bad(f"it says complete, but its shards hold {next_prompt} of {manifest['n_prompts']} prompts")


def read_prompt_records(path: Path) -> list[dict[str, Any]]:
    """The run's prompts.jsonl: one JSON object with a "text" string per line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise StoreError(f"{path} is not valid UTF-8 (byte offset {e.start}); the run is damaged") from None
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; the run is damaged and cannot be read") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise StoreError(f"{path}:{n}: not valid JSON ({str(e)[:60]}); the run is damaged") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise StoreError(f"{path}:{n}: a prompt record must be an object with a \"text\" string; the run is "
                             "damaged")
        records.append(obj)
    return records
