"""Prompt sets: what `probe record --prompts PROMPTS` reads.

`load_prompts(source)` accepts

* a **bundled set name** (`bundled_sets()` lists them): ``seed``, ``winobias``, ``winobias-dev``,
  ``winobias-test``, ``winogender``, ``ud-ewt-dev``, ``ud-ewt-test``, ``toy-coref-test``, ``toy-translate-test``, ``ioi``;
* a **.txt file**: one prompt per line, UTF-8 (a leading byte-order mark is ignored);
* a **.jsonl file**: one JSON object per line with a non-empty string field ``"text"``; every other
  field is kept, unchanged, as the prompt's labels;
* a **list of strings** already in memory (prompts without labels; `Prompt` objects pass through).

In files, only the line ending (``\\n`` or ``\\r\\n``) is removed: leading, trailing and inner spaces stay as
written, because tokenizers see them. Blank (whitespace-only) lines are skipped with a `PromptSetWarning`
naming them. Every user mistake raises `PromptSetError` (a `ValueError`) whose message names the file, the
line, the problem and the fix.

`prompt_set_fingerprint(prompts)` is a sha256 over the texts and labels (canonical JSON) so a resumed
recording can check it is reading the same prompts.

Label convention (coreference sets)
-----------------------------------
All spans are ``[start, end)`` character offsets into ``Prompt.text``, stored as two-element lists, so
``text[start:end]`` is exactly the labelled string. Mentions are the strings the source annotates
(``seed`` labels bare nouns, WinoBias labels noun phrases such as ``"The developer"``).

* ``pronoun``, ``pronoun_span``: the pronoun whose referent is asked about.
* ``antecedent``, ``antecedent_span``: its gold antecedent.
* ``candidates``, ``candidate_spans``: the two candidate antecedents **in order of appearance** in the
  text; ``answer`` is the index (0 or 1) of the gold antecedent in ``candidates``, so
  ``candidates[answer] == antecedent`` and ``candidate_spans[answer] == antecedent_span``.
* ``pair_id``, ``variant``: prompts sharing a ``pair_id`` form a contrast pair; ``variant`` tells them
  apart (``seed``: ``"tired"``/``"wide"``, which flip the antecedent; WinoBias: ``"pro"``/``"anti"``).

WinoBias (Zhao et al. 2018; MIT; files in ``prompt_sets/winobias/``, copied unchanged) lines look like
``1 [The developer] argued with the designer because [he] did not like the design.``. At load time the
leading number and the brackets are removed to give the text, and each prompt gets, besides the labels
above:

* ``pronouns``, ``pronoun_spans``: every bracketed pronoun in order (87 lines bracket two, e.g.
  ``[she] needed to cut [her] hair``); ``pronoun`` is the first of them;
* ``gender``: ``"male"`` or ``"female"``, the pronoun's grammatical gender;
* ``candidate_occupations``: the occupation word of each candidate (from the shipped occupation lists);
* ``type`` (1 or 2), ``stereotype`` (``"pro"``/``"anti"``), ``split`` (``"dev"``/``"test"``),
  ``source`` (file name), ``line`` (1-based line in that file), ``sentence_id`` (the leading number);
* ``pair_id`` (``"winobias-type1-dev-1"``) shared by line N of the pro and the anti file, ``variant``
  (= ``stereotype``), and ``minimal_pair``: True when the two lines differ only in the bracketed
  pronouns (22 of the 1,584 pairs differ elsewhere too, e.g. a typo fixed in one of them).

WinoGender (Rudinger et al. 2018; MIT; ``prompt_sets/winogender/``, copied unchanged): the 720 sentences of
``all_sentences.tsv``, whose ids (``technician.customer.1.male.txt``) name the occupation, the other
participant (or ``someone``), the template's answer and the pronoun's gender. The matching row of
``templates.tsv`` gives the spans: its ``$OCCUPATION``/``$PARTICIPANT`` slots are the two candidates (with the
determiner before them), its pronoun slot the pronoun; ``answer`` 0/1 there means occupation/participant,
re-indexed here to the order of appearance like every other set. Extra labels: ``gender`` (``"male"``,
``"female"``, ``"neutral"``), ``occupation``, ``participant``, ``refers_to`` (``"occupation"`` or
``"participant"``), ``pair_id`` shared by the three gender variants of one sentence, ``variant`` (= gender).

The other candidate is the one occupation mention outside the antecedent that comes before the pronoun,
extended over a determiner (``the``/``a``/``an``) just before it. Two raw lines bracket the bare
occupation (``the [housekeeper] 's car``, ``the [ physician]``); the antecedent is then the bracketed
word, and whitespace just inside a bracket is dropped. Typos in the source (``the the chief``,
``[she] he did``) are kept as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from probe.errors import PromptSetError

__all__ = [
    "Prompt",
    "PromptSetError",
    "PromptSetWarning",
    "bundled_sets",
    "load_prompts",
    "prompt_set_fingerprint",
]

@dataclass(frozen=True)
class Prompt:
    """One prompt: the exact text given to the model, plus any labels that came with it."""

    text: str
    labels: dict = field(default_factory=dict)


PromptSource = str | os.PathLike | Sequence[str | Prompt]
"""What `load_prompts` accepts: a bundled set name, a .txt/.jsonl path, or prompts in memory."""


class PromptSetWarning(UserWarning):
    """Something in a prompt set was skipped (blank lines)."""


_SUFFIXES = (".txt", ".jsonl")
_SHOWN_LINES = 5  # how many offending line numbers a warning lists

_WINOBIAS_SPLITS = ("dev", "test")
_WINOBIAS_FILES = [  # (type, stereotype); the order prompts come out in, within a split
    (1, "pro"), (1, "anti"), (2, "pro"), (2, "anti"),
]

_BUNDLED: dict[str, str] = {
    "seed": "2 sentences: 'The animal didn't cross the street because it was tired/wide.' with coreference labels",
    "winobias": "WinoBias (Zhao et al. 2018), 3,168 occupation coreference sentences, dev then test",
    "winobias-dev": "WinoBias dev split, 1,584 sentences (type 1/2 x pro/anti-stereotyped)",
    "winobias-test": "WinoBias test split, 1,584 sentences (type 1/2 x pro/anti-stereotyped)",
    "ud-ewt-dev": "UD English-EWT dev, 2,001 sentences with word spans and UPOS tags (CC BY-SA 4.0)",
    "ud-ewt-test": "UD English-EWT test, 2,077 sentences with word spans and UPOS tags (CC BY-SA 4.0)",
    "winogender": "WinoGender (Rudinger et al. 2018), 720 sentences: 120 templates x 2 participants x 3 pronoun genders",
    "toy-coref-test": "the toy coreference task's held-out split (3,332 prompts, generated; for toy-coref)",
    "toy-translate-test": "512 held-out sentences of the toy translation task with their reference targets and "
                          "gold alignments (generated; for toy-translate)",
    "ioi": "indirect object identification (Wang et al. 2022 style), 256 prompts, ABBA/BABA, with ABC and "
           "name-swapped versions; names single tokens for SmolLM2 (generated: probe.ioi_prompts)",
}


def bundled_sets() -> dict[str, str]:
    """Names of the prompt sets shipped with the package, each with a one-line description."""
    return dict(_BUNDLED)


def load_prompts(source: PromptSource) -> list[Prompt]:
    """Load a prompt set from a bundled name, a .txt or .jsonl path, or a list of strings.

    Raises `PromptSetError` for anything that is not a usable prompt set.
    """
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and not source.strip():
            raise PromptSetError(f"the prompt source is an empty string; {_what_is_accepted()}")
        if isinstance(source, str) and source in _BUNDLED:
            return _load_bundled(source)
        return _load_file(Path(source))
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        return _load_list(source)
    raise PromptSetError(
        f"cannot load prompts from a {type(source).__name__}; {_what_is_accepted()}"
    )


def prompt_set_fingerprint(prompts: Sequence[Prompt]) -> str:
    """sha256 hex digest of the prompts' texts and labels, in order (canonical JSON).

    Two prompt sets have the same fingerprint exactly when they have the same texts and labels in the
    same order; a resumed recording compares it with the one stored in the cache.
    """
    payload = [[p.text, p.labels] for p in prompts]
    fix = "use strings, numbers, booleans, None, lists and dicts as label values"
    try:
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
        data = blob.encode("utf-8")
    except TypeError as err:
        raise PromptSetError(f"cannot fingerprint the prompts: a label is not JSON-serialisable ({err}); {fix}") from None
    except RecursionError:
        raise PromptSetError(f"cannot fingerprint the prompts: a label is nested too deeply; {fix}, a few levels deep") \
            from None
    except UnicodeEncodeError as err:
        raise PromptSetError(f"cannot fingerprint the prompts: {_lone_surrogate(err)}") from None
    return hashlib.sha256(b"probe-prompt-set-v1\n" + data).hexdigest()


# --- errors -------------------------------------------------------------------------------------------


def _what_is_accepted() -> str:
    names = ", ".join(sorted(_BUNDLED))
    return (
        f"give a bundled prompt set ({names}), a file ending in .txt (one prompt per line) or "
        ".jsonl (one JSON object with a \"text\" field per line), or a list of strings"
    )


# --- in-memory lists ------------------------------------------------------------------------------------


def _load_list(items: Sequence[str | Prompt]) -> list[Prompt]:
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, Prompt):
            prompts.append(item)
            continue
        if not isinstance(item, str):
            raise PromptSetError(
                f"prompt list item {i} is a {type(item).__name__}, not a string; pass prompts as strings"
            )
        text = item.rstrip("\r\n")
        if not text.strip():
            raise PromptSetError(
                f"prompt list item {i} is empty or whitespace only ({item!r}); remove it or give it text"
            )
        prompts.append(Prompt(text))
    if not prompts:
        raise PromptSetError("the prompt list is empty; give at least one prompt")
    return prompts


# --- twins ----------------------------------------------------------------------------------------------
# Prompts that share a ``pair_id`` are variants of one sentence (WinoBias pro/anti, WinoGender's
# genders, the toy task's tired/wide twins). They are one unit wherever independence matters
# (train/test splits, resampling) and the natural clean/corrupted pairs for patching.


def twin_key(labels: Mapping[str, Any], index: int) -> str:
    """The unit a prompt belongs to: ``pair:<pair_id>`` when it has one, else ``prompt:<index>``.
    The prefixes keep a pair id from ever equalling a prompt's own key, and keep the order (and
    so a seeded split) the same whether all, some or none of a run's prompts carry a pair id."""
    pair = labels.get("pair_id")
    return f"pair:{pair}" if pair is not None else f"prompt:{int(index)}"


def twin_groups(labels: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, list[int]]:
    """`twin_key` -> the indices of the prompts sharing it, from (index, labels) pairs, for the
    prompts that have a pair id (a prompt without one has no twin)."""
    groups: dict[str, list[int]] = {}
    for i, lab in labels:
        if lab.get("pair_id") is not None:
            groups.setdefault(twin_key(lab, i), []).append(int(i))
    return groups


# --- files ----------------------------------------------------------------------------------------------


def _load_file(path: Path) -> list[Prompt]:
    if path.is_dir():
        raise PromptSetError(f"{path} is a directory, not a prompt file; {_what_is_accepted()}")
    if not path.exists():
        raise PromptSetError(f"no prompt set or file named {str(path)!r}; {_what_is_accepted()}")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise PromptSetError(
            f"{path}: unknown prompt file type {path.suffix or '(no extension)'!r}; {_what_is_accepted()}"
        )
    data = _read_bytes(path)
    lines = _decode_lines(data, str(path))
    if suffix == ".txt":
        return _parse_txt(lines, str(path))
    return _parse_jsonl(lines, str(path))


def _read_bytes(path: Path) -> bytes:
    """A user's file, or a PromptSetError saying why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise PromptSetError(f"{path}: cannot read the file ({err.strerror}); check its permissions") from None


def _decode_lines(data: bytes, name: str) -> list[str]:
    """UTF-8 text split on \\n, line endings removed; a final newline does not start an extra line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        bad = data[err.start:err.end].hex(" ")
        raise PromptSetError(
            f"{name}: line {line_no} is not valid UTF-8 (byte {bad} at byte offset {err.start} of the file, "
            f"byte {err.start - line_start} of the line); re-encode the file as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {name} > fixed{Path(name).suffix}`"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _warn_blank(blank: list[int], name: str) -> None:
    if not blank:
        return
    shown = ", ".join(str(n) for n in blank[:_SHOWN_LINES]) + (", ..." if len(blank) > _SHOWN_LINES else "")
    noun = "line" if len(blank) == 1 else "lines"
    warnings.warn(
        f"{name}: skipped {len(blank)} blank {noun} (line {shown})",
        PromptSetWarning,
        stacklevel=5,  # the caller of load_prompts
    )


def _empty_file(name: str, blank: list[int], fmt: str) -> PromptSetError:
    where = f" (all {len(blank)} lines are blank)" if blank else ""
    return PromptSetError(f"empty prompt file {name}{where}: it holds no prompts; write {fmt}")


def _parse_txt(lines: list[str], name: str) -> list[Prompt]:
    prompts, blank = [], []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            blank.append(line_no)
            continue
        prompts.append(Prompt(line))
    if not prompts:
        raise _empty_file(name, blank, "one prompt per line")
    _warn_blank(blank, name)
    return prompts


def _reject_duplicate_keys(name: str, line_no: int) -> Callable[[list[tuple[str, Any]]], dict]:
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                raise PromptSetError(
                    f"{name}: line {line_no}: key {key!r} appears twice in one object; keep one of them"
                )
            obj[key] = value
        return obj

    return hook


def _parse_json_line(line: str, name: str, line_no: int, fmt: str) -> Any:
    """The JSON value on one line; PromptSetError naming the line for anything that is not JSON a
    prompt set can hold, including what `json` raises other than JSONDecodeError."""
    try:
        value = json.loads(line, object_pairs_hook=_reject_duplicate_keys(name, line_no))
    except PromptSetError:  # a repeated key, already worded by the hook
        raise
    except json.JSONDecodeError as err:
        why = f"{err.msg} at column {err.colno}"
    except ValueError:  # Python >= 3.11 refuses to convert integers past a digit limit
        why = f"an integer of more than {sys.get_int_max_str_digits()} digits"
    except RecursionError:
        why = "nested too deeply"
    else:
        # an escaped lone surrogate ("\ud800") parses into a string no file or tokenizer takes: refuse it by line
        if "\\u" in line:
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as err:
                raise PromptSetError(f"{name}: line {line_no}: {_lone_surrogate(err)}") from None
        return value
    raise PromptSetError(f"{name}: line {line_no}: invalid JSON ({why}); write {fmt}")


def _lone_surrogate(err: UnicodeEncodeError) -> str:
    return (f"the escape \\u{ord(err.object[err.start]):04x} is a lone surrogate (half of a UTF-16 pair), not a "
            "character; write the character itself, or both halves of its pair")


def _json_objects(lines: list[str], name: str, fmt: str) -> tuple[list[tuple[int, dict]], list[int]]:
    """(line number, object) for every non-blank line, which must hold one JSON object with no
    repeated key; and the blank line numbers."""
    objects, blank = [], []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            blank.append(line_no)
            continue
        obj = _parse_json_line(line, name, line_no, fmt)
        if not isinstance(obj, dict):
            raise PromptSetError(
                f"{name}: line {line_no}: expected a JSON object, found {type(obj).__name__}; write {fmt}"
            )
        objects.append((line_no, obj))
    return objects, blank


def _parse_jsonl(lines: list[str], name: str) -> list[Prompt]:
    fmt = 'one JSON object per line, e.g. {"text": "The cat sat.", "label": 1}'
    objects, blank = _json_objects(lines, name, fmt)
    prompts = []
    for line_no, obj in objects:
        if "text" not in obj:
            raise PromptSetError(f'{name}: line {line_no}: the object has no "text" field; write {fmt}')
        text = obj.pop("text")
        if not isinstance(text, str):
            raise PromptSetError(
                f'{name}: line {line_no}: "text" is a {type(text).__name__}, not a string; '
                f'put the prompt in "text" as a JSON string'
            )
        if not text.strip():
            raise PromptSetError(
                f'{name}: line {line_no}: "text" is empty or whitespace only; give the prompt text or drop the line'
            )
        prompts.append(Prompt(text, obj))
    if not prompts:
        raise _empty_file(name, blank, fmt)
    _warn_blank(blank, name)
    return prompts


def read_jsonl_records(path: str | os.PathLike, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The objects of a user's JSONL file (one per line, blank lines skipped) that must each
    carry ``fields`` as strings, e.g. patching pairs {clean, corrupt, answer, wrong}. Read and
    checked as prompt files are: UTF-8, one object per line, no repeated keys."""
    path = Path(path)
    if path.is_dir():
        raise PromptSetError(f"{path} is a directory, not a JSONL file; give a JSONL file with the fields "
                             f"{', '.join(fields)}")
    if not path.exists():
        raise PromptSetError(f"{path}: no such file; give a JSONL file with the fields {', '.join(fields)}")
    data = _read_bytes(path)
    fmt = "one JSON object per line with the fields " + ", ".join(fields)
    objects, blank = _json_objects(_decode_lines(data, str(path)), str(path), fmt)
    for line_no, obj in objects:
        wrong = [k for k in fields if not isinstance(obj.get(k), str)]
        if wrong:
            raise PromptSetError(f"{path}: line {line_no}: needs the string fields {', '.join(fields)} "
                                 f"({', '.join(wrong)} missing or not a string)")
    if not objects:
        raise _empty_file(str(path), blank, fmt)
    return [obj for _, obj in objects]


# --- bundled sets ---------------------------------------------------------------------------------------


def _data_dir() -> Any:
    return resources.files("probe").joinpath("prompt_sets")


def _load_bundled(name: str) -> list[Prompt]:
    if name == "seed":
        resource = _data_dir().joinpath("seed.jsonl")
        return _parse_jsonl(_decode_lines(resource.read_bytes(), f"bundled:{name}"), f"bundled:{name}")
    if name == "winobias":
        return [p for split in _WINOBIAS_SPLITS for p in _load_winobias(split)]
    if name == "toy-coref-test":
        from models.tasks.coref import prompt_records

        return [Prompt(r["text"], {k: v for k, v in r.items() if k != "text"}) for r in prompt_records("test")]
    if name == "toy-translate-test":
        from models.tasks.translate import prompt_records as translation_records

        return [Prompt(r["text"], {k: v for k, v in r.items() if k != "text"}) for r in translation_records("test")]
    if name.startswith("ud-ewt-"):
        return _load_conllu(name.removeprefix("ud-ewt-"))
    if name == "winogender":
        return _load_winogender()
    if name == "ioi":
        resource = _data_dir().joinpath("ioi", "ioi.jsonl")
        return _parse_jsonl(_decode_lines(resource.read_bytes(), f"bundled:{name}"), f"bundled:{name}")
    return _load_winobias(name.removeprefix("winobias-"))


# UD English-EWT ------------------------------------------------------------------------------------------


def _load_conllu(split: str) -> list[Prompt]:
    """Sentences of a CoNLL-U file as prompts. Labels: ``words`` ([start, end) character spans
    in the text), ``upos`` (one tag per word) and ``sent_id``. Syntactic words inside a
    multiword token (e.g. "don't" = do + n't) get their sub-span when their forms spell the
    surface token, and are left out otherwise; empty nodes are skipped."""
    text_of = _data_dir().joinpath("ud_ewt", f"en_ewt-ud-{split}.conllu").read_text(encoding="utf-8")
    prompts: list[Prompt] = []
    for block in text_of.strip().split("\n\n"):
        meta, rows = {}, []
        for line in block.splitlines():
            if line.startswith("#"):
                key, _, value = line[1:].partition("=")
                meta[key.strip()] = value.strip()
            elif line.strip():
                rows.append(line.split("\t"))
        text = meta.get("text")
        if not text:
            continue
        words, tags, cursor, skip_until = [], [], 0, 0
        for i, cols in enumerate(rows):
            wid, form, upos = cols[0], cols[1], cols[3]
            if "." in wid:
                continue
            if "-" in wid:  # a multiword token: place its surface form, then split it if possible
                first, last = (int(x) for x in wid.split("-"))
                start = text.find(form, cursor)
                parts = [r for r in rows[i + 1:] if "-" not in r[0] and "." not in r[0]
                         and first <= int(r[0]) <= last]
                if start < 0:
                    skip_until = last
                    continue
                cursor = start + len(form)
                if "".join(p[1] for p in parts) == form:
                    at = start
                    for p in parts:
                        words.append([at, at + len(p[1])])
                        tags.append(p[3])
                        at += len(p[1])
                skip_until = last
                continue
            if int(wid) <= skip_until:
                continue
            start = text.find(form, cursor)
            if start < 0:
                continue
            words.append([start, start + len(form)])
            tags.append(upos)
            cursor = start + len(form)
        prompts.append(Prompt(text, {"words": words, "upos": tags, "sent_id": meta.get("sent_id", "")}))
    return prompts


# WinoBias ------------------------------------------------------------------------------------------------

_PRONOUN_GENDER = {
    "he": "male", "him": "male", "his": "male", "himself": "male",
    "she": "female", "her": "female", "hers": "female", "herself": "female",
}
_DETERMINERS = ("the ", "The ", "a ", "A ", "an ", "An ")
_LINE_RE = re.compile(r"(\d+) (.*)")


def _winobias_file(kind: int, stereotype: str, split: str) -> str:
    return f"{stereotype}_stereotyped_type{kind}.txt.{split}"


def _read_winobias(file_name: str) -> list[str]:
    data = _data_dir().joinpath("winobias", file_name).read_bytes()
    return _decode_lines(data, f"winobias/{file_name}")


def _occupation_pattern() -> re.Pattern[str]:
    words = [w.strip() for f in ("male_occupations.txt", "female_occupations.txt") for w in _read_winobias(f)]
    words = sorted({w for w in words if w}, key=len, reverse=True)  # longest first: "construction worker"
    return re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def _strip_brackets(body: str, where: str) -> tuple[str, list[tuple[str, list[int]]]]:
    """Clean text and the bracketed mentions as (string, [start, end)) in that text."""
    out: list[str] = []
    mentions: list[tuple[str, list[int]]] = []
    pos = 0
    for m in re.finditer(r"\[([^\[\]]*)\]", body):
        outside = body[pos:m.start()]
        if "[" in outside or "]" in outside:
            raise PromptSetError(f"{where}: unbalanced brackets in {body!r}")
        out.append(outside)
        inner = m.group(1).strip()  # "[ physician]" -> "physician"
        if not inner:
            raise PromptSetError(f"{where}: empty brackets in {body!r}")
        start = sum(map(len, out))
        out.append(inner)
        mentions.append((inner, [start, start + len(inner)]))
        pos = m.end()
    rest = body[pos:]
    if "[" in rest or "]" in rest:
        raise PromptSetError(f"{where}: unbalanced brackets in {body!r}")
    out.append(rest)
    return "".join(out), mentions


def _parse_winobias_line(
    line: str, occupations: re.Pattern[str], where: str
) -> tuple[int, str, dict[str, Any]]:
    """(sentence number, clean text, labels) for one raw WinoBias line; `where` names it in errors."""
    m = _LINE_RE.fullmatch(line)
    if not m:
        raise PromptSetError(f"{where}: expected '<number> <sentence>', found {line!r}")
    text, mentions = _strip_brackets(m.group(2), where)
    pronouns = [(s, span) for s, span in mentions if s.lower() in _PRONOUN_GENDER]
    others = [(s, span) for s, span in mentions if s.lower() not in _PRONOUN_GENDER]
    if len(others) != 1 or not pronouns:
        raise PromptSetError(
            f"{where}: expected one bracketed antecedent and at least one bracketed pronoun, found {mentions}"
        )
    antecedent, ante_span = others[0]
    genders = {_PRONOUN_GENDER[s.lower()] for s, _ in pronouns}
    if len(genders) != 1:
        raise PromptSetError(f"{where}: bracketed pronouns of both genders: {[s for s, _ in pronouns]}")
    pronoun, pron_span = pronouns[0]

    ante_occ = [o for o in occupations.finditer(text) if ante_span[0] <= o.start() and o.end() <= ante_span[1]]
    other_occ = [o for o in occupations.finditer(text)
                 if o.end() <= pron_span[0] and (o.end() <= ante_span[0] or o.start() >= ante_span[1])]
    if len(ante_occ) != 1 or len(other_occ) != 1:
        raise PromptSetError(
            f"{where}: expected one occupation in the antecedent and one other before the pronoun, found "
            f"{[o.group() for o in ante_occ]} and {[o.group() for o in other_occ]} in {text!r}"
        )
    occ = other_occ[0]
    start = occ.start()
    for det in _DETERMINERS:
        if text[:start].endswith(det):
            start -= len(det)
            break
    other_span = [start, occ.end()]
    cands = sorted([(antecedent, ante_span, ante_occ[0].group()), (text[start:occ.end()], other_span, occ.group())],
                   key=lambda c: c[1][0])
    labels: dict[str, Any] = {
        "pronoun": pronoun,
        "pronoun_span": pron_span,
        "antecedent": antecedent,
        "antecedent_span": ante_span,
        "candidates": [c[0] for c in cands],
        "candidate_spans": [c[1] for c in cands],
        "answer": [c[1] for c in cands].index(ante_span),
        "candidate_occupations": [c[2] for c in cands],
        "pronouns": [s for s, _ in pronouns],
        "pronoun_spans": [span for _, span in pronouns],
        "gender": genders.pop(),
    }
    return int(m.group(1)), text, labels


def _pronoun_blind(line: str) -> str:
    return re.sub(r"\[\s*(?:" + "|".join(_PRONOUN_GENDER) + r")\s*\]", "[PRONOUN]", line, flags=re.IGNORECASE)


def _load_winobias(split: str) -> list[Prompt]:
    occupations = _occupation_pattern()
    raw = {(k, s): _read_winobias(_winobias_file(k, s, split)) for k, s in _WINOBIAS_FILES}
    prompts = []
    for kind, stereotype in _WINOBIAS_FILES:
        file_name = _winobias_file(kind, stereotype, split)
        partner = raw[(kind, "anti" if stereotype == "pro" else "pro")]
        for line_no, line in enumerate(raw[(kind, stereotype)], start=1):
            sentence_id, text, labels = _parse_winobias_line(line, occupations, f"winobias/{file_name}: line {line_no}")
            twin = partner[line_no - 1] if line_no <= len(partner) else ""
            labels.update(
                type=kind,
                stereotype=stereotype,
                split=split,
                source=file_name,
                line=line_no,
                sentence_id=sentence_id,
                pair_id=f"winobias-type{kind}-{split}-{sentence_id}",
                variant=stereotype,
                minimal_pair=_pronoun_blind(line) == _pronoun_blind(twin),
            )
            prompts.append(Prompt(text, labels))
    return prompts


# WinoGender -----------------------------------------------------------------------------------------------

_WINOGENDER_PRONOUNS = {  # template slot -> pronoun of each gender
    "$NOM_PRONOUN": {"male": "he", "female": "she", "neutral": "they"},
    "$POSS_PRONOUN": {"male": "his", "female": "her", "neutral": "their"},
    "$ACC_PRONOUN": {"male": "him", "female": "her", "neutral": "them"},
}


def _read_tsv(name: str) -> list[list[str]]:
    lines = _decode_lines(_data_dir().joinpath("winogender", name).read_bytes(), f"winogender/{name}")
    return [line.split("\t") for line in lines[1:]]  # the first line is the header


def _fill_winogender(template: str, occupation: str, participant: str, gender: str
                     ) -> tuple[str, dict[str, list[int]], str]:
    """The sentence a template makes, the [start, end) span of each slot's mention (the
    determiner before a noun included; 'someone' replaces 'the $PARTICIPANT'), and the pronoun."""
    out, spans, pronoun = "", {}, ""
    pos = 0
    for m in re.finditer(r"\$[A-Z_]+", template):
        out += template[pos:m.start()]
        slot = m.group()
        if slot in _WINOGENDER_PRONOUNS:
            word = _WINOGENDER_PRONOUNS[slot][gender]
            pronoun = word.capitalize() if not out.strip() else word
            spans["pronoun"] = [len(out), len(out) + len(word)]
            out += pronoun
        else:
            word = occupation if slot == "$OCCUPATION" else participant
            det = next((d for d in ("the ", "The ", "a ", "A ", "an ", "An ") if out.endswith(" " + d) or out == d), "")
            if word == "someone" and det:  # "told the $PARTICIPANT" -> "told someone"
                out, word = out[:-len(det)], "Someone" if det[0].isupper() else word
                det = ""
            start = len(out) - len(det)
            out += word
            spans[slot] = [start, len(out)]
        pos = m.end()
    return out + template[pos:], spans, pronoun


def _load_winogender() -> list[Prompt]:
    templates = {(occ, part, answer): sentence for occ, part, answer, sentence in _read_tsv("templates.tsv")}
    prompts = []
    for line_no, (sentid, text) in enumerate(_read_tsv("all_sentences.tsv"), start=2):
        where = f"winogender/all_sentences.tsv: line {line_no}"
        occupation, participant, answer, gender, _ = sentid.split(".")
        partners = [k for k in templates if k[0] == occupation and k[2] == answer]
        key = (occupation, participant, answer) if participant != "someone" else partners[0] if partners else None
        if key not in templates:
            raise PromptSetError(f"{where}: no template for {sentid!r} in winogender/templates.tsv")
        filled, spans, pronoun = _fill_winogender(templates[key], occupation, participant, gender)
        # The sentences fix verb agreement for "they" ("they were"), after the pronoun, so the
        # template's spans hold where the two texts agree: up to the end of the last mention.
        end = max(span[1] for span in spans.values())
        if filled[:end] != text[:end]:
            raise PromptSetError(f"{where}: template gives {filled!r}, the sentence is {text!r}")
        mentions = sorted([(spans["$OCCUPATION"], "occupation"), (spans["$PARTICIPANT"], "participant")])
        refers_to = "occupation" if answer == "0" else "participant"
        gold = [kind for _, kind in mentions].index(refers_to)
        prompts.append(Prompt(text, {
            "pronoun": pronoun,
            "pronoun_span": spans["pronoun"],
            "antecedent": text[slice(*mentions[gold][0])],
            "antecedent_span": mentions[gold][0],
            "candidates": [text[slice(*span)] for span, _ in mentions],
            "candidate_spans": [span for span, _ in mentions],
            "answer": gold,
            "gender": gender,
            "occupation": occupation,
            "participant": participant,
            "refers_to": refers_to,
            "pair_id": f"winogender-{occupation}-{participant}-{answer}",
            "variant": gender,
        }))
    return prompts
