"""The coreference study in words: `render_report` turns a `CorefStudy` into the markdown of
RUN/analyses/coref/report.md. Pure formatting: every number comes from the study, nothing is
computed or written here (`analyses.coref.coref_study` computes, `save_study` writes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.head_labels import head_label, heads_text

from .coref import (
    NO_MODEL,
    NO_TWIN_PAIRS,
    CorefStudy,
    LayerZeroProbe,
    NearMajority,
    TooFewPrompts,
)

if TYPE_CHECKING:
    from .coref_interventions import AblationSummary


def render_report(study: CorefStudy) -> str:
    """The study's report (markdown, ending in a newline)."""
    lines = attention_section(study) + probe_section(study)
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
    lines = ["", "## Ablation", "",
             f"The {which} ({heads_text(s.heads)}) mean-ablated together (reference: the {s.n_train} train "
             f"prompts), measured by {s.measure} on {s.n_held_out} held-out prompts:", "",
             "| condition | accuracy |", "|---|---|",
             f"| clean | {s.clean:.3f} |", f"| these heads mean-ablated | {s.mean_ablated:.3f} |",
             f"| these heads zero-ablated | {s.zero_ablated:.3f} |"]
    if s.logit_diff is not None:
        d = s.logit_diff
        lines.append(f"| logit difference antecedent - other: clean / mean-ablated / zero-ablated | "
                     f"{d.clean:.2f} / {d.mean_ablated:.2f} / {d.zero_ablated:.2f} |")
    only = f"; only {s.n_random_sets} distinct sets exist" if s.n_random_sets <= s.n_random else ""
    lines += [f"| {len(s.heads)} random other heads mean-ablated ({s.n_random} draws{only}) | mean "
              f"{s.random_mean:.3f}, range [{s.random_min:.3f}, {s.random_max:.3f}] |", "",
              ablation_verdict(s), "",
              "Per-head sweep: [ablation.html](ablation.html) (table `analyses/ablation_accuracy.csv`; "
              "`probe ablate --run RUN --metric antecedent-score` asks instead which earlier heads feed the "
              "named heads' attention)."]
    near = study.caution(NearMajority)
    if near is not None:
        lines.append(f"Caution: on clean prompts the measure ({near.clean:.3f}) is barely above the majority "
                     f"baseline ({near.majority:.3f}), so no ablation can show a large drop here.")
    largest = study.ablation_sweep.sort_values("effect").head(3)
    lines.append("Largest drops from one head: " + ", ".join(
        f"{head_label(int(r.layer), int(r['head']))} {r.effect:+.3f}" for _, r in largest.iterrows()) + ".")
    return lines


def ablation_verdict(s: AblationSummary) -> str:
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

    def restored(layer: int, head: int) -> float:
        return heads[(heads.layer == layer) & (heads["head"] == head)].normalized.iloc[0]

    return lines + [
        f"{int(heads.n_pairs.iloc[0])} twin pair(s) (clean -> corrupted, denoising), metric: the "
        f"{heads.metric.iloc[0]} between the clean antecedent and the other candidate (clean "
        f"{heads.clean.iloc[0]:.2f}, corrupted {heads.corrupt.iloc[0]:.2f}); normalised (patched - corrupt) / "
        "(clean - corrupt).", "",
        "Heads whose clean output restores most: " + ", ".join(
            f"{head_label(int(r.layer), int(r['head']))} {r.normalized:.2f}" for _, r in restoring.iterrows())
        + "; the study's heads: " + ", ".join(
            f"{head_label(la, h)} {restored(la, h):.2f}" for la, h in study.named_heads) + ".", "",
        "Residual stream per [layer, position]: [patching.html](patching.html); tables "
        "`analyses/patch_heads_antecedent.csv`, `analyses/patch_resid_antecedent.csv`."]
