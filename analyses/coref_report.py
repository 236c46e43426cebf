"""The coreference study in words: `render_report` turns a `CorefStudy` into the markdown of
RUN/analyses/coref/report.md. Pure formatting: every number comes from the study, nothing is
computed or written here (`analyses.coref.coref_study` computes, `save_study` writes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.head_labels import head_label, heads_text

from .coref import (
    MIN_PROMPTS_FOR_CLAIMS,
    NO_MEDIATION_PAIRS,
    NO_MODEL,
    NO_TWIN_PAIRS,
    CorefStudy,
    FirstTokenInMention,
    LayerZeroProbe,
    NearMajority,
    TooFewPrompts,
    rank_column,
    sweep_name,
)

if TYPE_CHECKING:
    from .coref_interventions import AblationSummary


def render_report(study: CorefStudy) -> str:
    """The study's report (markdown, ending in a newline)."""
    lines = (attention_section(study) + subsets_section(study) + mention_section(study) + answers_section(study)
             + probe_section(study))
    if study.interventions_not_run is not None:
        lines += ["", interventions_not_run(study.interventions_not_run)]
    else:
        lines += ablation_section(study) + patching_section(study) + mediation_section(study)
    return "\n".join(lines) + "\n"


TEST = ("the whole 95% interval of its accuracy on the balanced set (a bootstrap over twin groups) lies above the "
        "binding baseline, and a one-sided sign-flip permutation test against that baseline (head and baseline "
        "exchanged within each twin group) is below 0.05 after Holm's correction over every head")


def how_to_read(study: CorefStudy) -> str:
    """The paragraph up front: what was found, on which subset, against which baseline, by which test."""
    name, value = study.binding
    if not study.n_balanced:
        where = ("This run has no balanced set (no subset of its prompts holds every subset of the data set in "
                 "equal numbers with twins whole), so no head is claimed to beat the baselines; record a balanced "
                 "sample (`probe record --prompts winobias-dev --sample 400`).")
        return f"**How to read this.** {where}"
    found = (f"{study.n_beating} of {len(study.heads)} heads beat the baselines" if study.n_beating
             else f"no head of {len(study.heads)} beats the baselines")
    best = study.top_heads.iloc[0]
    few = (f" With only {study.n_balanced} balanced prompts no claim is made (at least {MIN_PROMPTS_FOR_CLAIMS})."
           if study.n_balanced < MIN_PROMPTS_FOR_CLAIMS else "")
    return (f"**How to read this.** Claims are made on the balanced set ({study.n_balanced} of {study.n_prompts} "
            f"prompts, {study.n_balanced_groups} twin groups), against the best baseline there, which binds: "
            f"{name} ({value:.3f}). A head beats the baselines when {TEST}. Found: {found}; the best head, "
            f"{head_label(int(best.layer), int(best['head']))}, is right on {best.balanced_accuracy:.3f} "
            f"[{best.balanced_ci_low:.3f}, {best.balanced_ci_high:.3f}] of the balanced set (Holm p "
            f"{best.p_holm:.3g}).{few} Per-subset accuracies below show what a head follows"
            + (": one that follows the gender stereotype is right on the pro-stereotyped sentences and wrong on their "
               "anti-stereotyped twins." if "gender stereotype" in study.baselines else "."))


def attention_section(study: CorefStudy) -> list[str]:
    """Title, how to read it, what was measured, the baselines, the top heads with their verdicts."""
    lines = [f"# Coreference study: {study.model_name}", "", how_to_read(study), "",
             f"{study.n_prompts} prompts with gold antecedents from `{study.run_path}` ({study.n_groups} twin "
             f"groups). For each head, attention from the {study.query.removesuffix('_span')} to each candidate "
             f"({MENTION_WORDS[study.mention]}; sum over a mention's tokens, mean over the pronoun's tokens); the "
             "head picks the candidate it attends to more. Intervals: 95%, from a bootstrap over twin groups "
             "(prompts sharing a `pair_id` are one unit).", ""]
    rank = rank_column(study.heads)
    lines += [f"Top {study.top} heads (by {'balanced-set ' if rank == 'balanced_accuracy' else ''}accuracy):", "",
              "| head | balanced acc | 95% CI | Holm p | all prompts | attn to gold / other | verdict |",
              "|---|---|---|---|---|---|---|"]
    for _, r in study.top_heads.iterrows():
        lines.append(f"| {head_label(int(r.layer), int(r['head']))} | {r.balanced_accuracy:.3f} | "
                     f"[{r.balanced_ci_low:.3f}, {r.balanced_ci_high:.3f}] | {r.p_holm:.3g} | {r.accuracy:.3f} "
                     f"[{r.ci_low:.3f}, {r.ci_high:.3f}] | {r.attn_gold:.3f} / {r.attn_other:.3f} | "
                     f"{verdict(study, r)} |")
    few = study.caution(TooFewPrompts)
    if few is not None:
        lines += ["", f"Only {few.n_prompts} prompts: too few to claim that any head beats the baselines; record more "
                      "(e.g. `probe record --prompts winobias-dev --sample 400`)."]
    lines += ["", attention_verdict(study), "",
              "Figure: [heads.html](heads.html) (per-head accuracy on the balanced set, all prompts and each subset); "
              "tables: [coref_heads.csv](coref_heads.csv), [coref_subsets.csv](coref_subsets.csv)."]
    return lines


MENTION_WORDS = {"span": "a mention is its annotated span, e.g. \"The developer\"",
                 "head": "a mention is its head word, e.g. \"developer\" of \"The developer\""}


def verdict(study: CorefStudy, row) -> str:
    if row.beats_baselines:
        return f"beats the baselines (binding: {study.binding[0]})"
    if not study.n_balanced or study.n_balanced < MIN_PROMPTS_FOR_CLAIMS:
        return "no claim (no balanced set large enough)"
    return f"does not beat the binding baseline ({study.binding[0]})"


def attention_verdict(study: CorefStudy) -> str:
    name, value = study.binding
    if study.n_beating:
        return (f"{study.n_beating} of {len(study.heads)} heads beat the binding baseline ({name}, {value:.3f} on the "
                f"balanced set) by the test above.")
    if not study.n_balanced:
        return "No balanced set, so no claim: attention alone does not show a coreference head here."
    return (f"No head beats the binding baseline ({name}, {value:.3f} on the balanced set): attention alone does "
            "not show a coreference head here.")


def subsets_section(study: CorefStudy) -> list[str]:
    """Each baseline and the best head on every subset, the balanced set and all prompts."""
    table = study.subsets
    if table is None or table.empty:
        return []
    names = [c for c in table.columns if c not in ("subset", "n_prompts", "n_groups", "best_head",
                                                    "best_head_accuracy", "best_head_ci_low", "best_head_ci_high")]
    lines = ["", "## Baselines and the best head per subset", "",
             "| subset | prompts | twin groups | " + " | ".join(names) + " | best head [95% CI] |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for _, r in table.iterrows():
        best = (f"{r.best_head} {r.best_head_accuracy:.3f} [{r.best_head_ci_low:.3f}, {r.best_head_ci_high:.3f}]"
                if r.best_head else "-")
        lines.append(f"| {r.subset} | {r.n_prompts} | {r.n_groups} | "
                     + " | ".join(f"{r[n]:.3f}" for n in names) + f" | {best} |")
    lines += ["", "The gender stereotype picks the candidate whose occupation is stereotyped with the pronoun's "
                  "gender (WinoBias's occupation lists; WinoGender's share of women in the occupation, US labour "
                  "statistics; a coin where the data gives none, as for 'they')." if "gender stereotype" in names
              else "The data gives no gender stereotype for these prompts, so there is no stereotype baseline."]
    lines += ["", f"A subset's best head is picked on that subset out of {len(study.heads)}, so its interval is "
                  "optimistic (no correction for the choice): it shows where to look, not a claim."]
    top = study.top_heads
    subset_cols = [c for c in study.heads.columns if c.startswith("acc_")]
    if subset_cols:
        lines += ["", "The top heads per subset:", "",
                  "| head | " + " | ".join(c.removeprefix("acc_") for c in subset_cols) + " |",
                  "|---|" + "---|" * len(subset_cols)]
        lines += [f"| {head_label(int(r.layer), int(r['head']))} | " + " | ".join(f"{r[c]:.3f}" for c in subset_cols)
                  + " |" for _, r in top.iterrows()]
    return lines


def mention_section(study: CorefStudy) -> list[str]:
    """The mention convention as a choice: the other convention's result beside this one's."""
    other = f"accuracy_{study.other_mention}"
    if other not in study.heads.columns:
        return []
    shift = (study.heads[other] - study.heads.accuracy).abs()
    worst = study.heads.loc[shift.idxmax()]
    best_other = study.heads.loc[study.heads[other].idxmax()]
    return ["", "## The mention convention", "",
            f"This report sums attention over each candidate's {'annotated span' if study.mention == 'span' else 'head word'} "
            f"(`--mention {study.mention}`). Over {'its head word' if study.mention == 'span' else 'the annotated span'} "
            f"instead (`--mention {study.other_mention}`), per-head accuracy over all prompts moves by up to "
            f"{shift.max():.3f} ({head_label(int(worst.layer), int(worst['head']))}: {worst.accuracy:.3f} -> "
            f"{worst[other]:.3f}; mean {shift.mean():.3f}), and the best head there is "
            f"{head_label(int(best_other.layer), int(best_other['head']))} at {best_other[other]:.3f} (here "
            f"{study.heads.accuracy.max():.3f}). The convention is a choice, and the numbers depend on it."
            + sink_caution(study)]


def sink_caution(study: CorefStudy) -> str:
    sink = study.caution(FirstTokenInMention)
    if sink is None:
        return ""
    return (f" Caution: in {sink.n_prompts} of {sink.of} prompts a candidate's mention holds the sequence's first "
            "token, where a decoder's heads park attention they do not need (an attention sink); summed over the "
            "span, that favours the candidate for a reason that is not coreference"
            + (", so the head-word convention is the fairer one here." if study.mention == "span" else "."))


def answers_section(study: CorefStudy) -> list[str]:
    """The decoder's own answer to the question asked after every prompt (none: no section)."""
    a = study.answers
    if a is None:
        return []
    table = a.table
    example = table.iloc[0]
    rows = [f"| accuracy, all prompts (antecedent more probable) | {a.accuracy:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}] |"]
    if a.balanced is not None:
        rows.append(f"| accuracy, balanced set | {a.balanced[0]:.3f} [{a.balanced[1]:.3f}, {a.balanced[2]:.3f}] "
                    f"(against {study.binding[0]}: p {a.p_value:.3g}) |")
    rows += [f"| accuracy, {name} | {value:.3f} |" for name, value in a.subsets.items()]
    return ["", "## The model's answer", "",
            f"After each prompt the model reads the question `{a.question}` (here: `{example.question}`) and scores "
            f"each candidate's continuation (` {example.gold}` vs ` {example.other}`: a definite reference to each "
            "mention) by the sum of its tokens' log-probabilities; it answers the more probable one. Tokens both "
            "continuations start with (such as ` the`) add the same to both, so only the difference counts.", "",
            "| measure | value |", "|---|---|", *rows,
            f"| mean log-prob difference antecedent - other (nats) | {a.mean_difference:+.3f} |",
            f"| prompts | {a.n_prompts} |", "",
            answers_verdict(study), "",
            "Per prompt: [answers.csv](answers.csv) (question, both candidates, their log-probabilities, the "
            "difference). This answer is what the ablation, patching and mediation below measure."]


def answers_verdict(study: CorefStudy) -> str:
    """The answer's interval on the balanced set against the binding baseline (and chance)."""
    a = study.answers
    name, value = study.binding
    if a.balanced is None or study.n_balanced < MIN_PROMPTS_FOR_CLAIMS:
        return (f"Only {study.n_balanced} balanced prompts: too few to compare the answer with the baselines (at "
                f"least {MIN_PROMPTS_FOR_CLAIMS}).")
    acc, lo, hi = a.balanced

    def against(v: float) -> str:
        if lo > v:
            return "above it with its whole interval"
        if hi < v:
            return "below it with its whole interval"
        return "not distinguishable from it (the interval includes it)"

    return (f"On the balanced set, against the binding baseline ({name}, {value:.3f}) the answer is {against(value)}; "
            f"against chance (0.500) it is {against(0.5)}.")


def probe_section(study: CorefStudy) -> list[str]:
    lines = ["", "## Antecedent probes", ""]
    if study.probes is None:
        return lines + [f"Not run: {study.probes_not_run}."]
    lines += [f"A logistic-regression probe per layer reads, from the {study.query.removesuffix('_span')}'s "
              "representation (`resid_post`, mean over its tokens), whether the antecedent is the first or "
              "second mention. Control task (Hewitt & Liang): a random answer per (pronoun, candidates) word "
              "combination.", "", "| layer | test acc | majority | control | selectivity |", "|---|---|---|---|---|"]
    lines += [f"| {int(r.layer)} | {r.test_acc:.3f} | {r.majority_baseline:.3f} | {r.control_test_acc:.3f} | "
              f"{r.selectivity:.3f} |" for _, r in study.probes.iterrows()]
    layer0 = study.caution(LayerZeroProbe)
    if layer0 is not None:
        lines += ["", f"Caution: layer 0 already reads most of it ({layer0.layer0_acc:.3f} of the best "
                      f"{layer0.best_acc:.3f}). At layer 0 the pronoun has seen the sentence through one attention "
                      "layer only, so surface cues (pronoun form and case, the sentence template) may carry much of "
                      "the answer: high probe accuracy here is weak evidence of coreference resolution."]
    return lines


def interventions_not_run(reason: str) -> str:
    if reason == NO_MODEL:
        return ("Attention-based claims need intervention to confirm them: run `probe coref RUN --model MODEL` (the "
                "model the run was recorded with) to ablate and patch the heads.")
    return f"No interventions: {reason}."


def ablation_section(study: CorefStudy) -> list[str]:
    """The named heads ablated together against random sets, then the per-head sweep."""
    s = study.ablation
    which = ("heads that beat the baselines" if study.n_beating
             else f"top {len(s.heads)} heads by accuracy (none beat the baselines)")
    if s.held_out:
        on = (f"(reference: the {s.n_train} train prompts), measured by {s.measure} on {s.n_held_out} held-out "
              "prompts:")
    else:  # nothing is fitted, so nothing is held out
        on = (f"(reference: the mean over the same {s.n_train} prompts), measured by {s.measure} on all "
              f"{s.n_held_out} prompts:")
    lines = ["", "## Ablation", "",
             f"The {which} ({heads_text(s.heads)}) mean-ablated together {on}", "",
             "| condition | accuracy |", "|---|---|",
             f"| clean | {s.clean:.3f} |", f"| these heads mean-ablated | {s.mean_ablated:.3f} |",
             f"| these heads zero-ablated | {s.zero_ablated:.3f} |"]
    only = f"; only {s.n_random_sets} distinct sets exist" if s.n_random_sets <= s.n_random else ""
    kind = "other heads of the same layers" if s.same_layers else "other heads (too few in those layers for sets of the same layers)"
    draws = f"{len(s.heads)} random {kind} mean-ablated ({s.n_random} draws{only})"
    if s.logit_diff is not None:
        d = s.logit_diff
        lines.append(f"| {d.name} antecedent - other: clean / mean-ablated / zero-ablated | "
                     f"{d.clean:.2f} / {d.mean_ablated:.2f} / {d.zero_ablated:.2f} |")
        if d.random_mean is not None:
            lines.append(f"| {d.name}, {draws} | mean {d.random_mean:.2f}, range [{d.random_min:.2f}, "
                         f"{d.random_max:.2f}] |")
    lines += [f"| {draws} | mean {s.random_mean:.3f}, range [{s.random_min:.3f}, {s.random_max:.3f}] |", "",
              ablation_verdict(s, study.n_prompts), "",
              f"Per-head sweep ({sweep_metric(study)}): [ablation.html](ablation.html) (table "
              f"`analyses/{sweep_name(study)}.csv`; "
              "`probe ablate --run RUN --metric antecedent-score` asks instead which earlier heads feed the "
              "named heads' attention)."]
    near = study.caution(NearMajority)
    if near is not None:
        lines.append(f"Caution: on clean prompts the measure ({near.clean:.3f}) is barely above the majority "
                     f"baseline ({near.majority:.3f}), so no ablation can show a large drop here.")
    sweep = study.ablation_sweep
    if s.metric_layer is None and s.logit_diff is not None:
        lines.append("The measure is the model's own output, so every head can move it.")
    elif s.metric_layer is not None:  # heads after the layer the probe reads cannot change it: effect 0 by construction, no evidence
        lines.append(f"The probe reads layer {s.metric_layer}: heads of later layers cannot change it, so they are "
                     "not measurable with this metric and are left out below.")
        sweep = sweep[sweep.layer <= s.metric_layer]
    largest = sweep.sort_values("effect").head(3)
    lines.append("Largest drops from one head: " + ", ".join(
        f"{head_label(int(r.layer), int(r['head']))} {r.effect:+.3f}" for _, r in largest.iterrows()) + ".")
    return lines


def sweep_metric(study: CorefStudy) -> str:
    """What the per-head sweep measures (its ``metric`` column; else the ablation's measure)."""
    sweep = study.ablation_sweep
    return str(sweep.metric.iloc[0]) if "metric" in sweep.columns else study.ablation.measure


def ablation_verdict(s: AblationSummary, n_prompts: int = MIN_PROMPTS_FOR_CLAIMS) -> str:
    unseen = [h for h in s.heads if not s.measurable(h[0])]
    if len(unseen) == len(s.heads):
        return (f"Not measurable with this metric: every one of these heads sits after layer {s.metric_layer}, "
                "which the probe reads, so ablating them cannot change it (this is no evidence either way).")
    note = (f" ({heads_text(unseen)}: not measurable with this metric, after layer {s.metric_layer}, which the probe "
            "reads.)" if unseen else "")
    few = (f" Only {n_prompts} prompts: too few to claim either way." if n_prompts < MIN_PROMPTS_FOR_CLAIMS else "")
    return _ablation_verdict(s) + difference_verdict(s) + note + few


def difference_verdict(s: AblationSummary) -> str:
    """Where the model answers: the same comparison by the mean difference (continuous, so a
    partial effect shows where the accuracy does not move)."""
    d = s.logit_diff
    if d is None or d.random_min is None or s.few_random_sets:
        return ""
    where = ("below every random set" if d.mean_ablated < d.random_min
             else "above every random set" if d.mean_ablated > d.random_max else "within the random sets' range")
    return (f" By the {d.name}: {d.clean:.2f} clean, {d.mean_ablated:.2f} with them mean-ablated, {where} "
            f"([{d.random_min:.2f}, {d.random_max:.2f}]).")


def _ablation_verdict(s: AblationSummary) -> str:
    if s.few_random_sets:
        return (f"Ablating them changes accuracy by {-s.drop:+.3f}. This model has only {s.n_random_sets} other "
                f"set(s) of {len(s.heads)} heads, so the random-heads comparison says little here.")
    if s.beats_random:
        return (f"Ablating them lowers accuracy by {s.drop:.3f}, more than any random set of as many heads: "
                "they matter.")
    return (f"Ablating them changes accuracy by {-s.drop:+.3f}, no more than some random set of as many heads: "
            "no evidence that they matter.")


def patching_section(study: CorefStudy) -> list[str]:
    lines = ["", "## Patching", ""]
    if study.patching_not_run == NO_TWIN_PAIRS:
        return lines + ["No twin prompts (same `pair_id`, different antecedent, same token length) in this run, so "
                        "nothing to patch; the seed set and toy-coref-test have them."]
    if study.patching_not_run is not None:
        return lines + [f"Not run: {study.patching_not_run}."]
    heads = study.patch_heads
    restoring = heads.sort_values("normalized", ascending=False).head(3)

    def restored(layer: int, head: int) -> str:
        if study.ablation is not None and not study.ablation.measurable(layer):
            return "not measurable (after the probe's layer)"
        return f"{heads[(heads.layer == layer) & (heads['head'] == head)].normalized.iloc[0]:.2f}"

    return lines + [
        f"{int(heads.n_pairs.iloc[0])} twin pair(s) (clean -> corrupted, denoising), metric: the "
        f"{heads.metric.iloc[0]} between the clean antecedent and the other candidate (clean "
        f"{heads.clean.iloc[0]:.2f}, corrupted {heads.corrupt.iloc[0]:.2f}); normalised (patched - corrupt) / "
        "(clean - corrupt).", "",
        "Heads whose clean output restores most: " + ", ".join(
            f"{head_label(int(r.layer), int(r['head']))} {r.normalized:.2f}" for _, r in restoring.iterrows())
        + "; the study's heads: " + ", ".join(
            f"{head_label(la, h)} {restored(la, h)}" for la, h in study.named_heads) + ".", "",
        "Residual stream per [layer, position]: [patching.html](patching.html); tables "
        "`analyses/patch_heads_antecedent.csv`, `analyses/patch_resid_antecedent.csv`."]


def mediation_section(study: CorefStudy) -> list[str]:
    """Per-head causal mediation of the twin intervention (decoders), against the heads attention names."""
    if study.answers is None:
        return []
    lines = ["", "## Causal mediation (Vig et al. 2020)", ""]
    m = study.mediation
    if m is None:
        reason = study.mediation_not_run or NO_MEDIATION_PAIRS
        return lines + [f"Not run: {reason}."]
    table = m.table
    top = table.reindex(table.nie.abs().sort_values(ascending=False).index).head(study.top)
    named = set(study.named_heads)
    by_nie = {(int(r.layer), int(r["head"])) for _, r in top.iterrows()}
    agree, attention_only = sorted(named & by_nie), sorted(named - by_nie)
    lines += [f"{m.n_pairs} twin pairs x -> x' with the same antecedent and another pronoun (x: the twin whose gender "
              "stereotype agrees with the antecedent, where the data says). The outcome y is the model's log-prob "
              f"difference antecedent - other after the question. Total effect TE = y(x') - y(x) = "
              f"{m.total_effect:+.3f} nats {te_interval(m)} (y(x) {m.y_base:+.3f}, y(x') {m.y_intervened:+.3f}). "
              "Per head: natural "
              "indirect effect NIE = y(x, the head's output as under x') - y(x); natural direct effect NDE = y(x', "
              "the head's output held as under x) - y(x).", "",
              "| head | NIE | NIE / TE | NDE |", "|---|---|---|---|"]
    lines += [f"| {head_label(int(r.layer), int(r['head']))} | {r.nie:+.3f} | {r.nie_share:+.2f} | {r.nde:+.3f} |"
              for _, r in top.iterrows()]
    lines += ["", f"The heads attention names ({heads_text(study.named_heads)}) against the {study.top} with the "
                  f"largest |NIE|: " + (f"both name {heads_text(agree)}" if agree else "no head in common")
              + (f"; attention alone names {heads_text(attention_only)}" if attention_only else "") + ". "
              + ("Attention to the antecedent and mediation of the pronoun's effect on the answer pick different "
                 "heads." if not agree else "Where they agree, a head both attends to the antecedent and carries "
                 "the twin's effect to the answer."),
              "", "Figure: [mediation.html](mediation.html) (NIE per head); table: [mediation.csv](mediation.csv)."]
    return lines


def te_interval(m) -> str:
    """'[-0.9, -0.2], sign-flip p 0.003 over 23 pairs' (nothing where the pairs are not known)."""
    if not m.pair_effects:
        return ""
    low, high = m.total_effect_ci()
    return f"[{low:+.3f}, {high:+.3f}], two-sided sign-flip p {m.total_effect_p():.3g} over the {m.n_pairs} pairs"
