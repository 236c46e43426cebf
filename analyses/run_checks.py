"""Checks an analysis makes of a run before reading it, so a missing hook is one clear
error that says which hook and how to record it, not a KeyError deep in a loop."""

from __future__ import annotations

from probe.errors import InputError


def require_layer_hooks(run, hook: str, purpose: str, layers: range | list[int] | None = None) -> None:
    """Refuse a run that lacks ``blocks.{l}.{hook}`` for any of ``layers`` (default: all)."""
    layers = range(run.config["n_layers"]) if layers is None else layers
    missing = [f"blocks.{layer}.{hook}" for layer in layers if f"blocks.{layer}.{hook}" not in run.hooks]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{purpose} need {hook} of every layer, and the run {run.path} lacks {shown}; record it with "
                         f"`probe record --names 'blocks.*.{hook}' ...` (the default, no --names, records every hook)")
