"""The indirect-object-identification (IOI) prompt set, in the style of Wang et al. 2022
("Interpretability in the Wild").

A prompt introduces two people and ends where the model should name the one who did *not* act:
"When Mary and John went to the store, John gave a drink to" -> " Mary". The name that appears once
is the indirect object (IO, the answer), the one that appears twice the subject (S, mentioned as S1
then S2). Both orders of the introduction are generated in equal numbers: ABBA (IO first, "Mary and
John ..., John") and BABA (S first, "John and Mary ..., John").

Each prompt carries the corrupted versions the circuit methods need, in its labels:

* ``abc``: the same template, place and object with three fresh names, none of them IO or S
  ("When Alice and Bob went to the store, Carol gave a drink to"): Wang et al.'s ABC distribution,
  which keeps the grammar and removes the information the task needs (which name repeats). Used for
  mean ablation and as the reference of path patching.
* ``swap``: IO and S exchanged everywhere ("When John and Mary went to the store, Mary gave a drink
  to"): the answer flips to the other name, so the logit difference IO - S flips sign.

Every name is one token in the model's tokenizer after a space (checked by `single_token_words`;
the bundled set ``ioi`` is checked against SmolLM2-135M's), so a clean prompt and its corrupted
versions have the same number of tokens and the name positions line up. No template begins with a
name (a name at the very start has no space before it and may split). Generation is deterministic
for a seed (`ioi_prompts`); the bundled set is `BUNDLED_SEED`'s output for SmolLM2's tokenizer
(`python -m probe.ioi_prompts` rewrites it, and a test checks the file equals the generator's).

Labels of a prompt: ``io``, ``s`` (names), ``answer`` / ``wrong`` (" IO" / " S", the tokens whose
logit difference is the metric), ``order`` (ABBA/BABA), ``template`` (index into `TEMPLATES`),
``place``, ``object``, character spans ``io_span``, ``s1_span``, ``s2_span`` ([start, end) of each
name mention, as `probe.prompts`' span convention), ``abc``, ``abc_names`` ([first, second,
subject] of the ABC text) and ``swap``.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError
from .prompts import Prompt

# {A} and {B} are introduced in that order; {S} is the subject's second mention. Written for this
# project in the style of Wang et al.'s templates: an introduction of the two, a place, then the
# subject handing an object to the other one, ending right before the answer.
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {S} handed a {object} to",
    "Then, {A} and {B} were working at the {place}. {S} decided to give a {object} to",
    "While {A} and {B} were walking to the {place}, {S} passed a {object} to",
    "Later, {A} and {B} had lunch at the {place}. {S} offered a {object} to",
    "Yesterday, {A} and {B} met at the {place}, and {S} brought a {object} to",
    "As soon as {A} and {B} got to the {place}, {S} threw a {object} to",
    "On Sunday, {A} and {B} visited the {place}. Afterwards {S} sent a {object} to",
)

PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "station",
                           "park", "library", "market", "beach", "museum")
OBJECTS: tuple[str, ...] = ("drink", "book", "ring", "bag", "letter", "cake", "ball", "pen", "phone",
                            "flower", "key", "hat")

# Common English first names; those that are not one token after a space in a tokenizer are dropped
# for it (`single_token_words`).
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Ben", "Bob", "Carl", "Chris",
    "David", "Emma", "Eric", "Frank", "George", "Grace", "Harry", "Henry", "Jack", "Jane", "Jason", "Jeff",
    "Jessica", "Joe", "Kate", "Kevin", "Laura", "Lisa", "Lucy", "Mark", "Matt", "Michael", "Mike", "Nick",
    "Paul", "Peter", "Rachel", "Richard", "Robert", "Ryan", "Sam", "Sarah", "Scott", "Steve", "Susan",
    "Tim", "Tony", "Victoria", "William", "Alex", "Andrew", "Adam", "Brian", "Charlie", "Daniel", "Alice",
    "Rose", "Kelly", "Ian", "Max", "Luke", "Paula", "Helen",
)

BUNDLED_SEED = 0
BUNDLED_SIZE = 256  # 8 templates x 2 orders x 16
ORDERS = ("ABBA", "BABA")


def single_token_words(tokenizer: Any, words: Iterable[str]) -> list[str]:
    """The words of ``words`` that ``tokenizer`` encodes as exactly one token after a space (" Mary"),
    in their order. A Hugging Face tokenizer; special tokens (a BOS it adds) are not counted, and a
    word the tokenizer does not know (its unknown token) is not one of its tokens."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    kept = []
    for word in words:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and (unknown is None or ids[0] != unknown):
            kept.append(word)
    return kept


def ioi_prompts(n: int = BUNDLED_SIZE, seed: int = BUNDLED_SEED, tokenizer: Any = None,
                names: Sequence[str] = NAMES) -> list[Prompt]:
    """``n`` IOI prompts, deterministic for ``seed``: templates taken in turn, ABBA and BABA
    alternating (so both orders and every template appear equally when ``n`` is a multiple of
    16), names, place and object drawn at random. With ``tokenizer``, only names that are one
    token in it are used (at least 5 are needed: IO, S and three fresh ABC names)."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    pool = single_token_words(tokenizer, names) if tokenizer is not None else list(dict.fromkeys(names))
    if len(pool) < 5:
        raise InputError(f"only {len(pool)} of the names are single tokens in this tokenizer; an IOI prompt "
                         "needs 5 (IO, S and three fresh names for its ABC version): give more names")
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        template = i % len(TEMPLATES)
        order = ORDERS[(i // len(TEMPLATES)) % 2]
        io, s, *abc_names = rng.sample(pool, 5)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        prompts.append(_prompt(template, order, io, s, abc_names, place, obj))
    return prompts


def _prompt(template: int, order: str, io: str, s: str, abc_names: list[str], place: str, obj: str) -> Prompt:
    first, second = (io, s) if order == "ABBA" else (s, io)
    text, (a_span, b_span, s2_span) = _fill(TEMPLATES[template], first, second, s, place, obj)
    io_span, s1_span = (a_span, b_span) if order == "ABBA" else (b_span, a_span)
    abc_text, _ = _fill(TEMPLATES[template], *abc_names, place, obj)
    swap_first, swap_second = (s, io) if order == "ABBA" else (io, s)
    swap_text, _ = _fill(TEMPLATES[template], swap_first, swap_second, io, place, obj)
    return Prompt(text, {
        "io": io, "s": s, "answer": " " + io, "wrong": " " + s, "order": order, "template": template,
        "place": place, "object": obj, "io_span": io_span, "s1_span": s1_span, "s2_span": s2_span,
        "abc": abc_text, "abc_names": list(abc_names), "swap": swap_text,
    })


def _fill(template: str, a: str, b: str, s: str, place: str, obj: str) -> tuple[str, list[list[int]]]:
    """The template with its slots filled, and the [start, end) character spans of A, B and S."""
    text, spans, rest = "", {}, template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        text += head
        value = {"A": a, "B": b, "S": s, "place": place, "object": obj}[slot]
        if slot in ("A", "B", "S"):
            spans[slot] = [len(text), len(text) + len(value)]
        text += value
    return text + rest, [spans["A"], spans["B"], spans["S"]]


def bundled_file() -> Path:
    return Path(__file__).parent / "prompt_sets" / "ioi" / "ioi.jsonl"


def write_bundled(tokenizer: Any, path: Path | None = None) -> Path:
    """Write the bundled set (`BUNDLED_SIZE` prompts of `BUNDLED_SEED`, names checked in
    ``tokenizer``) as JSONL: written to a temporary sibling, then renamed over the file."""
    path = path or bundled_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": p.text, **p.labels}, ensure_ascii=False) for p in ioi_prompts(tokenizer=tokenizer)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def main() -> None:
    """``python -m probe.ioi_prompts``: regenerate the bundled set with SmolLM2's tokenizer."""
    import models

    print(write_bundled(models.load("smollm2").tokenizer), file=sys.stderr)


if __name__ == "__main__":
    main()
