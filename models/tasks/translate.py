"""Toy translation: an English-like source language into a made-up target language whose
words and word order are fixed rules, so every target word has a known source word.

    the big dog sees the small cat  ->  ka vusk grom ka mirel tisk vidak
    a fox chases the lazy cow        ->  nu kesh ka bulma murn korrun

Source sentences follow one frame, subject-verb-object with an optional adjective in each
noun phrase (four templates, see `TEMPLATES`):

    DET [ADJ] NOUN VERB DET [ADJ] NOUN        (subject and object nouns differ)

The target language is the same sentence through two rules:
  - a word-level dictionary (`DICTIONARY`): one-to-one, every source word has exactly one
    target word, target words are all distinct and none is a source word;
  - a reordering: each adjective follows its noun (noun-adjective order) and the verb moves
    to the end (SOV). Determiners stay at the head of their noun phrase.

    source  DET1 [ADJ1] NOUN1 VERB DET2 [ADJ2] NOUN2
    target  DET1' NOUN1' [ADJ1'] DET2' NOUN2' [ADJ2'] VERB'

Ground truth per example (see `Example`): the source and target words, each source word's
role, the template, and the alignment: for each target position the index of the source
word it translates. Because the dictionary is one-to-one and nothing is dropped or added,
the alignment is a permutation of the source positions (positional: it tells the two
determiners apart even when they are the same word).

The held-out split is compositional, as in coref.py: each noun phrase of a sentence makes
a (noun, adjective, verb) combination (adjective "-" when the phrase has none), and a
stable hash holds out `TEST_FRACTION` of all such combinations. A sentence belongs to the
test split if one of its two combinations is held out, so no held-out combination ever
occurs in training; every word, template, (noun, adjective) pair and (noun, verb) pair
still occurs in training (checked by the tests), so a model must compose, not memorise.
Roughly 1 - (1 - TEST_FRACTION)**2 of all sentences (about a third) are test sentences.

Vocabularies are separate: `source_vocabulary()` and `target_vocabulary()`, each SPECIALS
first; the target adds `EOS` after them so a decoder can stop (target ids are <bos> words
<eos>; source ids are the words alone). `vocabulary()` is their union, for a model with one
embedding table. Plain Python (no torch): sampling uses ``random.Random(seed)``.

The shipped toy translator (`models.load("toy-translate")`, `probe train translate`) is the
original Transformer's configuration (`model_config`: sinusoidal positions, post-norm, ReLU,
embeddings scaled by sqrt(d_model), one table for both languages and the output): it reads the
source words then <eos>, and decodes from <bos> to <eos> (the tokenizer appends <eos> to both
sides, as Marian's does). Its metric is held-out exact match (`evaluate`; the target is >95%).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from . import SPECIALS

if TYPE_CHECKING:
    import torch

    from ..config import TransformerConfig

NAME = "translate"
DESCRIPTION = "toy translator: a dictionary plus noun-adjective and verb-final reordering (held-out combinations)"

DETERMINERS = ["the", "a"]
NOUNS = ["dog", "cat", "bird", "horse", "fox", "cow", "boy", "girl", "man", "woman", "farmer", "child"]
ADJECTIVES = ["big", "small", "old", "young", "red", "happy", "quick", "lazy"]
VERBS = ["sees", "chases", "likes", "finds", "helps", "follows", "bites", "hears"]

DICTIONARY = {  # source word -> target word, one-to-one
    "the": "ka", "a": "nu",
    "dog": "vusk", "cat": "mirel", "bird": "pelto", "horse": "drano", "fox": "kesh", "cow": "bulma",
    "boy": "tarin", "girl": "selka", "man": "odro", "woman": "venna", "farmer": "gruth", "child": "lipa",
    "big": "grom", "small": "tisk", "old": "varn", "young": "nelo", "red": "roska", "happy": "feli",
    "quick": "zabo", "lazy": "murn",
    "sees": "vidak", "chases": "korrun", "likes": "amesh", "finds": "tovir", "helps": "sundo",
    "follows": "pelgar", "bites": "marak", "hears": "ulvin",
}
INVERSE = {t: s for s, t in DICTIONARY.items()}

TEMPLATES = [  # source role sequences; the template id is (subject has ADJ) + 2 * (object has ADJ)
    ("det", "noun", "verb", "det", "noun"),
    ("det", "adj", "noun", "verb", "det", "noun"),
    ("det", "noun", "verb", "det", "adj", "noun"),
    ("det", "adj", "noun", "verb", "det", "adj", "noun"),
]
NO_ADJ = "-"  # the adjective slot of a combination whose noun phrase has none
EOS = "<eos>"  # target side only
MAX_SOURCE_LEN = 7  # words; target ids add <bos> and <eos>
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Example:
    source_words: tuple[str, ...]
    target_words: tuple[str, ...]
    alignment: tuple[int, ...]  # alignment[j]: the source position that target position j translates
    roles: tuple[str, ...]  # each source word's role: "det", "adj", "noun" or "verb"
    template: int

    @property
    def source(self) -> str:
        return " ".join(self.source_words)

    @property
    def target(self) -> str:
        return " ".join(self.target_words)

    @property
    def content(self) -> tuple[str | None, str, str, str | None, str]:
        """(subject adjective or None, subject noun, verb, object adjective or None, object noun)."""
        words = dict.fromkeys(("adj1", "noun1", "verb", "adj2", "noun2"))
        phrase = 1
        for w, r in zip(self.source_words, self.roles):
            if r == "verb":
                words["verb"], phrase = w, 2
            elif r != "det":
                words[f"{r}{phrase}"] = w
        return words["adj1"], words["noun1"], words["verb"], words["adj2"], words["noun2"]

    @property
    def combinations(self) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
        """The (noun, adjective, verb) combinations of the subject and the object phrase."""
        adj1, noun1, verb, adj2, noun2 = self.content
        return (noun1, adj1 or NO_ADJ, verb), (noun2, adj2 or NO_ADJ, verb)


def source_vocabulary() -> list[str]:
    return SPECIALS + sorted(DETERMINERS + NOUNS + ADJECTIVES + VERBS)


def target_vocabulary() -> list[str]:
    return SPECIALS + [EOS] + sorted(DICTIONARY.values())


def vocabulary() -> list[str]:
    """Both languages in one list (SPECIALS, EOS, then every word), for a shared embedding."""
    return SPECIALS + [EOS] + sorted(set(DICTIONARY) | set(DICTIONARY.values()))


@cache
def _index(side: str) -> dict[str, int]:
    words = {"source": source_vocabulary, "target": target_vocabulary, "joint": vocabulary}[side]()
    return {w: i for i, w in enumerate(words)}


@cache
def is_test(noun: str, adjective: str | None, verb: str) -> bool:
    """Whether the (noun, adjective, verb) combination is held out, by a stable hash."""
    h = int(hashlib.sha256(f"{noun}|{adjective or NO_ADJ}|{verb}".encode()).hexdigest()[:8], 16)
    return h / 2**32 < TEST_FRACTION


def held_out_combinations() -> set[tuple[str, str, str]]:
    """Every held-out (noun, adjective or NO_ADJ, verb) combination."""
    return {(n, a, v) for n in NOUNS for a in ADJECTIVES + [NO_ADJ] for v in VERBS if is_test(n, a, v)}


def split_of(adj1: str | None, noun1: str, verb: str, adj2: str | None, noun2: str) -> str:
    return "test" if is_test(noun1, adj1, verb) or is_test(noun2, adj2, verb) else "train"


def make_example(det1: str, adj1: str | None, noun1: str, verb: str, det2: str, adj2: str | None,
                 noun2: str) -> Example:
    """The sentence ``det1 [adj1] noun1 verb det2 [adj2] noun2`` and its translation."""
    words: list[str] = []
    roles: list[str] = []

    def add(word: str, role: str) -> int:
        words.append(word)
        roles.append(role)
        return len(words) - 1

    def phrase(det: str, adj: str | None, noun: str) -> list[int]:
        d = add(det, "det")
        a = None if adj is None else add(adj, "adj")
        n = add(noun, "noun")
        return [d, n] + ([] if a is None else [a])  # the target order: determiner, noun, adjective

    subject = phrase(det1, adj1, noun1)
    v = add(verb, "verb")
    obj = phrase(det2, adj2, noun2)
    alignment = tuple(subject + obj + [v])  # verb last
    return Example(tuple(words), tuple(DICTIONARY[words[i]] for i in alignment), alignment, tuple(roles),
                   template=int(adj1 is not None) + 2 * int(adj2 is not None))


def all_content(split: str) -> Iterator[tuple[str | None, str, str, str | None, str]]:
    """Every (adj1, noun1, verb, adj2, noun2) of the split ("train" or "test"), in a fixed order."""
    adjectives: list[str | None] = [None, *ADJECTIVES]
    for noun1 in NOUNS:
        for noun2 in NOUNS:
            if noun2 == noun1:
                continue
            for verb in VERBS:
                for adj1 in adjectives:
                    for adj2 in adjectives:
                        if split_of(adj1, noun1, verb, adj2, noun2) == split:
                            yield adj1, noun1, verb, adj2, noun2


def all_examples(split: str) -> Iterator[Example]:
    """Every sentence of the split, determiners included, in a fixed order (lazily: ~340k in all)."""
    for adj1, noun1, verb, adj2, noun2 in all_content(split):
        for det1 in DETERMINERS:
            for det2 in DETERMINERS:
                yield make_example(det1, adj1, noun1, verb, det2, adj2, noun2)


def sample_examples(split: str, n: int, seed: int) -> list[Example]:
    """``n`` sentences of the split, drawn uniformly over templates, then words, for ``seed``
    (the same list for the same arguments)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(f"{NAME}|{split}|{seed}")
    out: list[Example] = []
    while len(out) < n:
        template = rng.randrange(len(TEMPLATES))
        adj1 = rng.choice(ADJECTIVES) if template & 1 else None
        adj2 = rng.choice(ADJECTIVES) if template & 2 else None
        noun1, noun2 = rng.sample(NOUNS, 2)
        verb = rng.choice(VERBS)
        det1, det2 = rng.choice(DETERMINERS), rng.choice(DETERMINERS)
        if split_of(adj1, noun1, verb, adj2, noun2) == split:
            out.append(make_example(det1, adj1, noun1, verb, det2, adj2, noun2))
    return out


def source_ids(example: Example) -> list[int]:
    """The source words as ids of `source_vocabulary()` (no <bos>: an encoder's input)."""
    vocab = _index("source")
    return [vocab[w] for w in example.source_words]


def target_ids(example: Example) -> list[int]:
    """<bos>, the target words, <eos>, as ids of `target_vocabulary()` (a decoder reads [:-1]
    and predicts [1:])."""
    vocab = _index("target")
    return [vocab["<bos>"], *(vocab[w] for w in example.target_words), vocab[EOS]]


def decode_target(ids: list[int]) -> list[str]:
    """Target ids back to words, up to the first <eos>, specials dropped."""
    words = target_vocabulary()
    out = []
    for i in ids:
        if words[i] == EOS:
            break
        if words[i] not in SPECIALS:
            out.append(words[i])
    return out


def exact_match(predicted: list[list[str] | str], examples: list[Example]) -> float:
    """The fraction of examples whose predicted translation (words, or a space-joined string)
    is exactly the target."""
    if len(predicted) != len(examples):
        raise ValueError(f"{len(predicted)} predictions for {len(examples)} examples")
    hits = sum((p.split() if isinstance(p, str) else list(p)) == list(e.target_words)
               for p, e in zip(predicted, examples))
    return hits / len(examples)


# ------------------------------------------------------------------ the toy translator
APPEND_EOS = EOS  # what the toy's tokenizer appends to every text (models.training.build_tokenizer)
training_defaults = {"steps": 1500, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "warmup": 150}
EVAL_SENTENCES = 512


def model_config(vocab_size: int) -> TransformerConfig:
    """Vaswani et al.'s base configuration, shrunk: 2 + 2 layers of width 64, 4 heads."""
    import math

    from ..config import TransformerConfig

    index = _index("joint")
    return TransformerConfig(
        d_model=64, n_layers=2, n_decoder_layers=2, n_heads=4, d_mlp=256, d_vocab=vocab_size,
        n_ctx=MAX_SOURCE_LEN + 2, encoder_decoder=True, causal=True, positional="sinusoidal",
        norm="layernorm", norm_position="post", final_norm=False, act_fn="relu", embed_scale=math.sqrt(64),
        tie_embeddings=True, pad_token_id=index["<pad>"], bos_token_id=index["<bos>"], eos_token_id=index[EOS],
        decoder_start_token_id=index["<bos>"], model_name="toy-translate", family="toy",
    )


def joint_ids(example: Example) -> tuple[list[int], list[int]]:
    """(source ids + <eos>, <bos> + target ids + <eos>) in the joint vocabulary: what the toy's
    tokenizer gives for the source and (with the decoder start) for the target."""
    index = _index("joint")
    return ([index[w] for w in example.source_words] + [index[EOS]],
            [index["<bos>"], *(index[w] for w in example.target_words), index[EOS]])


def batch(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source [b, s], source mask, target [b, t], target mask), right-padded with <pad>."""
    import torch

    pad = _index("joint")["<pad>"]
    pairs = [joint_ids(e) for e in examples]

    def stack(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return ids, mask

    source, source_mask = stack([p[0] for p in pairs])
    target, target_mask = stack([p[1] for p in pairs])
    return source, source_mask, target, target_mask


def sample_batch(generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Training pairs: sentences of the train split drawn by a seed from ``generator``."""
    import torch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return batch(sample_examples("train", batch_size, seed))


def training_loss(model: Any, data: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Next-token cross-entropy of the target given the source (teacher forcing), real tokens only."""
    import torch.nn.functional as F

    source, source_mask, target, target_mask = data
    logits = model(source, target, source_mask, target_mask)
    keep = target_mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][keep], target[:, 1:][keep])


def translate(model: Any, examples: list[Example], max_new_tokens: int = MAX_SOURCE_LEN + 1) -> list[list[str]]:
    """Greedy translations of the examples' sources, as target words (up to <eos>)."""
    import torch

    words = vocabulary()
    source, source_mask, _, _ = batch(examples)
    with torch.no_grad():
        out = model.generate(source, attention_mask=source_mask, max_new_tokens=max_new_tokens)
    result = []
    for row in out[:, 1:].tolist():
        result.append([])
        for i in row:
            if words[i] == EOS:
                break
            if words[i] not in SPECIALS:
                result[-1].append(words[i])
    return result


def evaluate(model: Any, n: int = EVAL_SENTENCES, seed: int = 12345) -> dict[str, float]:
    """Exact match of greedy translations on ``n`` held-out and ``n`` training sentences."""
    test, train = sample_examples("test", n, seed), sample_examples("train", n, seed)
    return {"exact_match_test": exact_match(translate(model, test), test),
            "exact_match_train": exact_match(translate(model, train), train)}


def prompt_records(split: str = "test", n: int = EVAL_SENTENCES, seed: int = 7) -> list[dict[str, Any]]:
    """Sentences as prompt records for `probe record`: the source as ``text``, the reference
    translation as ``target``, ``alignment`` (for target word j, the source word it translates,
    which is its source token: the toy's tokenizer has one token per word and nothing in front)
    and ``template``."""
    return [{"text": e.source, "target": e.target, "alignment": list(e.alignment), "template": e.template}
            for e in sample_examples(split, n, seed)]

