"""`probe attend TEXT --from WORD --to WORD...`: heads attending most from one word to others."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("attend", help="heads that attend most from one word to others in a text")
    p.add_argument("text")
    p.add_argument("--from", dest="from_word", required=True, help="query word, e.g. it")
    p.add_argument("--to", nargs="+", required=True, help="key word(s), e.g. animal street")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    return p


def run(args: argparse.Namespace) -> int:
    import models

    model = models.load(args.model)
    print_attention(model, args.model, args.text, args.from_word, args.to, args.top)
    return 0


def print_attention(model, name: str, text: str, from_word: str, to: list[str], top: int) -> None:
    from analyses.word_attention import top_heads, word_to_word_attention

    print(f"model: {name} ({model.cfg.family}, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    print(f"text:  {text}")
    print(f"tokens: {model.to_str_tokens(text)}")
    for key in to:
        scores = word_to_word_attention(model, text, from_word, key)
        print(f"\nheads attending most from {from_word!r} to {key!r}:")
        for h in top_heads(scores, top):
            print(f"  {h.label:<6} {h.score:.3f}")
