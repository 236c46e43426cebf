"""The coreference study: which heads link a pronoun to its antecedent?

For every prompt with gold labels (``pronoun_span``, ``candidate_spans`` of the two
candidate mentions, ``answer`` = index of the antecedent among them, as the bundled seed,
WinoBias and WinoGender sets carry), and every head, the head's attention from the pronoun to
each candidate is aggregated as Clark et al. (2019) do (sum over a mention's tokens, mean over
the pronoun's tokens); the head "chooses" the candidate that gets more. A mention is the
annotated span ("The developer", ``mention="span"``) or its head word ("developer",
``mention="head"``); the study computes both and reports the other beside the chosen one,
because the choice moves per-head accuracy by several points.

Baselines that could fool attention, each a choice per prompt: the nearest mention before the
pronoun, the first mention, the gender stereotype (`probe.design.stereotype_choice`: WinoBias's
occupation lists, WinoGender's labour statistics; a coin where the data gives none) and chance.
Results are reported overall, per subset the data set defines (`probe.design.subsets_of`:
pro/anti-stereotyped, type 1/2, the pronoun's gender, ...) and on the run's balanced set
(`probe.design.balanced_subset`: subsets in equal numbers, twins whole). Claims are made on
the balanced set only, against the best baseline there (the *binding* one): a head beats the
baselines when the whole 95% interval of its balanced accuracy (a bootstrap over twin groups)
lies above the binding baseline and its one-sided sign-flip permutation test against that
baseline (flipping within twin groups) survives Holm's correction over every head at 0.05
(`analyses.twin_stats`). A head that follows the stereotype is right on every pro-stereotyped
sentence and wrong on every anti-stereotyped twin: on the balanced set it is at 0.5.

With a decoder language model (an LM head, causal attention, a tokenizer that can write the
question), the study also asks the model itself: every prompt is followed by a question about
the pronoun (`DEFAULT_QUESTION`, " The pronoun 'he' refers to"), and each candidate's
continuation (" the developer", a definite reference to its mention) is scored by the sum of
its tokens' log-probabilities; the model answers the candidate with the higher one. That
answer (accuracy, and the log-prob difference antecedent - other per prompt) is what the
study's ablation, patching and causal mediation analysis measure there
(`coref_interventions`, `coref_mediation`).

The study is data: `coref_study` computes a `CorefStudy` (no files, no prose), `save_study`
writes its files, `analyses.coref_report.render_report` words it; `write_report`, what
`probe coref` calls, does all three.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probe.errors import InputError, StoreError
from probe.head_labels import check_top, head_label
from probe.paths import output_path_problem

from .probe_features import QUERY_FIX, label_span, label_spans
from .run_checks import require_layer_hooks
from .twin_stats import flip_test, group_bootstrap_ci, group_ids, holm, prompt_bootstrap_ci

if TYPE_CHECKING:  # coref_interventions imports torch; the attention study does not need it
    from .coref_interventions import AblationSummary
    from .coref_mediation import Mediation

REQUIRED = ("pronoun_span", "candidate_spans", "answer")
MIN_PROMPTS_FOR_CLAIMS = 20  # below this a bootstrap interval is too coarse to say a head beats a baseline
# What a decoder is asked after each prompt; {pronoun} is the prompt's pronoun as written.
DEFAULT_QUESTION = " The pronoun '{pronoun}' refers to"
DETERMINERS = ("the ", "a ", "an ")
MENTIONS = ("span", "head")  # sum attention over a candidate's annotated span, or over its head word
CLAIM_LEVEL = 0.05  # family-wise (Holm over every head) level of the per-head permutation test


@dataclass(frozen=True)
class CorefLabels:
    """A prompt's gold labels for the study, checked: every span two whole numbers."""

    query: tuple[int, int]  # the span that attends (the pronoun's, or --query's)
    pronoun: tuple[int, int]
    candidates: tuple[tuple[int, int], tuple[int, int]]  # the two candidate mentions, in order of appearance
    answer: int  # 0 or 1: which candidate is the antecedent


def coref_labels(run, i: int, query: str = "pronoun_span") -> CorefLabels | None:
    """Prompt ``i``'s labels for the study: None when one is absent (the prompt is not labelled
    for it), InputError naming the prompt, the field and the fix when one is malformed. The one
    place the shape of these labels is checked; everything that reads them asks here."""
    labels = run.labels(i)
    if any(k not in labels for k in (*REQUIRED, query)):
        return None
    where = f"prompt {i} of {run.path}"
    pronoun = label_span(labels["pronoun_span"], "pronoun_span", where)
    candidates = label_spans(labels["candidate_spans"], "candidate_spans", where)
    if len(candidates) != 2:
        raise InputError(f"{where}: 'candidate_spans' holds {len(candidates)} span{'s' * (len(candidates) != 1)}; "
                         "the study compares exactly two candidate mentions; fix the prompt file")
    answer = labels["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or answer not in (0, 1):
        raise InputError(f"{where}: 'answer' is {answer!r}; it must be 0 or 1, the index of the antecedent in "
                         "'candidate_spans'; fix the prompt file")
    attends = label_span(labels[query], query, where, QUERY_FIX)
    return CorefLabels(attends, pronoun, (candidates[0], candidates[1]), answer)


def check_question(question: str) -> str:
    """The question template a decoder answers, checked: a string whose only replacement
    field is ``{pronoun}`` and that ends without a space (each candidate's continuation
    brings its own leading space, as " the developer")."""
    fix = f"write it like {DEFAULT_QUESTION!r}"
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"the question must be a non-empty text with {{pronoun}} in it; {fix}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(question) if name is not None}
    except ValueError as e:  # an unbalanced brace
        raise InputError(f"the question {question!r} is not a template ({e}); {fix}") from None
    if fields != {"pronoun"}:
        raise InputError(f"the question {question!r} must name the pronoun as {{pronoun}} and no other field "
                         f"(it has {sorted(fields) or 'none'}); {fix}")
    if question != question.rstrip():
        raise InputError(f"the question {question!r} ends in a space; end it with the last word (each candidate "
                         "follows with its own leading space)")
    return question


def candidate_phrase(text: str, span: tuple[int, int]) -> str:
    """A candidate as the answer names it: a definite reference to the mention, "the" and its
    words ("The developer" -> "the developer", "a student" -> "the student"; a bare mention
    with a determiner just before it in the sentence, as the seed set's "animal", likewise ->
    "the animal"), so that both candidates start alike and only their words differ; a mention
    with no determiner ("someone") stays as the sentence writes it."""
    start, end = span
    mention = text[start:end]
    for det in DETERMINERS:
        if mention.lower().startswith(det):
            return "the " + mention[len(det):]
    before = text[:start].lower()
    for det in DETERMINERS:
        if before.endswith(det) and (len(before) == len(det) or not before[-len(det) - 1].isalnum()):
            return "the " + mention
    return mention


def answer_texts(run, i: int, question: str = DEFAULT_QUESTION) -> tuple[str, tuple[str, str]]:
    """Prompt ``i``'s question (the template with its pronoun) and the continuation of each
    candidate, in the order of ``candidate_spans`` (" the developer", " the designer")."""
    labels = coref_labels(run, i)
    text = run.prompt_records[i]["text"]
    asked = question.format(pronoun=text[slice(*labels.pronoun)])
    first, second = (" " + candidate_phrase(text, span) for span in labels.candidates)
    return asked, (first, second)


def mention_span(text: str, span: tuple[int, int], mention: str = "span") -> tuple[int, int]:
    """The characters of a candidate the study sums attention over: the annotated span
    (``"span"``), or its head word (``"head"``: the span's last word, as English noun phrases
    end in their head noun: "The construction worker" -> "worker"; a span of one word is
    its own head)."""
    if mention == "span":
        return span
    words = list(re.finditer(r"[\w'-]+", text[span[0]:span[1]]))
    if not words:
        return span
    last = words[-1]
    return span[0] + last.start(), span[0] + last.end()


def check_mention(mention: str) -> str:
    if mention not in MENTIONS:
        raise InputError(f"mention must be one of {', '.join(MENTIONS)} (the annotated span, or its head word), "
                         f"not {mention!r}")
    return mention


def candidate_attention(run, prompts: list[int] | None = None, query: str = "pronoun_span", mention: str = "span"
                        ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """attn [prompts, layers, heads, 2] (query span, the pronoun by default, -> each
    candidate mention, as ``mention`` says), gold [prompts], and the prompt indices used
    (those with complete labels whose spans map to tokens)."""
    return mention_attention(run, prompts, query, (mention,))[mention]


def mention_attention(run, prompts: list[int] | None, query: str, mentions: tuple[str, ...]
                      ) -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
    """`candidate_attention` for each of ``mentions``, reading every prompt's patterns once;
    InputError when the first of them uses no prompt (another may use none: its attn is empty)."""
    for mention in mentions:
        check_mention(mention)
    n_layers = run.config["n_layers"]
    require_layer_hooks(run, "attn.hook_pattern", "the coreference study's attention scores")
    prompts = list(range(run.n_prompts)) if prompts is None else prompts
    found: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in mentions}  # attn, gold, used
    for i in prompts:
        labels = coref_labels(run, i, query)
        if labels is None:
            continue
        text = run.prompt_records[i]["text"]
        q = run.tokens_in(i, *labels.query)
        cands = {m: [run.tokens_in(i, *mention_span(text, span, m)) for span in labels.candidates] for m in mentions}
        live = [m for m in mentions if q and all(cands[m])]
        if not live:
            continue
        patterns = [run.pattern(i, layer) for layer in range(n_layers)]  # each [head, q, k]
        for m in live:
            attn, gold, used = found[m]
            attn.append(np.stack([np.stack([p[:, q][:, :, c].sum(-1).mean(-1) for c in cands[m]], -1)
                                  for p in patterns]))  # [layer, head, 2]
            gold.append(labels.answer)
            used.append(i)
    if not found[mentions[0]][2]:
        raise InputError(f"no prompt of this run has the labels the study needs ({', '.join(REQUIRED)}); "
                         "record the bundled 'seed' or 'winobias' sets, or a JSONL file with those fields")
    return {m: (np.stack(attn) if attn else np.empty((0,)), np.asarray(gold), used)
            for m, (attn, gold, used) in found.items()}


def bootstrap_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of the mean over axis 0 (prompts, each its own unit), for every
    trailing cell. The study's intervals resample twin groups instead (`twin_stats`)."""
    return prompt_bootstrap_ci(correct, n_boot, seed)


@dataclass(frozen=True)
class PromptDesign:
    """The study's prompts as their data set designed them (`probe.design`)."""

    groups: np.ndarray  # [n] twin group of each prompt (same pair_id: one group)
    subsets: dict[str, np.ndarray]  # field -> [n] value of each prompt ("" where it has none)
    balanced: np.ndarray  # [n] bool: in the balanced set (subsets in equal numbers, twins whole)
    stereotype: np.ndarray  # [n] the candidate the gender stereotype picks, -1 where the data gives none

    @property
    def n_groups(self) -> int:
        return len(np.unique(self.groups))

    @property
    def n_balanced_groups(self) -> int:
        return len(np.unique(self.groups[self.balanced]))

    def subset_masks(self) -> list[tuple[str, str, np.ndarray]]:
        """(field, value, [n] bool) for every subset with at least one prompt, in report order."""
        out = []
        for name, values in self.subsets.items():
            for value in sorted({v for v in values if v}):
                out.append((name, value, values == value))
        return out


def prompt_design(run, used: list[int]) -> PromptDesign:
    """Twin groups, subsets, the balanced set and the stereotype's choice of the ``used`` prompts."""
    from probe.design import SUBSET_FIELDS, balanced_subset, stereotype_choice, subsets_of
    from probe.prompts import twin_key

    labels = [run.labels(i) for i in used]
    groups = group_ids([twin_key(lab, i) for lab, i in zip(labels, used)])
    per_prompt = [subsets_of(lab) for lab in labels]
    subsets = {name: np.asarray([s.get(name, "") for s in per_prompt], dtype=object) for name in SUBSET_FIELDS
               if any(name in s for s in per_prompt)}
    balanced = np.zeros(len(used), dtype=bool)
    balanced[balanced_subset(labels)] = True
    stereo = [stereotype_choice(lab) for lab in labels]
    return PromptDesign(groups, subsets, balanced, np.asarray([-1 if c is None else c for c in stereo]))


def baseline_choices(run, used: list[int], design: PromptDesign | None = None) -> dict[str, np.ndarray]:
    """Each baseline's choice per prompt ([n] candidate index, -1: it makes none): the nearest
    mention before the pronoun (else the nearest one), the first mention, and, where the data
    gives one for some prompt, the gender stereotype."""
    nearest, first = [], []
    for i in used:
        labels = coref_labels(run, i)
        p0 = labels.pronoun[0]
        starts = [span[0] for span in labels.candidates]
        before = [j for j, s in enumerate(starts) if s < p0]
        pool = before or [0, 1]
        nearest.append(max(pool, key=lambda j: starts[j]) if before else min(pool, key=lambda j: abs(starts[j] - p0)))
        first.append(int(np.argmin(starts)))
    choices = {"nearest mention": np.asarray(nearest), "first mention": np.asarray(first)}
    if design is not None and (design.stereotype >= 0).any():
        choices["gender stereotype"] = design.stereotype
    return choices


def baseline_correct(choices: dict[str, np.ndarray], gold: np.ndarray) -> dict[str, np.ndarray]:
    """[n] correctness of each baseline per prompt (a choice of -1 is a coin: 0.5), and chance."""
    out = {name: np.where(c < 0, 0.5, (c == gold).astype(float)) for name, c in choices.items()}
    out["chance"] = np.full(len(gold), 0.5)
    return out


def positional_baselines(run, used: list[int], gold: np.ndarray) -> dict[str, float]:
    """Accuracy of always choosing the nearest mention before the pronoun (else the nearest
    one), the first mention, and chance."""
    return {k: float(v.mean()) for k, v in baseline_correct(baseline_choices(run, used), gold).items()}


def binding_baseline(correct: dict[str, np.ndarray], where: np.ndarray) -> tuple[str, float]:
    """The best baseline on the prompts ``where`` selects (ties: the first named), and its accuracy."""
    values = {name: float(c[where].mean()) if where.any() else float("nan") for name, c in correct.items()}
    name = max(values, key=lambda k: (values[k], -list(values).index(k)))
    return name, values[name]


def coref_heads(run, seed: int = 0, query: str = "pronoun_span", mention: str = "span"
                ) -> tuple[pd.DataFrame, dict[str, float], int]:
    """Per-head antecedent accuracy table, the baselines (over all prompts), and the number of prompts."""
    attn, gold, used = candidate_attention(run, query=query, mention=mention)
    design = prompt_design(run, used)
    correct = baseline_correct(baseline_choices(run, used, design), gold)
    return head_table(attn, gold, correct, design, seed), {k: float(v.mean()) for k, v in correct.items()}, len(used)


def head_table(attn: np.ndarray, gold: np.ndarray, baselines: dict[str, np.ndarray], design: PromptDesign,
               seed: int = 0, other_mention: tuple[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per head: accuracy over all prompts and on the balanced set, each with a 95%
    interval from a bootstrap over twin groups; the sign-flip test against the binding
    baseline on the balanced set (p, Holm-adjusted p) and the verdict ``beats_baselines``; mean
    attention to the gold and to the other candidate; accuracy per subset (``acc_FIELD=VALUE``);
    and, given ``other_mention`` = (its name, its attn), the accuracy by the other convention."""
    correct = head_correct(attn, gold)
    n, L, H = correct.shape
    lo, hi = group_bootstrap_ci(correct, design.groups, seed=seed)
    bal = design.balanced
    nan = np.full((L, H), np.nan)
    b_acc, b_lo, b_hi, p, bound = nan, nan, nan, np.ones((L, H)), np.inf  # no balanced set: no claim
    if bal.any():
        name, bound = binding_baseline(baselines, bal)
        b_acc = correct[bal].mean(0)
        b_lo, b_hi = group_bootstrap_ci(correct[bal], design.groups[bal], seed=seed)
        p = flip_test(correct[bal], baselines[name][bal], design.groups[bal], seed=seed)
    p_holm = holm(p)
    beats = (bal.sum() >= MIN_PROMPTS_FOR_CLAIMS) & (b_lo > bound) & (p_holm < CLAIM_LEVEL)
    g = gold[:, None, None]
    gold_attn = np.take_along_axis(attn, g[..., None].repeat(H, 2), -1)[..., 0]
    other_attn = np.take_along_axis(attn, (1 - g)[..., None].repeat(H, 2), -1)[..., 0]
    layer, head = np.divmod(np.arange(L * H), H)
    table = {"layer": layer, "head": head, "accuracy": correct.mean(0).ravel(), "ci_low": lo.ravel(),
             "ci_high": hi.ravel(), "balanced_accuracy": np.ravel(b_acc), "balanced_ci_low": np.ravel(b_lo),
             "balanced_ci_high": np.ravel(b_hi), "p_value": p.ravel(), "p_holm": p_holm.ravel(),
             "beats_baselines": np.ravel(beats), "attn_gold": gold_attn.mean(0).ravel(),
             "attn_other": other_attn.mean(0).ravel()}
    for field, value, mask in design.subset_masks():
        table[f"acc_{field}={value}"] = correct[mask].mean(0).ravel()
    if other_mention is not None:
        other_name, other = other_mention
        table[f"accuracy_{other_name}"] = (other.argmax(-1) == g).mean(0).ravel()
    return pd.DataFrame(table)


def head_correct(attn: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """[n, L, H] 1.0 where the head attends more to the antecedent than to the other candidate."""
    return (attn.argmax(-1) == gold[:, None, None]).astype(float)


def subset_table(heads: pd.DataFrame, baselines: dict[str, np.ndarray], design: PromptDesign,
                 correct: np.ndarray | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per subset (and the balanced set, and all prompts): prompts, twin groups, each
    baseline's accuracy there, and the best head's accuracy there (with its 95% interval from a
    bootstrap over the subset's twin groups, given ``correct`` [n, L, H])."""
    rows = []
    everything = np.ones(len(design.groups), dtype=bool)
    for field, value, mask in [("all", "", everything), ("balanced", "", design.balanced), *design.subset_masks()]:
        column = {"all": "accuracy", "balanced": "balanced_accuracy"}.get(field, f"acc_{field}={value}")
        row = {"subset": field if not value else f"{field}={value}", "n_prompts": int(mask.sum()),
               "n_groups": len(np.unique(design.groups[mask]))}
        row.update({name: float(c[mask].mean()) if mask.any() else float("nan") for name, c in baselines.items()})
        best = heads[column].idxmax() if mask.any() and heads[column].notna().any() else None
        row["best_head"] = "" if best is None else head_label(int(heads.layer[best]), int(heads["head"][best]))
        row["best_head_accuracy"] = float("nan") if best is None else float(heads[column][best])
        row["best_head_ci_low"] = row["best_head_ci_high"] = float("nan")
        if best is not None and correct is not None:
            layer, head = int(heads.layer[best]), int(heads["head"][best])
            lo, hi = group_bootstrap_ci(correct[mask, layer, head], design.groups[mask], seed=seed)
            row["best_head_ci_low"], row["best_head_ci_high"] = float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def heatmap_html(grid: np.ndarray, x: list[str], y: list[str], title: str, path: Path, zmid: float | None = None,
                 colorbar: str = "") -> None:
    """A [rows, cols] heatmap as a standalone HTML figure."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Heatmap(z=grid, x=x, y=y, colorscale="RdBu", zmid=zmid, colorbar={"title": colorbar}))
    fig.update_layout(title=title, yaxis={"autorange": "reversed"})
    # "directory": plotly.min.js is written once beside the figures, so the report opens offline
    fig.write_html(path, include_plotlyjs="directory")


# ------------------------------------------------------------------ the study as data
# Why a part of the study was not computed. The report words each one (coref_report).
PROBES_NEED_RESID = ("record `blocks.*.hook_resid_post` too (`probe record ... --names 'blocks.*.attn.hook_pattern' "
                     "'blocks.*.hook_resid_post'`)")
NO_MODEL = "no model given"
INTERVENTIONS_NEED_PROBE = ("they are measured with the antecedent probe, which needs `blocks.*.hook_resid_post` "
                            f"recorded and at least {MIN_PROMPTS_FOR_CLAIMS} prompts")
NO_TWIN_PAIRS = "no twin prompts (same `pair_id`, different antecedent, same token length) in this run"
MIN_PROBE_PROMPTS = 10  # split units (prompts or twin groups) a probe's train/dev/test split needs


@dataclass(frozen=True)
class TooFewPrompts:
    """Caution: too few prompts for a bootstrap interval to show a head beats a baseline."""

    n_prompts: int
    minimum: int = MIN_PROMPTS_FOR_CLAIMS


@dataclass(frozen=True)
class LayerZeroProbe:
    """Caution: the layer-0 probe already reads most of what the best layer reads, so surface
    cues may carry the answer."""

    layer0_acc: float
    best_acc: float


@dataclass(frozen=True)
class NearMajority:
    """Caution: the clean measure is barely above the probes' majority baseline, so no
    ablation can show a large drop."""

    clean: float
    majority: float


@dataclass(frozen=True)
class FirstTokenInMention:
    """Caution (causal models): a candidate's mention holds the sequence's first token, where
    decoder heads park attention they do not need (an attention sink), so summing attention
    over the span favours that candidate for reasons that are not coreference."""

    n_prompts: int  # prompts where it does
    of: int  # prompts of the study


Caution = TooFewPrompts | LayerZeroProbe | NearMajority | FirstTokenInMention


@dataclass(frozen=True)
class ModelAnswers:
    """The model's own answer on every labelled prompt (a decoder, asked ``question`` after
    the prompt): which candidate's continuation it finds more probable."""

    question: str  # the template, e.g. DEFAULT_QUESTION
    table: pd.DataFrame  # one row per prompt: prompt, question, gold, other, logp_gold, logp_other, difference, correct
    ci_low: float  # 95% interval of the accuracy, from a bootstrap over twin groups
    ci_high: float
    balanced: tuple[float, float, float] | None = None  # accuracy and its interval on the balanced set
    p_value: float | None = None  # sign-flip test against the binding baseline on the balanced set
    subsets: dict[str, float] = dataclass_field(default_factory=dict)  # accuracy per subset ("stereotype=pro": ...)

    @property
    def n_prompts(self) -> int:
        return len(self.table)

    @property
    def accuracy(self) -> float:
        """Share of prompts whose antecedent's continuation is the more probable one."""
        return float(self.table.correct.mean())

    @property
    def mean_difference(self) -> float:
        """Mean log-prob difference antecedent - other (nats)."""
        return float(self.table.difference.mean())


@dataclass(frozen=True)
class CorefStudy:
    """Everything the coreference report says, computed (`coref_study`); `save_study` writes
    it, `coref_report.render_report` words it."""

    run_path: Path
    model_name: str  # the run's model
    query: str  # label field of the span that attends
    top: int  # how many heads the report lists (and names, when none beats the baselines)
    heads: pd.DataFrame  # per-head table (coref_heads.csv): layer, head, accuracy, ci_low, ci_high, ...
    baselines: dict[str, float]  # over all prompts: nearest mention, first mention, [gender stereotype,] chance
    n_prompts: int  # prompts with complete gold labels
    probes: pd.DataFrame | None  # antecedent probe per layer (layer_probes' table)
    probes_not_run: str | None  # why there is no probe table (PROBES_NEED_RESID, or too few prompts)
    named_heads: tuple[tuple[int, int], ...]  # the heads the interventions test
    interventions_not_run: str | None  # NO_MODEL or INTERVENTIONS_NEED_PROBE; None when they ran
    ablation: AblationSummary | None  # the named heads ablated together
    ablation_sweep: pd.DataFrame | None  # each head mean-ablated alone (ablation_accuracy.csv)
    patch_heads: pd.DataFrame | None  # twin-pair patching per head (patch_heads_antecedent.csv)
    patch_resid: pd.DataFrame | None  # per [layer, position] of resid_pre (patch_resid_antecedent.csv)
    patching_not_run: str | None  # NO_TWIN_PAIRS or the patching's error; None when patched or not attempted
    notes: tuple[Caution, ...] = ()
    answers: ModelAnswers | None = None  # the model's own answer (decoders); None when not asked
    mention: str = "span"  # what a candidate's attention is summed over (MENTIONS)
    subsets: pd.DataFrame | None = None  # subset_table: baselines and the best head per subset
    n_balanced: int = 0  # prompts in the balanced set
    n_groups: int = 0  # twin groups among all prompts
    n_balanced_groups: int = 0
    binding: tuple[str, float] = ("", float("nan"))  # the best baseline on the balanced set, and its accuracy
    mediation: Mediation | None = None  # per-head causal mediation of the twin intervention (decoders)
    mediation_not_run: str | None = None  # why not, where it was attempted

    @property
    def best_positional(self) -> float:
        return max(self.baselines["nearest mention"], self.baselines["first mention"])

    @property
    def n_beating(self) -> int:
        """Heads that beat the binding baseline on the balanced set (interval and corrected test)."""
        return int(self.heads.beats_baselines.sum())

    @property
    def other_mention(self) -> str:
        return next(m for m in MENTIONS if m != self.mention)

    @property
    def top_heads(self) -> pd.DataFrame:
        return self.heads.sort_values(rank_column(self.heads), ascending=False).head(self.top)

    def caution(self, kind: type) -> Caution | None:
        """The note of this kind, if the study has one."""
        return next((note for note in self.notes if isinstance(note, kind)), None)


def rank_column(heads: pd.DataFrame) -> str:
    """Heads are ranked by their accuracy on the balanced set (where claims are made); a run
    with no balanced set by their accuracy over all prompts."""
    return "balanced_accuracy" if heads.balanced_accuracy.notna().any() else "accuracy"


def named_heads(heads: pd.DataFrame, top: int) -> tuple[tuple[int, int], ...]:
    """The best ``top`` heads that beat the baselines; when none does, the best ``top`` by
    accuracy (on the balanced set where there is one)."""
    beating = heads[heads.beats_baselines]
    pool = beating if len(beating) else heads
    best = pool.sort_values(rank_column(heads), ascending=False).head(top)
    return tuple((int(r.layer), int(r["head"])) for _, r in best.iterrows())


def antecedent_probes(run, query: str, seed: int) -> tuple[pd.DataFrame | None, str | None]:
    """Antecedent probes per layer from the query's representation, or None and why not."""
    from .probe_features import antecedent_features
    from .probes import layer_probes

    n_layers = run.config["n_layers"]
    if any(f"blocks.{layer}.hook_resid_post" not in run.hooks for layer in range(n_layers)):
        return None, PROBES_NEED_RESID
    feats, labels, prompt_of, types = antecedent_features(run, range(n_layers), query=query)
    n_units = len(np.unique(prompt_of))
    if n_units < MIN_PROBE_PROMPTS or len(np.unique(labels)) < 2:
        return None, (f"{n_units} labelled prompts or twin pairs (at least {MIN_PROBE_PROMPTS}, with both answers, "
                      "are needed)")
    return layer_probes(feats, labels, prompt_of, types=types, seed=seed, hook="hook_resid_post"), None


def layer_zero_caution(probes: pd.DataFrame) -> LayerZeroProbe | None:
    """Layer 0 reads at least 3/4 of the best layer's gain over the majority baseline (and
    the best layer gains more than 0.1)."""
    majority, first, best = probes.majority_baseline.iloc[0], probes.test_acc.iloc[0], probes.test_acc.max()
    if best > majority + 0.1 and first - majority >= 0.75 * (best - majority):
        return LayerZeroProbe(float(first), float(best))
    return None


def near_majority_caution(ablation: AblationSummary, probes: pd.DataFrame) -> NearMajority | None:
    """The clean measure is within 0.05 of the majority baseline."""
    majority = float(probes.majority_baseline.iloc[0])
    return NearMajority(ablation.clean, majority) if ablation.clean <= majority + 0.05 else None


@dataclass(frozen=True)
class Interventions:
    """The named heads ablated and patched with the run's own model (all None: not run)."""

    ablation: AblationSummary | None = None
    sweep: pd.DataFrame | None = None
    patch_heads: pd.DataFrame | None = None
    patch_resid: pd.DataFrame | None = None
    patching_not_run: str | None = None


def interventions(model, run, used: list[int], named: tuple[tuple[int, int], ...], probes: pd.DataFrame | None,
                  query: str, seed: int, question: str | None = None,
                  progress: Callable[[str], None] | None = None) -> Interventions:
    """Ablate the named heads (together, and every head alone) and patch them between twin
    prompts, measured by the model's answer where it gives one (``question``: the decoder is
    asked it after each prompt; all prompts are measured, their own mean is the ablation's
    reference), else by the antecedent probe at the probes' best dev layer on held-out prompts."""
    from .coref_interventions import ablation_setup, ablation_tests, sweep
    from .run_checks import check_model_matches

    check_model_matches(model, run)
    layer = run.config["n_layers"] - 1 if probes is None else probe_layer(probes, named)
    stage = progress or (lambda text: None)
    setup = ablation_setup(model, run, used, layer, query, seed, question=question)
    stage("the named heads ablated together, and 10 random sets of as many")
    summary = ablation_tests(model, setup, list(named), seed)
    # asked a question, the model's log-prob difference shows each head's partial effect (its
    # accuracy over a few prompts moves in steps of 1/n); elsewhere the accuracy, as always
    stage(f"the per-head ablation sweep ({model.cfg.n_layers * model.cfg.n_heads} heads)")
    per_head = sweep(model, setup, "difference" if setup.data.continuation is not None else "accuracy")
    stage("patching between twins")
    return Interventions(summary, per_head, *twin_patching(model, run, used, layer, query, question))


def twin_patching(model, run, used: list[int], layer: int, query: str, question: str | None = None
                  ) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str | None]:
    """(heads, resid, None) patched between the run's twin pairs, or (None, None, why not)."""
    from .coref_interventions import fit_antecedent_probe, patching_tests, twin_pairs

    pairs = twin_pairs(run, used)
    if not pairs:
        return None, None, NO_TWIN_PAIRS
    # a decoder asked the question needs no probe (and its run may lack the resid_post one reads)
    probe = None if question is not None else fit_antecedent_probe(run, used, layer, query)
    try:
        heads, resid = patching_tests(model, run, pairs, probe, query, question=question)
    except InputError as e:  # e.g. the metric scores the twins the same: nothing to normalise
        return None, None, str(e)
    return heads, resid, None


def first_token_caution(run, used: list[int], mention: str) -> FirstTokenInMention | None:
    """On a causal model's run, the prompts whose candidate mention (as ``mention`` says) holds
    token 0; None when there are none (or the model attends both ways)."""
    if not run.config.get("causal"):
        return None
    hits = 0
    for i in used:
        labels = coref_labels(run, i)
        text = run.prompt_records[i]["text"]
        hits += any(0 in run.tokens_in(i, *mention_span(text, span, mention)) for span in labels.candidates)
    return FirstTokenInMention(hits, len(used)) if hits else None


def probe_layer(probes: pd.DataFrame, named: tuple[tuple[int, int], ...]) -> int:
    """The layer whose antecedent probe measures the interventions: the best on dev among the
    layers at or after the latest named head's (a probe of an earlier layer cannot see those
    heads); ties go to the later layer, where more of the sentence has been read."""
    latest = max((layer for layer, _ in named), default=0)
    after = probes[probes.layer >= latest]
    return int(after.sort_values(["dev_acc", "layer"], ascending=[False, False]).layer.iloc[0])


def model_answers(model, run, used: list[int], question: str, seed: int = 0, design: PromptDesign | None = None,
                  baselines: dict[str, np.ndarray] | None = None) -> ModelAnswers:
    """The decoder's answer on every labelled prompt, asked ``question`` after it, with a 95%
    interval of its accuracy from a bootstrap over twin groups; given the prompts' ``design``
    and ``baselines`` (per-prompt correctness), also on the balanced set (with the sign-flip
    test against the binding baseline) and per subset."""
    from .coref_interventions import answer_table

    table = answer_table(model, run, used, question)
    correct = table.correct.to_numpy(float)
    groups = design.groups if design is not None else np.arange(len(correct))
    lo, hi = group_bootstrap_ci(correct, groups, seed=seed)
    if design is None or baselines is None:
        return ModelAnswers(question, table, float(lo), float(hi))
    bal, balanced, p = design.balanced, None, None
    if bal.any():
        b_lo, b_hi = group_bootstrap_ci(correct[bal], groups[bal], seed=seed)
        balanced = (float(correct[bal].mean()), float(b_lo), float(b_hi))
        name, _ = binding_baseline(baselines, bal)
        p = float(flip_test(correct[bal, None], baselines[name][bal], groups[bal], seed=seed)[0])
    subsets = {f"{f}={v}": float(correct[m].mean()) for f, v, m in design.subset_masks()}
    return ModelAnswers(question, table, float(lo), float(hi), balanced, p, subsets)


def coref_study(run, model=None, seed: int = 0, top: int = 5, query: str = "pronoun_span",
                question: str | None = None, mention: str = "span",
                progress: Callable[[str], None] | None = None) -> CorefStudy:
    """The coreference study of ``run``: per-head attention accuracy against the baselines,
    overall, per subset and on the balanced set (where claims are made); with resid_post
    recorded, antecedent probes per layer; with ``model`` (the one the run was recorded with),
    the named heads ablated and patched (``coref_interventions``). A decoder language model is
    also asked ``question`` (default `DEFAULT_QUESTION`) after every prompt; its answer
    measures the interventions and the per-head causal mediation of the twin intervention
    (``coref_mediation``). Computes only: nothing is written; ``progress``, when given, is told
    of each long stage as it starts (the CLI prints them)."""
    stage = progress or (lambda text: None)
    check_top(top)
    check_mention(mention)
    if question is not None:
        check_question(question)
        if model is None:
            raise InputError("a question is asked of the model, and no model is given (drop --no-interventions, or "
                             "the question)")
    # no stage is announced before the labels are checked: a mistake is one line, nothing before it
    other = next(m for m in MENTIONS if m != mention)
    both = mention_attention(run, None, query, (mention, other))  # the patterns read once for both conventions
    (attn, gold, used), (other_attn, _, other_used) = both[mention], both[other]
    design = prompt_design(run, used)
    correct = baseline_correct(baseline_choices(run, used, design), gold)
    heads = head_table(attn, gold, correct, design, seed,
                       (other, other_attn) if other_used == used else None)
    baselines = {k: float(v.mean()) for k, v in correct.items()}
    n = len(used)
    stage("antecedent probes per layer")
    probes, probes_not_run = antecedent_probes(run, query, seed)
    named = named_heads(heads, top)
    notes: list[Caution] = [TooFewPrompts(n)] if n < MIN_PROMPTS_FOR_CLAIMS else []
    if (sink := first_token_caution(run, used, mention)) is not None:
        notes.append(sink)
    if probes is not None and (caution := layer_zero_caution(probes)):
        notes.append(caution)
    done, not_run, answers, mediation, mediation_not_run = Interventions(), None, None, None, None
    if model is None:
        not_run = NO_MODEL
    elif asks_the_model(model, run, used, question):
        from .run_checks import check_model_matches

        question = question or DEFAULT_QUESTION
        check_model_matches(model, run)
        stage(f"the model's answer on {n} prompts")
        answers = model_answers(model, run, used, question, seed, design, correct)
        done = interventions(model, run, used, named, probes, query, seed, question, stage)
        stage("causal mediation of the twin intervention, per head")
        mediation, mediation_not_run = twin_mediation(model, run, used, question, query)
    elif question is not None:
        raise InputError(f"{model.cfg.model_name} is not asked a question: it is no decoder language model whose "
                         "tokenizer can write one (an encoder is measured by a probe, toy-coref by the question "
                         "its prompts end in); drop the question")
    elif probes is None or n < MIN_PROMPTS_FOR_CLAIMS:
        not_run = INTERVENTIONS_NEED_PROBE
    else:
        done = interventions(model, run, used, named, probes, query, seed, progress=stage)
        if caution := near_majority_caution(done.ablation, probes):
            notes.append(caution)
    bal = design.balanced
    return CorefStudy(
        run_path=Path(run.path), model_name=run.model_name, query=query, top=top, heads=heads, baselines=baselines,
        n_prompts=n, probes=probes, probes_not_run=probes_not_run, named_heads=named, interventions_not_run=not_run,
        ablation=done.ablation, ablation_sweep=done.sweep, patch_heads=done.patch_heads, patch_resid=done.patch_resid,
        patching_not_run=done.patching_not_run, notes=tuple(notes), answers=answers, mention=mention,
        subsets=subset_table(heads, correct, design, head_correct(attn, gold), seed), n_balanced=int(bal.sum()), n_groups=design.n_groups,
        n_balanced_groups=design.n_balanced_groups,
        binding=binding_baseline(correct, bal) if bal.any() else ("", float("nan")),
        mediation=mediation, mediation_not_run=mediation_not_run)


NO_MEDIATION_PAIRS = ("no twin prompts with the same antecedent and another pronoun (WinoBias pro/anti, WinoGender's "
                      "genders) of one token length in this run")


def twin_mediation(model, run, used: list[int], question: str, query: str) -> tuple[Mediation | None, str | None]:
    """Per-head causal mediation of the twin intervention, or (None, why not)."""
    from .coref_mediation import head_mediation, mediation_pairs

    pairs = mediation_pairs(run, used)
    if not pairs:
        return None, NO_MEDIATION_PAIRS
    try:
        return head_mediation(model, run, pairs, question, query), None
    except InputError as e:  # e.g. the twins' answers do not differ: no total effect to mediate
        return None, str(e)


def asks_the_model(model, run, used: list[int], question: str | None = None) -> bool:
    """Is ``model`` a decoder language model that is asked ``question`` after each prompt
    (`coref_interventions.answers_by_continuation`)?"""
    from .coref_interventions import answers_by_continuation

    return answers_by_continuation(model, run, used, question or DEFAULT_QUESTION)


# ------------------------------------------------------------------ the study's files
def save_study(study: CorefStudy, out_dir: str | Path | None = None, command: str | None = None) -> Path:
    """Write the study: OUT/{coref_heads.csv, coref_subsets.csv, answers.csv, mediation.csv,
    heads.html, mediation.html, ablation.html, patching.html, report.md} (OUT defaults to RUN/analyses/coref; the figures only for what was computed)
    and its tables next to the run (RUN/analyses/NAME.csv, each with its sidecar naming
    ``command``). Returns report.md's path."""
    from probe.store import atomic_write_text

    from .coref_report import render_report, sweep_metric  # here: coref_report imports this module's dataclasses
    from .probe_studies import antecedent_probes_name
    from .results import save_result

    out = Path(out_dir) if out_dir else study.run_path / "analyses" / "coref"
    if problem := output_path_problem(out, folder=True):  # before any file is written
        raise StoreError(f"cannot write the coreference study: {problem}")
    out.mkdir(parents=True, exist_ok=True)
    if out_dir:  # a folder the user named: the table alone
        study.heads.to_csv(out / "coref_heads.csv", index=False)
    else:  # next to the run, described by its sidecar for the dashboard
        save_result(study.run_path, "coref/coref_heads", study.heads, command=command)
    heads_x, layers_y = head_axes(study.heads)
    save_subset_figure(study, heads_x, layers_y, out / "heads.html")
    if study.subsets is not None:
        atomic_write_text(out / "coref_subsets.csv", study.subsets.to_csv(index=False, lineterminator="\n"))
    if study.mediation is not None:
        atomic_write_text(out / "mediation.csv", study.mediation.table.to_csv(index=False, lineterminator="\n"))
        heatmap_html(grid_of(study.mediation.table, "nie"), heads_x, layers_y,
                     f"Natural indirect effect of each head (twin intervention, {study.mediation.n_pairs} pairs; "
                     f"total effect {study.mediation.total_effect:+.2f} nats)", out / "mediation.html", 0.0, "NIE")
    if study.probes is not None:
        save_result(study.run_path, antecedent_probes_name(study.query), study.probes, command=command)
    if study.answers is not None:  # no result kind: the table lies with the report
        atomic_write_text(out / "answers.csv", study.answers.table.to_csv(index=False, lineterminator="\n"))
    if study.ablation is not None:
        save_result(study.run_path, sweep_name(study), study.ablation_sweep, command=command)
        measured = f"{study.ablation.n_held_out} {'held-out ' if study.ablation.held_out else ''}prompts"
        heatmap_html(grid_of(study.ablation_sweep, "effect"), heads_x, layers_y,
                     f"Change in {sweep_metric(study)} when each head is mean-ablated ({measured})",
                     out / "ablation.html", 0.0, "effect")
    if study.patch_resid is not None:
        save_result(study.run_path, "patch_heads_antecedent", study.patch_heads, command=command)
        save_result(study.run_path, "patch_resid_antecedent", study.patch_resid, command=command)
        save_patching_figure(study.patch_resid, layers_y, out / "patching.html")
    (out / "report.md").write_text(render_report(study))
    return out / "report.md"


def subset_panels(study: CorefStudy) -> list[tuple[str, str]]:
    """(column of the head table, panel title) of the per-head accuracy figure: the balanced
    set, all prompts, then every subset."""
    panels = [("balanced_accuracy", f"balanced set ({study.n_balanced} prompts)")] if study.n_balanced else []
    panels.append(("accuracy", f"all {study.n_prompts} prompts"))
    return panels + [(c, c.removeprefix("acc_")) for c in study.heads.columns if c.startswith("acc_")]


def save_subset_figure(study: CorefStudy, heads_x: list[str], layers_y: list[str], path: Path) -> None:
    """Per-head accuracy heatmaps side by side, one per panel of `subset_panels`, on one colour
    scale centred on the binding baseline (else 0.5): a stereotype-following head is red on
    the anti-stereotyped panel, blue on the pro one."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = subset_panels(study)
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for _, t in panels])
    centre = study.binding[1] if study.binding[0] else 0.5
    for k, (column, _) in enumerate(panels):
        fig.add_trace(go.Heatmap(z=grid_of(study.heads, column), x=heads_x, y=layers_y, coloraxis="coloraxis"),
                      row=k // cols + 1, col=k % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Antecedent accuracy per head by subset (colour centre {centre:.3f} = "
                            f"{study.binding[0] or 'chance'})",
                      coloraxis={"colorscale": "RdBu", "cmin": 0, "cmax": 1, "cmid": centre,
                                 "colorbar": {"title": "accuracy"}}, height=320 * rows)
    fig.write_html(path, include_plotlyjs="directory")


def sweep_name(study: CorefStudy) -> str:
    """The per-head sweep's name next to the run: ablation_difference where it measures the
    log-prob difference of a decoder asked the question, else ablation_accuracy."""
    return "ablation_difference" if study.answers is not None else "ablation_accuracy"


def head_axes(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Heatmap labels of a [layer, head] table: heads across (H0 ...), layers down (L0 ...)."""
    n_layers, n_heads = table.layer.max() + 1, table["head"].max() + 1
    return [f"H{h}" for h in range(n_heads)], [f"L{layer}" for layer in range(n_layers)]


def grid_of(table: pd.DataFrame, column: str) -> np.ndarray:
    """A [layer, head] table's column as a [layers, heads] grid (rows in layer, head order)."""
    return table[column].to_numpy().reshape(table.layer.max() + 1, table["head"].max() + 1)


def save_patching_figure(resid: pd.DataFrame, layers_y: list[str], path: Path) -> None:
    grid = resid.pivot(index="layer", columns="position", values="normalized")
    positions = [f"{p}:{t}" for p, t in resid.drop_duplicates("position")[["position", "token"]]
                 .itertuples(index=False)]
    heatmap_html(grid.to_numpy(), positions, layers_y, "Denoising patch of resid_pre per [layer, position] (normalised)",
                 path, 0.0, "normalised")


def write_report(run, out_dir: str | Path | None = None, seed: int = 0, top: int = 5,
                 query: str = "pronoun_span", model=None, command: str | None = None,
                 question: str | None = None, mention: str = "span",
                 progress: Callable[[str], None] | None = None) -> Path:
    """Run the study and write RUN/analyses/coref/{coref_heads.csv, heads.html, report.md}.
    With resid_post recorded, antecedent probes per layer are added; with ``model`` (the one
    the run was recorded with), the heads are ablated and patched (``coref_interventions``),
    and a decoder is asked ``question`` (default `DEFAULT_QUESTION`), whose answer measures them."""
    return save_study(coref_study(run, model=model, seed=seed, top=top, query=query, question=question,
                                  mention=mention, progress=progress), out_dir, command)
