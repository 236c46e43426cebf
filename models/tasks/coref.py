"""Toy coreference: which noun does "it" refer to? The seed sentence's pattern.

    The animal didn't cross the street because it was tired. The tired one was the -> animal
    The animal didn't cross the street because it was wide.  The wide one was the  -> street

Each sentence names one animate noun and one place, in an order that depends on the
template, and ends with an adjective that fits only one of them (tired/hungry... fit
animates; wide/busy... fit places). The question repeats the adjective and the model must
answer with the noun it describes, so it has to resolve the pronoun through the
adjective: neither position nor a memorised sentence gives the answer, because the
(animate, place, adjective) combinations of the test split never occur in training.

Ground truth per example (see `Example`): the answer, both candidate nouns and the token
positions of the pronoun, the antecedent, the other candidate and the adjective.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch

from ..config import TransformerConfig
from ..tokens import pad
from . import SPECIALS

NAME = "coref"
DESCRIPTION = "small decoder that answers which noun 'it' refers to, from the adjective (held-out combinations)"

ANIMATES = ["animal", "dog", "cat", "horse", "cow", "goat", "sheep", "fox", "deer", "rabbit", "boy", "girl", "man",
            "woman", "child", "farmer"]
PLACES = ["street", "road", "river", "bridge", "field", "yard", "path", "hill", "lake", "square", "park", "tunnel",
          "track", "canal", "valley", "lane"]
ANIMATE_ADJ = ["tired", "hungry", "scared", "sleepy", "lazy", "sick", "nervous", "weak"]
PLACE_ADJ = ["wide", "busy", "flooded", "icy", "narrow", "steep", "crowded", "muddy"]
TEMPLATES = [  # {a}: the animate noun, {p}: the place
    "The {a} didn't cross the {p} because it was {adj}.",
    "The {p} was not crossed by the {a} because it was {adj}.",
    "The {a} avoided the {p} because it was {adj}.",
    "The {p} stopped the {a} because it was {adj}.",
]
QUESTION = " The {adj} one was the"
TEST_FRACTION = 0.2
training_defaults = {"steps": 1000, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "warmup": 100}

WORD = re.compile(r"\w+|[^\w\s]")  # the word-level tokenizer's pre-tokenization


@dataclass(frozen=True)
class Example:
    text: str  # the prompt, ending in "... was the"
    answer: str  # the antecedent noun (the next token)
    other: str  # the other candidate noun
    adjective: str
    template: int
    pronoun_pos: int  # token positions in the prompt's ids (with <bos> at 0)
    antecedent_pos: int
    other_pos: int
    adjective_pos: int  # the adjective after "it was"

    @property
    def candidates(self) -> tuple[str, str]:
        return (self.answer, self.other)


def vocabulary() -> list[str]:
    words: set[str] = set(ANIMATES + PLACES + ANIMATE_ADJ + PLACE_ADJ)
    for t in TEMPLATES + [QUESTION]:
        words.update(w for w in WORD.findall(t.replace("{a}", "").replace("{p}", "").replace("{adj}", "")))
    return SPECIALS + sorted(words)


def model_config(vocab_size: int) -> TransformerConfig:
    return TransformerConfig(
        d_model=64, n_layers=2, n_heads=4, d_mlp=256, d_vocab=vocab_size, n_ctx=32, causal=True,
        positional="learned", norm="layernorm", act_fn="gelu", tie_embeddings=False,
        bos_token_id=SPECIALS.index("<bos>"), pad_token_id=SPECIALS.index("<pad>"), default_prepend_bos=True,
        model_name="toy-coref", family="toy",
    )


def is_test(a: str, p: str, adj: str) -> bool:
    """The held-out split, by a stable hash of the (animate, place, adjective) triple."""
    h = int(hashlib.sha256(f"{a}|{p}|{adj}".encode()).hexdigest()[:8], 16)
    return h / 2**32 < TEST_FRACTION


def make_example(a: str, p: str, adj: str, template: int) -> Example:
    sentence = TEMPLATES[template].format(a=a, p=p, adj=adj)
    text = sentence + QUESTION.format(adj=adj)
    words = ["<bos>", *WORD.findall(text)]
    answer, other = (a, p) if adj in ANIMATE_ADJ else (p, a)
    return Example(text, answer, other, adj, template, pronoun_pos=words.index("it"),
                   antecedent_pos=words.index(answer), other_pos=words.index(other),
                   adjective_pos=words.index("it") + 2)


def all_examples(split: str) -> list[Example]:
    """Every combination in the split ("train" or "test"), in a fixed order."""
    out = []
    for a in ANIMATES:
        for p in PLACES:
            for adj in ANIMATE_ADJ + PLACE_ADJ:
                if is_test(a, p, adj) == (split == "test"):
                    out.extend(make_example(a, p, adj, t) for t in range(len(TEMPLATES)))
    return out


def encode(words: list[str], vocab: dict[str, int]) -> list[int]:
    return [vocab[w] for w in words]


def ids_of(example: Example, vocab: dict[str, int]) -> list[int]:
    return [vocab["<bos>"], *encode(WORD.findall(example.text), vocab)]


_TRAIN: list[Example] | None = None


def sample_batch(generator: torch.Generator, batch_size: int):
    """(ids [b, p], attention_mask [b, p], loss_mask [b, p-1]): prompt plus answer,
    right-padded; the loss is on the answer token only."""
    global _TRAIN
    if _TRAIN is None:
        _TRAIN = all_examples("train")
    vocab = {w: i for i, w in enumerate(vocabulary())}
    picks = torch.randint(0, len(_TRAIN), (batch_size,), generator=generator).tolist()
    rows = [ids_of(_TRAIN[i], vocab) + [vocab[_TRAIN[i].answer]] for i in picks]
    tok = pad(rows, vocab["<pad>"], "right")
    loss_mask = torch.zeros(batch_size, tok.ids.shape[1] - 1, dtype=torch.bool)
    for r, row in enumerate(rows):
        loss_mask[r, len(row) - 2] = True  # the position whose next token is the answer
    return tok.ids, tok.attention_mask, loss_mask


@torch.no_grad()
def predictions(model, examples: list[Example]) -> list[str]:
    """The model's top next token after each prompt (batched, right-padded)."""
    vocab_list = vocabulary()
    vocab = {w: i for i, w in enumerate(vocab_list)}
    out = []
    for b in range(0, len(examples), 256):
        chunk = examples[b:b + 256]
        rows = [ids_of(e, vocab) for e in chunk]
        tok = pad(rows, vocab["<pad>"], "right")
        ids, mask = tok.ids, tok.attention_mask
        logits = model(ids, attention_mask=mask)
        last = logits[torch.arange(len(rows)), mask.sum(1) - 1]
        out += [vocab_list[i] for i in last.argmax(-1).tolist()]
    return out


def evaluate(model) -> dict[str, float]:
    metrics = {}
    for split in ("train", "test"):
        examples = all_examples(split)
        preds = predictions(model, examples)
        metrics[f"accuracy_{split}"] = sum(p == e.answer for p, e in zip(preds, examples)) / len(examples)
        metrics[f"n_{split}"] = len(examples)
    return metrics


def prompt_records(split: str) -> list[dict]:
    """The split as prompt records with the coreference labels probe's analyses read:
    ``pronoun_span``, ``candidate_spans`` (in order of appearance), ``answer`` (index of the
    antecedent among them), ``question_span`` (the final "the", where the model answers), and
    ``pair_id`` shared by the prompts that differ only in the adjective (twins for patching)."""
    records = []
    for e in all_examples(split):
        text = e.text
        sentence_end = text.index(".")
        spans = {}
        for noun in (e.answer, e.other):
            m = re.search(rf"\b{noun}\b", text[:sentence_end])
            spans[noun] = [m.start(), m.end()]
        pron = re.search(r"\bit\b", text[:sentence_end])
        cands = sorted([e.answer, e.other], key=lambda n: spans[n][0])
        records.append({"text": text, "pronoun": "it", "pronoun_span": [pron.start(), pron.end()],
                        "candidates": cands, "candidate_spans": [spans[n] for n in cands],
                        "answer": cands.index(e.answer), "antecedent": e.answer,
                        "question_span": [len(text) - 3, len(text)], "adjective": e.adjective,
                        "template": e.template,
                        # twins: same nouns and template, the adjective decides the antecedent
                        "pair_id": f"{cands[0]}-{cands[1]}-t{e.template}", "variant": e.adjective})
    return records


def adjective_twins(clean: str, corrupt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean/corrupted twins for patching: the same sentences (the first 4 animates x 4 places,
    template 0) ending in ``clean`` or ``corrupt``, adjectives that point to different nouns.
    Returns clean ids, corrupted ids [16, p] and each side's answer token id [16]."""
    from probe.errors import InputError

    adjectives = ANIMATE_ADJ + PLACE_ADJ
    for adj in (clean, corrupt):
        if adj not in adjectives:
            raise InputError(f"adjective {adj!r} is not in the toy task's vocabulary; use one of {adjectives}")
    if (clean in ANIMATE_ADJ) == (corrupt in ANIMATE_ADJ):
        raise InputError("the clean and corrupted adjectives must point to different nouns: pair an animate one "
                         f"({', '.join(ANIMATE_ADJ)}) with a place one ({', '.join(PLACE_ADJ)})")
    vocab = {w: i for i, w in enumerate(vocabulary())}
    pairs = [(make_example(a, p, clean, 0), make_example(a, p, corrupt, 0)) for a in ANIMATES[:4] for p in PLACES[:4]]
    return (torch.tensor([ids_of(c, vocab) for c, _ in pairs]), torch.tensor([ids_of(w, vocab) for _, w in pairs]),
            torch.tensor([vocab[c.answer] for c, _ in pairs]), torch.tensor([vocab[w.answer] for _, w in pairs]))
