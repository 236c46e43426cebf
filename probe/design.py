"""The design of a labelled coreference prompt set: its subsets, its stereotype baseline, and
its balanced subsets and samples.

The coreference study reports results per subset (`subsets_of`), compares the model with the
answer a gender stereotype gives (`stereotype_choice`) and judges claims on a balanced set
(`balanced_subset`); `probe record --sample N` records a balanced sample (`balanced_sample`).
Everything here reads labels only (the conventions of `probe.prompts`), so it is torch-free and
cheap on the 3,168 WinoBias prompts.

Subsets
-------
`SUBSET_FIELDS` are the label fields that define subsets, in report order: WinoBias has
``stereotype`` (pro/anti), ``type`` (1/2) and ``gender`` (male/female); WinoGender has
``refers_to`` (occupation/participant) and ``gender`` (male/female/neutral). Values are compared as
strings (a JSONL file's ``"type": "1"`` and WinoBias's ``1`` are one subset). A field whose value is
None (JSON null) counts as absent.

Stereotype baseline
-------------------
`stereotype_choice` is the candidate (0/1, in ``candidate_spans`` order) a gender stereotype picks
for the pronoun, or None where the data gives no stereotype:

* WinoBias labels (``candidate_occupations``, ``gender`` male/female): the candidate whose occupation
  word is on the shipped occupation list of the pronoun's gender (``winobias/male_occupations.txt``,
  ``female_occupations.txt``, compared case-insensitively); None when neither or both are. On the
  shipped data this is the gold answer exactly on the pro-stereotyped lines (all 3,168 agree).
* WinoGender labels (``occupation``, ``participant``, ``refers_to``, ``answer``, ``gender``): the US
  Bureau of Labor Statistics share of women in the occupation (``bls_pct_female`` of
  ``winogender/occupations-stats.tsv``). The occupation is stereotypical for a male pronoun below 50 %,
  for a female one above 50 %; then the pick is the occupation's candidate, else the participant's.
  Which candidate is the occupation follows from ``answer`` (the antecedent's index) and
  ``refers_to`` (whether the antecedent is the occupation). A neutral pronoun ("they"), an occupation
  missing from the statistics, or exactly 50 % give None.
* Anything else (the seed set, user files): None.

Balance
-------
Twin groups (`probe.prompts.twin_key`: prompts sharing a ``pair_id``; a prompt without one is its
own group) are never split: they are one unit wherever independence matters. Of the subset fields
present in the labels (fields absent from every prompt are ignored):

* a field is **within-group** if its value varies inside some group (WinoBias ``stereotype`` and
  ``gender``, WinoGender ``gender``), else **group-level** (WinoBias ``type``, WinoGender ``refers_to``);
  a field of `PAIRED_BY_DESIGN` (``stereotype``) must show every one of its values (``pro`` and
  ``anti``) either way, within the groups or among the strata, or nothing is balanced;
* a group is **complete** when every member carries every present subset field (a prompt without the
  label belongs to no subset, so it cannot be counted in a balanced comparison: its whole group is left
  out) and, for each within-group field, each value the data has appears equally often in the group
  (a WinoBias pair with one pro and one anti line, one he and one she; a WinoGender triple with male,
  female and neutral). A lone prompt is therefore complete only when no field is within-group;
* a group's **stratum** is its combination of group-level values; only strata with at least one
  complete group count (a stratum with none is left out rather than emptying the whole set).

`balanced_subset` keeps the same number of complete groups from every stratum, the smallest stratum's
count, taking the **first** groups of each stratum in prompt order (deterministic, and a prefix of the
data stays a prefix). With no subset fields at all every prompt is kept.

`balanced_sample` shuffles the complete groups of each stratum with ``random.Random(seed)`` (strata in
order of first appearance) and takes whole rounds, one group from every stratum per round, while the
next round still fits in ``n``: a sample is never larger than ``n`` and always exactly as balanced as
`balanced_subset`. It can be smaller than ``n`` by up to one round (one group per stratum), or hold the
whole balanced subset when ``n`` exceeds it. It raises `PromptSetError` when not even one round fits.
The chosen prompts keep their original order, so the sample of a given set, ``n`` and seed is always
the same list (a resumed recording finds the same prompts fingerprint).
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from probe.errors import PromptSetError
from probe.prompts import Prompt, _data_dir, twin_key

__all__ = ["SUBSET_FIELDS", "balanced_sample", "balanced_subset", "stereotype_choice", "subsets_of"]

SUBSET_FIELDS = ("stereotype", "type", "refers_to", "gender")
"""Label fields that define subsets, in report order."""

PAIRED_BY_DESIGN = {"stereotype": {"pro", "anti"}}
"""Fields whose every value a balanced set must hold, wherever the field is present: WinoBias pairs
each pro-stereotyped sentence with an anti-stereotyped twin, so a set of one stereotype alone (the
first 40 sentences of WinoBias dev are all pro, none with its twin) is never called balanced, even
though no group of it varies the field."""

Stratum = tuple[str, ...]
"""A group's values of the group-level fields as "field=value", in `SUBSET_FIELDS` order."""


# --- subsets -------------------------------------------------------------------------------------------


def subsets_of(labels: Mapping[str, Any]) -> dict[str, str]:
    """{field: value as str} for each `SUBSET_FIELDS` field present (not None) in a prompt's
    labels, in report order. Strings, so that a JSONL file's "1" and WinoBias's 1 are one subset."""
    return {f: str(labels[f]) for f in SUBSET_FIELDS if labels.get(f) is not None}


# --- stereotype baseline -------------------------------------------------------------------------------


def stereotype_choice(labels: Mapping[str, Any]) -> int | None:
    """Index (0/1, in candidate_spans order) of the candidate a gender stereotype picks for the
    pronoun, or None where the data gives no stereotype (see the module docstring for the rules):
    the baseline a model's coreference choices are compared with."""
    if "candidate_occupations" in labels:
        return _winobias_choice(labels)
    if all(k in labels for k in ("occupation", "participant", "refers_to", "answer", "gender")):
        return _winogender_choice(labels)
    return None


def _winobias_choice(labels: Mapping[str, Any]) -> int | None:
    """The candidate whose occupation is on the list of the pronoun's gender, if exactly one is."""
    occupations = labels.get("candidate_occupations")
    listed = _winobias_occupations().get(labels.get("gender"))
    if listed is None or not isinstance(occupations, Sequence) or len(occupations) != 2:
        return None
    hits = [i for i, word in enumerate(occupations) if str(word).lower() in listed]
    return hits[0] if len(hits) == 1 else None


def _winogender_choice(labels: Mapping[str, Any]) -> int | None:
    """The occupation's candidate when its share of women fits the pronoun's gender, else the
    participant's; None for "they", an unknown occupation, or exactly 50 %."""
    answer, refers_to, gender = labels.get("answer"), labels.get("refers_to"), labels.get("gender")
    pct = _bls_pct_female().get(str(labels.get("occupation")))
    if answer not in (0, 1) or isinstance(answer, bool) or refers_to not in ("occupation", "participant"):
        return None
    if pct is None or pct == 50 or gender not in ("male", "female"):
        return None
    occupation_index = answer if refers_to == "occupation" else 1 - answer
    stereotypical = pct < 50 if gender == "male" else pct > 50
    return occupation_index if stereotypical else 1 - occupation_index


@cache
def _winobias_occupations() -> dict[str, frozenset[str]]:
    """{gender: lower-cased occupation words} from the shipped WinoBias lists (read once)."""
    folder = _data_dir().joinpath("winobias")

    def words(name: str) -> frozenset[str]:
        text = folder.joinpath(name).read_text(encoding="utf-8")
        return frozenset(w.strip().lower() for w in text.splitlines() if w.strip())

    return {"male": words("male_occupations.txt"), "female": words("female_occupations.txt")}


@cache
def _bls_pct_female() -> dict[str, float]:
    """{occupation: BLS share of women, %} from WinoGender's occupations-stats.tsv (read once)."""
    text = _data_dir().joinpath("winogender", "occupations-stats.tsv").read_text(encoding="utf-8")
    return {row["occupation"]: float(row["bls_pct_female"]) for row in csv.DictReader(io.StringIO(text),
                                                                                        delimiter="\t")}


# --- balance -------------------------------------------------------------------------------------------


def balanced_subset(labels: Sequence[Mapping[str, Any]]) -> list[int]:
    """Positions (into `labels`, sorted) of the largest balanced subset: complete twin groups only,
    the same number from every stratum, the first ones of each in prompt order. So a claim judged
    on it is not carried by one subset outnumbering another."""
    strata = _complete_groups(labels)
    if not strata:
        return []
    keep = min(len(groups) for groups in strata.values())
    return sorted(i for groups in strata.values() for group in groups[:keep] for i in group)


def balanced_sample(prompts: Sequence[Prompt], n: int, seed: int = 0) -> list[Prompt]:
    """About n prompts (never more), balanced like `balanced_subset`, twins kept together, in their
    original order: whole rounds of one seeded-random complete group per stratum while the next
    round fits. Raises `PromptSetError` when n < 1 or not even one round fits."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PromptSetError(f"a sample needs a whole number of prompts of at least 1, got {n!r}; ask for more")
    strata = _complete_groups([p.labels for p in prompts])
    if not strata:
        raise _no_balanced_groups(prompts)
    rng = random.Random(seed)
    shuffled = [rng.sample(groups, len(groups)) for groups in strata.values()]
    chosen: list[int] = []
    for round_ in zip(*shuffled):  # stops at the smallest stratum: every round is balanced
        size = sum(len(group) for group in round_)
        if len(chosen) + size > n:
            break
        chosen += [i for group in round_ for i in group]
    if not chosen:
        first = sum(len(group) for group in next(zip(*shuffled)))
        raise PromptSetError(f"a balanced sample of this set comes in units of {first} prompts ({_unit(strata)}); "
                             f"ask for at least {first} prompts, not {n}")
    return [prompts[i] for i in sorted(chosen)]


def _unit(strata: dict[Stratum, list[list[int]]]) -> str:
    """What one round of a sample holds, in words: 'one twin group of each of 2 subsets: type=1; type=2'."""
    if len(strata) == 1:
        return "one twin group"
    names = [", ".join(stratum) for stratum in strata]
    return f"one twin group of each of {len(strata)} subsets: {'; '.join(names)}"


def _no_balanced_groups(prompts: Sequence[Prompt]) -> PromptSetError:
    """The error for a set with no complete twin group, naming the fields that need balancing."""
    if not prompts:
        return PromptSetError("cannot sample from an empty prompt set; give at least one prompt")
    present = [f for f in SUBSET_FIELDS if any(f in subsets_of(p.labels) for p in prompts)]
    return PromptSetError(f"cannot sample {len(prompts)} prompts in balance: no twin group (pair_id) carries every "
                          f"value of {', '.join(present)} equally often; record the whole set, or give each prompt "
                          "its twins")


def _complete_groups(labels: Sequence[Mapping[str, Any]]) -> dict[Stratum, list[list[int]]]:
    """{stratum: its complete twin groups (positions), in prompt order}, strata in order of first
    appearance; one stratum holding every group when no subset field is present."""
    values = [subsets_of(lab) for lab in labels]
    groups = _twin_groups(labels)
    present = [f for f in SUBSET_FIELDS if any(f in v for v in values)]
    within = [f for f in present if any(len({values[i].get(f) for i in g} - {None}) > 1 for g in groups)]
    level = [f for f in present if f not in within]
    data_values = {f: {v[f] for v in values if f in v} | PAIRED_BY_DESIGN.get(f, set()) for f in within}
    strata: dict[Stratum, list[list[int]]] = {}
    for group in groups:
        if not _complete(group, values, present, data_values):
            continue
        stratum = tuple(f"{f}={values[group[0]][f]}" for f in level)  # group-level: the same in every member
        strata.setdefault(stratum, []).append(group)
    for f in level:  # a field paired by design must have all its values among the strata, else no balance
        have = {v.split("=", 1)[1] for stratum in strata for v in stratum if v.startswith(f"{f}=")}
        if not PAIRED_BY_DESIGN.get(f, set()) <= have:
            return {}
    return strata


def _twin_groups(labels: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Every prompt's twin group (`twin_key`), lone prompts included, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(twin_key(lab, i), []).append(i)
    return list(groups.values())


def _complete(group: list[int], values: list[dict[str, str]], present: list[str],
              data_values: dict[str, set[str]]) -> bool:
    """Every member labelled with every present field, and each within-group field's values (all
    that the data has) equally often in the group."""
    if any(f not in values[i] for i in group for f in present):
        return False
    for field_, expected in data_values.items():
        counts = Counter(values[i][field_] for i in group)
        if set(counts) != expected or len(set(counts.values())) != 1:
            return False
    return True
