"""The coreference study in words: `render_report` turns a `CorefStudy` into the markdown of
RUN/analyses/coref/report.md. Pure formatting: every number comes from the study, nothing is
computed or written here (`analyses.coref.coref_study` computes, `save_study` writes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.head_labels import head_label, heads_text

from .coref import (
    MIN_PROMPTS_FOR_CLAIMS,
    NO_MODEL,
    NO_TWIN_PAIRS,
    CorefStudy,
    LayerZeroProbe,
    NearMajority,
    TooFewPrompts,
    sweep_name,
)

if TYPE_CHECKING:
    from .coref_interventions import AblationSummary


def render_report(study: CorefStudy) -> str:
    """The study's report (markdown, ending in a newline)."""
    lines = attention_section(study) + answers_section(study) + probe_section(study)
    if study.interventions_not_run is not None:
        lines += ["", interventions_not_run(study.interventions_not_run)]
    else:
        lines += ablation_section(study) + patching_section(study)
    return "\n".join(lines) + "\n"


def attention_section(study: CorefStudy) -> list[str]:
    """Title, what was measured, the baselines, the top heads with their verdicts."""
    lines = [f"# Coreference study: {study.model_name}", "",
             f"{study.n_prompts} prompts with gold antecedents from `{study.run_path}`. For each head, attention from "
             f"the {study.query.removesuffix('_span')} to "
             "each candidate (sum over a mention's tokens, mean over the pronoun's tokens); the head picks the "
             "candidate it attends to more. 95% bootstrap intervals over prompts.", "",
             "| baseline | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in study.baselines.items()]
    lines += ["", f"Top {study.top} heads:", "", "| head | accuracy | 95% CI | attn to gold | attn to other | verdict |",
              "|---|---|---|---|---|---|"]
    for _, r in study.top_heads.iterrows():
        verdict = ("better than the positional baselines" if r.beats_positional
                   else "no better than a positional baseline")
        lines.append(f"| {head_label(int(r.layer), int(r['head']))} | {r.accuracy:.3f} | "
                     f"[{r.ci_low:.3f}, {r.ci_high:.3f}] | {r.attn_gold:.3f} | {r.attn_other:.3f} | {verdict} |")
    few = study.caution(TooFewPrompts)
    if few is not None:
        lines += ["", f"Only {few.n_prompts} prompts: too few to claim that any head beats the baselines; record more "
                      "(e.g. the bundled winobias set)."]
    lines += ["", attention_verdict(study), "",
              "Figure: [heads.html](heads.html) (heatmap of per-head accuracy); table: "
              "[coref_heads.csv](coref_heads.csv)."]
    return lines


def attention_verdict(study: CorefStudy) -> str:
    if study.n_beating:
        return (f"{study.n_beating} of {len(study.heads)} heads beat the better positional baseline "
                f"({study.best_positional:.3f}) with their whole interval.")
    return (f"No head beats the better positional baseline ({study.best_positional:.3f}): attention alone does "
            "not show a coreference head here.")


def answers_section(study: CorefStudy) -> list[str]:
    """The decoder's own answer to the question asked after every prompt (none: no section)."""
    a = study.answers
    if a is None:
        return []
    table = a.table
    example = table.iloc[0]
    return ["", "## The model's answer", "",
            f"After each prompt the model reads the question `{a.question}` (here: `{example.question}`) and scores "
            f"each candidate's continuation (` {example.gold}` vs ` {example.other}`: a definite reference to each "
            "mention) by the sum of its tokens' log-probabilities; it answers the more probable one. Tokens both "
            "continuations start with (such as ` the`) add the same to both, so only the difference counts.", "",
            "| measure | value |", "|---|---|",
            f"| accuracy (antecedent more probable) | {a.accuracy:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}] |",
            f"| mean log-prob difference antecedent - other (nats) | {a.mean_difference:+.3f} |",
            f"| prompts | {a.n_prompts} |", "",
            answers_verdict(study), "",
            "Per prompt: [answers.csv](answers.csv) (question, both candidates, their log-probabilities, the "
            "difference). This answer is what the ablation and patching below measure."]


def answers_verdict(study: CorefStudy) -> str:
    """The answer's interval against chance and against the better positional baseline."""
    a = study.answers
    name = max(("nearest mention", "first mention"), key=lambda k: study.baselines[k])
    if a.n_prompts < MIN_PROMPTS_FOR_CLAIMS:
        return (f"Only {a.n_prompts} prompts: too few to compare the answer with chance (0.5) or the better "
                f"positional baseline ({name}, {study.best_positional:.3f}).")

    def against(value: float) -> str:
        if a.ci_low > value:
            return "above it with its whole interval"
        if a.ci_high < value:
            return "below it with its whole interval"
        return "not distinguishable from it (the interval includes it)"

    return (f"Against chance (0.500) the answer is {against(0.5)}; against the better positional baseline ({name}, "
            f"{study.best_positional:.3f}) it is {against(study.best_positional)}.")


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
    draws = f"{len(s.heads)} random other heads mean-ablated ({s.n_random} draws{only})"
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
