"""What several commands print, write or parse the same way: the command line for a sidecar,
the -o paths (checked before the work), and the argparse types of flags that are only a range
(a count, a seed, a learning rate, a port), so a value out of range is refused with exit 2 before
anything runs."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from probe.errors import InputError
from probe.paths import output_path_problem


def command_line() -> str:
    """The command as the user typed it, for a result's sidecar ("how was this made?")."""
    return "probe " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def output_file(output: str | Path) -> Path:
    """The -o FILE the user named, refused (InputError) when it is a directory or sits under
    a file. Commands call it before their work, so a typo costs nothing."""
    if problem := output_path_problem(output):
        raise InputError(f"-o {problem}")
    return Path(output)


def output_dir(output: str | Path) -> Path:
    """The -o DIR the user named, refused (InputError) when it is a file or sits under one."""
    if problem := output_path_problem(output, folder=True):
        raise InputError(f"-o {problem}")
    return Path(output)


def write_csv(table, output: str | Path) -> Path:
    """A table to the -o FILE the user named (its folder made)."""
    out = output_file(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


# ---------------------------------------------------------------- argparse types
def stage_printer(label: str):
    """A progress callback for a long library call made of stages: each stage it is told of is
    printed to stderr as one line with the time since the call began ("coref [12s]: the
    per-head ablation sweep (270 heads) ..."), so a run of many minutes shows where it is."""
    import sys
    import time

    t0 = time.perf_counter()

    def stage(text: str) -> None:
        print(f"{label} [{time.perf_counter() - t0:.0f}s]: {text} ...", file=sys.stderr, flush=True)

    return stage


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None


def positive_int(text: str) -> int:
    """A count of at least 1 (--top, -n, --steps, --batch-size)."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number of 0 or more (--seed: numpy refuses negative seeds; --cache-mb)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def finite_positive_float(text: str) -> float:
    """A number above 0 that is not nan or inf (--lr)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def port(text: str) -> int:
    """A TCP port to listen on, 1 to 65535 (0, "any free port", would leave the URL unknown)."""
    value = _whole_number(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, not {text}")
    return value


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
