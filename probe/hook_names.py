"""What a hook *name* says, without torch: which hooks hold attention, which are recorded by
default, and how a names filter (a name, a glob, a list, a predicate) matches names. A leaf, so
the store's reader and the dashboard can use it without importing torch; `probe.hooks`
re-exports it for the model side."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Union

NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]  # noqa: UP007 (runtime alias on 3.10)

# Hooks whose activation is [batch, head, query_pos, key_pos] (per prompt, not per token).
ATTENTION_HOOKS = ("hook_attn_scores", "hook_pattern")
# Hooks left out unless asked for by name: hook_result is [batch, pos, head, d_model], n_heads
# times the residual stream, and costs an extra einsum (TransformerLens also leaves it opt-in).
OPT_IN_HOOKS = ("hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")


def is_attention_hook(name: str) -> bool:
    """True for hooks holding attention scores or patterns ([batch, head, query, key])."""
    return name.endswith(ATTENTION_HOOKS)


def default_hook_names(names: Iterable[str]) -> list[str]:
    """The hooks recorded or cached when the caller names none: all but the opt-in ones."""
    return [n for n in names if not n.endswith(OPT_IN_HOOKS)]


def name_matcher(names_filter: NamesFilter) -> Callable[[str], bool]:
    """Turn a names filter into a predicate.

    Accepted forms, as in TransformerLens plus globs: None (everything), a callable, a
    single name or glob (``"blocks.*.attn.hook_pattern"``), or a list of names/globs.
    """
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    exact = {p for p in patterns if not any(c in p for c in "*?[")}
    globs = [p for p in patterns if p not in exact]
    return lambda name: name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def block_of(name: str) -> int | None:
    """The layer of a per-block hook ("blocks.3.attn.hook_z" -> 3); None for the others."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


# Encoder-decoder models run two sequences: the source (the encoder's) and the target (the
# decoder's). Cross-attention's keys and values are over the source; its scores and pattern are
# [head, target, source].
_TARGET_PREFIXES = ("decoder.", "hook_decoder_", "decoder_")
_SOURCE_SIDE_OF_CROSS = (".cross_attn.hook_k", ".cross_attn.hook_v")


def sequence_of(name: str) -> str:
    """Which sequence a hook's positions run over: "source" (the encoder's, and the one sequence
    of decoder-only and encoder-only models), "target" (the decoder's) or, for cross-attention's
    scores and pattern, "cross" (queries over the target, keys over the source)."""
    if not name.startswith(_TARGET_PREFIXES):
        return "source"
    if is_attention_hook(name):
        return "cross" if ".cross_attn." in name else "target"
    return "source" if name.endswith(_SOURCE_SIDE_OF_CROSS) else "target"
