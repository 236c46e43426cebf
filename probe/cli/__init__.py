"""The `probe` command: a thin shell over the library.

One module per command, each with ``add_parser(subparsers)`` (its flags) and ``run(args)``
(parse, call one library function, print). A command imports what it needs inside ``run``,
so `probe --help` stays fast. Errors: a `probe.errors.ProbeError` (or an OS error the user
caused: a missing file, a permission) prints one line and exits 2; anything else is a bug
and keeps its traceback (docs/design.md, "Errors").
"""

from __future__ import annotations

import argparse
import importlib
import sys

# The order of `probe --help`: the seed question, then the pipeline in the order it is used
# (record a run, analyse it, intervene, browse it), then training the toy models.
COMMANDS = ("demo", "attend", "record", "heads", "probes", "coref", "ablate", "patch", "circuit", "dashboard", "train")


def build_parser() -> argparse.ArgumentParser:
    from probe import __version__

    parser = argparse.ArgumentParser(prog="probe", description="Mechanistic-interpretability workbench: record a "
                                     "model's activations, analyse them, intervene on heads, browse the results.")
    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"probe.cli.{name}_command")
        module.add_parser(sub).set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from probe.errors import is_user_error, one_line

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes become one clear line; real bugs keep their traceback
        if is_user_error(e):
            print(f"probe {args.command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        raise
