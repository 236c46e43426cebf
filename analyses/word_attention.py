"""Which heads attend from one word to another: the seed question of the project
("The animal didn't cross the street because it was tired": which heads link *it* to
*animal*?).

Words are usually several subword tokens. As Clark et al. (2019, "What does BERT look
at?") do, attention *to* a word is the sum over its tokens and attention *from* a word
is the mean over its tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from models import HookedTransformer
from probe.errors import InputError
from probe.head_labels import check_top, head_label


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    score: float  # attention mass from the query word to the key word

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)


WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # "didn't" is one word; punctuation stands alone


def word_token_spans(model: HookedTransformer, text: str) -> tuple[list[str], list[list[int]]]:
    """The text's words (contractions kept whole, punctuation separate) and, for each,
    the positions of the tokens that overlap it. Special tokens belong to no word."""
    enc = model.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    prepend = int(bool(model.cfg.default_prepend_bos and ids and ids[0] != model.tokenizer.bos_token_id))
    special = set(model.tokenizer.all_special_ids)
    names, spans = [], []
    for match in WORD.finditer(text):
        start, end = match.span()
        span = [pos + prepend for pos, ((a, b), t) in enumerate(zip(offsets, ids))
                if t not in special and b > a and a < end and b > start]
        if span:
            names.append(match.group().lower())
            spans.append(span)
    return names, spans


def find_word(words: list[str], word: str, occurrence: int = 0) -> int:
    hits = [i for i, w in enumerate(words) if w == word.lower()]
    if len(hits) <= occurrence:
        raise InputError(f"word {word!r} does not occur {'' if occurrence == 0 else str(occurrence + 1) + ' times '}"
                         f"in the text; its words are {words}")
    return hits[occurrence]


@torch.no_grad()
def word_to_word_attention(model: HookedTransformer, text: str, query_word: str, key_word: str) -> torch.Tensor:
    """[layer, head] attention from ``query_word`` to ``key_word`` (first occurrences)."""
    words, spans = word_token_spans(model, text)
    q, k = spans[find_word(words, query_word)], spans[find_word(words, key_word)]
    _, cache = model.run_with_cache(text, names_filter="blocks.*.attn.hook_pattern")
    patterns = torch.stack([cache["pattern", layer][0] for layer in range(model.cfg.n_layers)])  # [l, h, q, k]
    return patterns[:, :, q][:, :, :, k].sum(-1).mean(-1)


def top_heads(scores: torch.Tensor, k: int = 3) -> list[HeadScore]:
    flat = scores.flatten()
    top = torch.topk(flat, min(check_top(k), flat.numel()))
    n_heads = scores.shape[1]
    return [HeadScore(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(top.values, top.indices)]
