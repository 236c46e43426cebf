"""Per-family knowledge: how a Hugging Face config maps to `TransformerConfig`, and a
weight table that maps checkpoint tensors to ours. Nothing here runs a forward pass.

A family module defines:
    MODEL_TYPES   the Hugging Face ``model_type`` values it covers
    PREFIXES      base-model prefixes a checkpoint may put in front of every key
    IGNORED       regexes of checkpoint keys that the hooked model does not use
    config_from_hf(hf: dict) -> TransformerConfig
    weight_table(cfg) -> list[WeightRule]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from probe.errors import CheckpointMismatch, UnsupportedArchitecture

from ..config import TransformerConfig

Transform = Callable[[torch.Tensor, TransformerConfig], torch.Tensor]


@dataclass(frozen=True)
class WeightRule:
    ours: str  # may contain {l} (every layer; the encoder's in encoder-decoder models) or {d} (decoder layers)
    theirs: str  # the same placeholder
    transform: Transform | None = None
    optional: bool = False  # e.g. an untied LM head that is absent when tied


def transpose(w: torch.Tensor, cfg: TransformerConfig) -> torch.Tensor:
    return w.T.contiguous()


def family_for(model_type: str) -> ModuleType:
    from . import bart, bert, gpt2, llama, neox, t5

    families = (gpt2, bert, llama, neox, bart, t5)
    for fam in families:
        if model_type in fam.MODEL_TYPES:
            return fam
    supported = sorted(t for fam in families for t in fam.MODEL_TYPES)
    raise UnsupportedArchitecture(
        f"model_type {model_type!r} is not supported; supported families: {supported}. "
        "A new family is a config mapping plus a weight table in models/families/."
    )


def convert_state_dict(fam: ModuleType, cfg: TransformerConfig, theirs: dict[str, torch.Tensor],
                       source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply the family's weight table. Returns (our state dict, unused checkpoint keys).
    Raises `CheckpointMismatch` naming every missing tensor."""
    theirs = strip_prefix(theirs, fam.PREFIXES)
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for rule in fam.weight_table(cfg):
        if "{d}" in rule.ours:
            layers = range(cfg.n_decoder_layers or 0)
        else:
            layers = range(cfg.n_layers) if "{l}" in rule.ours else [None]
        for layer in layers:
            src = rule.theirs.format(l=layer, d=layer)
            dst = rule.ours.format(l=layer, d=layer)
            if src not in theirs:
                if not rule.optional:
                    missing.append(src)
                continue
            t = theirs[src]
            ours[dst] = rule.transform(t, cfg) if rule.transform else t
            used.add(src)
    if missing:
        raise CheckpointMismatch(
            f"{source}: the checkpoint lacks {len(missing)} tensors that a {cfg.family} model with "
            f"this config.json needs, e.g. {missing[:5]}. Is the weight file complete and does it "
            "belong to this config?"
        )
    ignored = [re.compile(p) for p in fam.IGNORED]
    unused = [k for k in theirs if k not in used and not any(p.search(k) for p in ignored)]
    return ours, unused


def strip_prefix(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if prefix and any(k.startswith(prefix) for k in sd):
            return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    return sd


def rope_settings(hf: dict) -> tuple[float, float]:
    """(base, partial rotary fraction) from either the transformers>=5 ``rope_parameters``
    dict or the older flat keys. Scaled RoPE variants are refused rather than run wrong."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedArchitecture(
            f"RoPE scaling {rope_type!r} is not implemented; only the default rotary embedding is"
        )
    base = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    frac = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    return float(base), float(frac)
