"""Checks an analysis makes of a run before reading it or intervening on it: a missing hook is
one clear error that says which hook and how to record it, not a KeyError deep in a loop; a
model that is not the run's is refused before its numbers are mixed with the run's."""

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


def check_model_matches(model, run) -> None:
    """Interventions need the very model the run was recorded with: the weights digest in
    the manifest decides; a run without one (written by another tool) is at least checked
    for the same architecture."""
    from probe.recorder import weights_digest

    recorded = run.manifest.get("model", {})
    fix = "give the model the run was recorded with (--model NAME_OR_DIR)"
    if recorded.get("weights_sha256"):
        if recorded["weights_sha256"] != weights_digest(model):
            raise InputError(f"{run.path} was recorded with {recorded.get('name')!r} but the model given is "
                             f"{model.cfg.model_name!r} (different weights); {fix}")
        return
    fields = ("n_layers", "n_heads", "d_model", "d_vocab", "causal")
    differ = [f"{f} {run.config.get(f)} vs {getattr(model.cfg, f)}" for f in fields
              if f in run.config and run.config[f] != getattr(model.cfg, f)]
    if differ:
        raise InputError(f"{run.path} was recorded with another architecture than {model.cfg.model_name!r} "
                         f"({'; '.join(differ)}); {fix}")
