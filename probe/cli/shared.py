"""What several commands print or write the same way."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line() -> str:
    """The command as the user typed it, for a result's sidecar ("how was this made?")."""
    return "probe " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_csv(table, output: str | Path) -> Path:
    """A table to the -o FILE the user named (its folder made)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def print_attention(model, name: str, text: str, from_word: str, to: list[str], top: int) -> None:
    """What `probe attend` prints (and `probe demo` first): the model, the tokens, and per key word
    the heads attending most from the query word to it."""
    from analyses.word_attention import top_heads, word_to_word_attention

    print(f"model: {name} ({model.cfg.family}, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    print(f"text:  {text}")
    print(f"tokens: {model.to_str_tokens(text)}")
    for key in to:
        scores = word_to_word_attention(model, text, from_word, key)
        print(f"\nheads attending most from {from_word!r} to {key!r}:")
        for h in top_heads(scores, top):
            print(f"  {h.label:<6} {h.score:.3f}")
