"""`probe attend TEXT --from WORD --to WORD...`: heads attending most from one word to others."""

from __future__ import annotations

import argparse

from probe.cli.shared import positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("attend", help="heads that attend most from one word to others in a text")
    p.add_argument("text")
    p.add_argument("--from", dest="from_word", required=True, help="query word, e.g. it")
    p.add_argument("--to", nargs="+", required=True, help="key word(s), e.g. animal street")
    p.add_argument("--top", type=positive_int, default=3, help="heads to print per key word (default 3)")
    p.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    return p


def run(args: argparse.Namespace) -> int:
    import models
    from probe.cli.shared import print_attention

    model = models.load(args.model)
    print_attention(model, args.model, args.text, args.from_word, args.to, args.top)
    return 0
