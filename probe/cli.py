"""The `probe` command. Each subcommand imports what it needs inside its function so
`probe --help` stays fast (DESIGN.md, "Layout")."""

from __future__ import annotations

import argparse
import sys

SEED = "The animal didn't cross the street because it was tired."


def cmd_attend(args: argparse.Namespace) -> int:
    import models
    from analyses.word_attention import top_heads, word_to_word_attention

    model = models.load(args.model)
    print(f"model: {args.model} ({model.cfg.family}, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    print(f"text:  {args.text}")
    print(f"tokens: {model.to_str_tokens(args.text)}")
    for key in args.to:
        scores = word_to_word_attention(model, args.text, args.from_word, key)
        print(f"\nheads attending most from {args.from_word!r} to {key!r}:")
        for h in top_heads(scores, args.top):
            print(f"  {h.label:<6} {h.score:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.text, args.from_word, args.to, args.top = SEED, "it", ["animal", "street"], 3
    return cmd_attend(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description="Mechanistic-interpretability workbench.")
    from probe import __version__

    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the seed sentence through the default model and show its heads")
    demo.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    demo.set_defaults(func=cmd_demo)

    attend = sub.add_parser("attend", help="heads that attend most from one word to others in a text")
    attend.add_argument("text")
    attend.add_argument("--from", dest="from_word", required=True, help="query word, e.g. it")
    attend.add_argument("--to", nargs="+", required=True, help="key word(s), e.g. animal street")
    attend.add_argument("--top", type=int, default=3)
    attend.add_argument("--model", default="minilm")
    attend.set_defaults(func=cmd_attend)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes become one clear line; real bugs keep their traceback
        if is_user_error(e):
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"probe {args.command}: error: {msg}", file=sys.stderr)
            return 2
        raise


def is_user_error(e: BaseException) -> bool:
    from models import CheckpointMismatch, InputError, ModelNotFound, UnsupportedArchitecture

    return isinstance(e, (InputError, ModelNotFound, UnsupportedArchitecture, CheckpointMismatch, KeyError,
                          FileNotFoundError, PermissionError))


if __name__ == "__main__":
    sys.exit(main())
