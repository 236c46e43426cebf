"""The coreference study: which heads link a pronoun to its antecedent?

For every prompt with gold labels (``pronoun_span``, ``candidate_spans`` of the two
candidate mentions, ``answer`` = index of the antecedent among them, as the bundled seed and
WinoBias sets carry), and every head, the head's attention from the pronoun to each
candidate is aggregated as Clark et al. (2019) do (sum over a mention's tokens, mean over
the pronoun's tokens); the head "chooses" the candidate that gets more. Reported per head:
accuracy with a 95% bootstrap interval over prompts, and the mean attention to the gold and
to the other candidate, against the baselines of always choosing the nearest mention, the
first mention, and chance. A head is said to beat the positional baselines only when the
lower end of its interval is above the better of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from probe.errors import InputError

from .run_checks import require_layer_hooks

REQUIRED = ("pronoun_span", "candidate_spans", "answer")
MIN_PROMPTS_FOR_CLAIMS = 20  # below this a bootstrap interval is too coarse to say a head beats a baseline


def candidate_attention(run, prompts: list[int] | None = None, query: str = "pronoun_span"
                        ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """attn [prompts, layers, heads, 2] (query span, the pronoun by default, -> each
    candidate), gold [prompts], and the prompt indices used (those with complete labels
    whose spans map to tokens)."""
    n_layers = run.config["n_layers"]
    require_layer_hooks(run, "attn.hook_pattern", "the coreference study's attention scores")
    prompts = list(range(run.n_prompts)) if prompts is None else prompts
    attn, gold, used = [], [], []
    for i in prompts:
        labels = run.labels(i)
        if any(k not in labels for k in REQUIRED) or query not in labels:
            continue
        q = run.tokens_in(i, *labels[query])
        cands = [run.tokens_in(i, *span) for span in labels["candidate_spans"]]
        if not q or any(not c for c in cands) or len(cands) != 2:
            continue
        per_layer = []
        for layer in range(n_layers):
            p = run.pattern(i, layer)  # [head, q, k]
            per_layer.append(np.stack([p[:, q][:, :, c].sum(-1).mean(-1) for c in cands], -1))  # [head, 2]
        attn.append(np.stack(per_layer))
        gold.append(int(labels["answer"]))
        used.append(i)
    if not used:
        raise InputError(f"no prompt of this run has the labels the study needs ({', '.join(REQUIRED)}); "
                         "record the bundled 'seed' or 'winobias' sets, or a JSONL file with those fields")
    return np.stack(attn), np.asarray(gold), used


def bootstrap_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of the mean over axis 0 (prompts), for every trailing cell."""
    rng = np.random.default_rng(seed)
    n = correct.shape[0]
    idx = rng.integers(0, n, (n_boot, n))
    means = correct[idx].mean(1)  # [boot, ...]
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def positional_baselines(run, used: list[int], gold: np.ndarray) -> dict[str, float]:
    """Accuracy of always choosing the nearest mention before the pronoun (else the nearest
    one), the first mention, and chance."""
    nearest, first = [], []
    for i, g in zip(used, gold):
        labels = run.labels(i)
        p0 = labels["pronoun_span"][0]
        starts = [span[0] for span in labels["candidate_spans"]]
        before = [j for j, s in enumerate(starts) if s < p0]
        pool = before or [0, 1]
        near = max(pool, key=lambda j: starts[j]) if before else min(pool, key=lambda j: abs(starts[j] - p0))
        nearest.append(near == g)
        first.append(int(np.argmin(starts)) == g)
    return {"nearest mention": float(np.mean(nearest)), "first mention": float(np.mean(first)), "chance": 0.5}


def coref_heads(run, seed: int = 0, query: str = "pronoun_span") -> tuple[pd.DataFrame, dict[str, float], int]:
    """Per-head antecedent accuracy table, the baselines, and the number of prompts."""
    attn, gold, used = candidate_attention(run, query=query)
    choice = attn.argmax(-1)  # [n, L, H]
    correct = (choice == gold[:, None, None]).astype(float)
    lo, hi = bootstrap_ci(correct, seed=seed)
    base = positional_baselines(run, used, gold)
    best_positional = max(base["nearest mention"], base["first mention"])
    g = gold[:, None, None]
    gold_attn = np.take_along_axis(attn, g[..., None].repeat(attn.shape[2], 2), -1)[..., 0]
    other_attn = np.take_along_axis(attn, (1 - g)[..., None].repeat(attn.shape[2], 2), -1)[..., 0]
    rows = []
    L, H = correct.shape[1:]
    for layer in range(L):
        for head in range(H):
            rows.append({"layer": layer, "head": head, "accuracy": correct[:, layer, head].mean(),
                         "ci_low": lo[layer, head], "ci_high": hi[layer, head],
                         "attn_gold": gold_attn[:, layer, head].mean(), "attn_other": other_attn[:, layer, head].mean(),
                         "beats_positional": bool(lo[layer, head] > best_positional
                                                  and len(used) >= MIN_PROMPTS_FOR_CLAIMS)})
    return pd.DataFrame(rows), base, len(used)


def heatmap_html(grid: np.ndarray, x: list[str], y: list[str], title: str, path: Path, zmid: float | None = None,
                 colorbar: str = "") -> None:
    """A [rows, cols] heatmap as a standalone HTML figure."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Heatmap(z=grid, x=x, y=y, colorscale="RdBu", zmid=zmid, colorbar={"title": colorbar}))
    fig.update_layout(title=title, yaxis={"autorange": "reversed"})
    # "directory": plotly.min.js is written once beside the figures, so the report opens offline
    fig.write_html(path, include_plotlyjs="directory")


def write_report(run, out_dir: str | Path | None = None, seed: int = 0, top: int = 5,
                 query: str = "pronoun_span", model=None) -> Path:
    """Run the study and write RUN/analyses/coref/{coref_heads.csv, heads.html, report.md}.
    With resid_post recorded, antecedent probes per layer are added; with ``model`` (the one
    the run was recorded with), the heads are ablated and patched (``coref_interventions``)."""
    table, base, n = coref_heads(run, seed, query)
    out = Path(out_dir) if out_dir else Path(run.path) / "analyses" / "coref"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "coref_heads.csv", index=False)
    L, H = table.layer.max() + 1, table["head"].max() + 1
    heads_x, layers_y = [f"H{h}" for h in range(H)], [f"L{layer}" for layer in range(L)]
    heatmap_html(table.accuracy.to_numpy().reshape(L, H), heads_x, layers_y,
                 f"Antecedent accuracy per head ({n} prompts; colour centre = best positional baseline)",
                 out / "heads.html", max(base["nearest mention"], base["first mention"]), "accuracy")
    best_positional = max(base["nearest mention"], base["first mention"])
    best = table.sort_values("accuracy", ascending=False).head(top)
    lines = [f"# Coreference study: {run.model_name}", "",
             f"{n} prompts with gold antecedents from `{run.path}`. For each head, attention from the "
             f"{query.removesuffix('_span')} to "
             "each candidate (sum over a mention's tokens, mean over the pronoun's tokens); the head picks the "
             "candidate it attends to more. 95% bootstrap intervals over prompts.", "",
             "| baseline | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in base.items()]
    lines += ["", f"Top {top} heads:", "", "| head | accuracy | 95% CI | attn to gold | attn to other | verdict |",
              "|---|---|---|---|---|---|"]
    for _, r in best.iterrows():
        verdict = ("better than the positional baselines" if r.beats_positional
                   else "no better than a positional baseline")
        lines.append(f"| L{int(r.layer)}H{int(r['head'])} | {r.accuracy:.3f} | [{r.ci_low:.3f}, {r.ci_high:.3f}] | "
                     f"{r.attn_gold:.3f} | {r.attn_other:.3f} | {verdict} |")
    n_beat = int(table.beats_positional.sum())
    if n < MIN_PROMPTS_FOR_CLAIMS:
        lines += ["", f"Only {n} prompts: too few to claim that any head beats the baselines; record more "
                      "(e.g. the bundled winobias set)."]
    lines += ["", (f"{n_beat} of {len(table)} heads beat the better positional baseline ({best_positional:.3f}) "
                   "with their whole interval." if n_beat else
                   f"No head beats the better positional baseline ({best_positional:.3f}): attention alone does "
                   "not show a coreference head here."),
              "", "Figure: [heads.html](heads.html) (heatmap of per-head accuracy); table: "
              "[coref_heads.csv](coref_heads.csv)."]
    probes = _probe_section(run, query, seed, lines)
    if model is None:
        lines += ["", "Attention-based claims need intervention to confirm them: run `probe coref RUN --model "
                      "MODEL` (the model the run was recorded with) to ablate and patch the heads."]
    elif probes is None or n < MIN_PROMPTS_FOR_CLAIMS:
        lines += ["", "No interventions: they are measured with the antecedent probe, which needs "
                      f"`blocks.*.hook_resid_post` recorded and at least {MIN_PROMPTS_FOR_CLAIMS} prompts."]
    else:
        named = [(int(r.layer), int(r["head"])) for _, r in table[table.beats_positional].sort_values(
            "accuracy", ascending=False).head(top).iterrows()]
        if not named:
            named = [(int(r.layer), int(r["head"])) for _, r in best.iterrows()]
        _intervention_section(model, run, table, named, bool(n_beat), probes, query, seed, out, lines,
                              heads_x, layers_y)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def _probe_section(run, query: str, seed: int, lines: list[str]) -> pd.DataFrame | None:
    """Antecedent probes per layer from the query's representation (saved as
    probes_antecedent.csv next to the run); None when the run lacks resid_post."""
    from .probe_features import antecedent_features
    from .probes import layer_probes
    from .results import save_result

    n_layers = run.config["n_layers"]
    if any(f"blocks.{layer}.hook_resid_post" not in run.hooks for layer in range(n_layers)):
        lines += ["", "## Antecedent probes", "", "Not run: record `blocks.*.hook_resid_post` too "
                  "(`probe record ... --names 'blocks.*.attn.hook_pattern' 'blocks.*.hook_resid_post'`)."]
        return None
    feats, labels, prompt_of, types = antecedent_features(run, range(n_layers), query=query)
    if len(np.unique(prompt_of)) < 10 or len(np.unique(labels)) < 2:
        lines += ["", "## Antecedent probes", "", f"Not run: {len(np.unique(prompt_of))} labelled prompts or twin pairs "
                  "(at least 10, with both answers, are needed)."]
        return None
    probes = layer_probes(feats, labels, prompt_of, types=types, seed=seed)
    save_result(run.path, "probes_antecedent" + ("" if query == "pronoun_span" else f"_{query}"), probes)
    lines += ["", "## Antecedent probes", "",
              f"A logistic-regression probe per layer reads, from the {query.removesuffix('_span')}'s "
              "representation (`resid_post`, mean over its tokens), whether the antecedent is the first or "
              "second mention. Control task (Hewitt & Liang): a random answer per (pronoun, candidates) word "
              "combination.", "", "| layer | test acc | majority | control | selectivity |", "|---|---|---|---|---|"]
    lines += [f"| {int(r.layer)} | {r.test_acc:.3f} | {r.majority_baseline:.3f} | {r.control_test_acc:.3f} | "
              f"{r.selectivity:.3f} |" for _, r in probes.iterrows()]
    majority, first, best = probes.majority_baseline.iloc[0], probes.test_acc.iloc[0], probes.test_acc.max()
    if best > majority + 0.1 and first - majority >= 0.75 * (best - majority):
        lines += ["", f"Caution: layer 0 already reads most of it ({first:.3f} of the best {best:.3f}). At layer 0 the "
                  "pronoun has seen the sentence through one attention layer only, so surface cues (pronoun form "
                  "and case, the sentence template) may carry much of the answer: high probe accuracy here is "
                  "weak evidence of coreference resolution."]
    return probes


def _intervention_section(model, run, table: pd.DataFrame, named: list[tuple[int, int]], beat: bool,
                          probes: pd.DataFrame, query: str, seed: int, out: Path, lines: list[str],
                          heads_x: list[str], layers_y: list[str]) -> None:
    from .coref_interventions import (
        ablation_setup,
        ablation_tests,
        check_model_matches,
        fit_antecedent_probe,
        patching_tests,
        sweep,
        twin_pairs,
    )
    from .results import save_result

    check_model_matches(model, run)
    _, _, used = candidate_attention(run, query=query)
    layer = int(probes.sort_values(["dev_acc", "layer"], ascending=[False, False]).layer.iloc[0])
    setup = ablation_setup(model, run, used, layer, query, seed)
    summary = ablation_tests(model, setup, named, seed)
    sweep_probe = sweep(model, setup)
    save_result(run.path, "ablation_accuracy", sweep_probe)
    L, H = len(layers_y), len(heads_x)
    heatmap_html(sweep_probe.effect.to_numpy().reshape(L, H), heads_x, layers_y,
                 f"Change in {summary['measure']} when each head is mean-ablated ({summary['n_held_out']} "
                 "held-out prompts)", out / "ablation.html", 0.0, "effect")
    names = ", ".join(f"L{la}H{h}" for la, h in named)
    drop = summary["clean"] - summary["ablated"]
    matters = summary["ablated"] < summary["random_min"]
    lines += ["", "## Ablation", "",
              f"The {'heads that beat the baselines' if beat else f'top {len(named)} heads by accuracy (none beat the baselines)'}"
              f" ({names}) mean-ablated together (reference: the {summary['n_train']} train prompts), measured by "
              f"{summary['measure']} on {summary['n_held_out']} held-out prompts:", "",
              "| condition | accuracy |", "|---|---|",
              f"| clean | {summary['clean']:.3f} |", f"| these heads mean-ablated | {summary['ablated']:.3f} |",
              f"| these heads zero-ablated | {summary['zero_ablated']:.3f} |",
              *([f"| logit difference antecedent - other: clean / mean-ablated / zero-ablated | "
                 f"{summary['clean_logit_diff']:.2f} / {summary['ablated_logit_diff']:.2f} / "
                 f"{summary['zero_ablated_logit_diff']:.2f} |"] if "clean_logit_diff" in summary else []),
              f"| {len(named)} random other heads mean-ablated ({summary['n_random']} draws"
              + (f"; only {summary['n_random_sets']} distinct sets exist" if summary["n_random_sets"] <= summary["n_random"]
                 else "") + f") | mean {summary['random_mean']:.3f}, range [{summary['random_min']:.3f}, "
              f"{summary['random_max']:.3f}] |", "",
              (f"Ablating them changes accuracy by {-drop:+.3f}. This model has only {summary['n_random_sets']} "
               f"other set(s) of {len(named)} heads, so the random-heads comparison says little here."
               if summary["n_random_sets"] < summary["n_random"] else
               f"Ablating them lowers accuracy by {drop:.3f}, more than any random set of as many heads: "
               "they matter." if matters else
               f"Ablating them changes accuracy by {-drop:+.3f}, no more than some random set of as many heads: "
               "no evidence that they matter."), "",
              "Per-head sweep: [ablation.html](ablation.html) (table `analyses/ablation_accuracy.csv`; "
              "`probe ablate --run RUN --metric antecedent-score` asks instead which earlier heads feed the "
              "named heads' attention)."]
    majority = float(probes.majority_baseline.iloc[0])
    if summary["clean"] <= majority + 0.05:
        lines.append(f"Caution: on clean prompts the measure ({summary['clean']:.3f}) is barely above the majority "
                     f"baseline ({majority:.3f}), so no ablation can show a large drop here.")
    top_sweep = sweep_probe.sort_values("effect").head(3)
    lines.append("Largest drops from one head: " + ", ".join(
        f"L{int(r.layer)}H{int(r['head'])} {r.effect:+.3f}" for _, r in top_sweep.iterrows()) + ".")
    pairs = twin_pairs(run, used)
    lines += ["", "## Patching", ""]
    if not pairs:
        lines.append("No twin prompts (same `pair_id`, different antecedent, same token length) in this run, so "
                     "nothing to patch; the seed set and toy-coref-test have them.")
        return
    probe = fit_antecedent_probe(run, used, layer, query)
    try:
        heads, resid = patching_tests(model, run, pairs, probe, query)
    except ValueError as e:  # e.g. the probe scores the twins the same: nothing to normalise
        lines.append(f"Not run: {e}.")
        return
    save_result(run.path, "patch_heads_antecedent", heads)
    save_result(run.path, "patch_resid_antecedent", resid)
    grid = resid.pivot(index="layer", columns="position", values="normalized")
    heatmap_html(grid.to_numpy(), [f"{p}:{t}" for p, t in resid.drop_duplicates("position")[["position", "token"]]
                                   .itertuples(index=False)], layers_y,
                 "Denoising patch of resid_pre per [layer, position] (normalised)", out / "patching.html", 0.0,
                 "normalised")
    best_heads = heads.sort_values("normalized", ascending=False).head(3)
    lines += [f"{int(heads.n_pairs.iloc[0])} twin pair(s) (clean -> corrupted, denoising), metric: the "
              f"{heads.metric.iloc[0]} between the clean antecedent and the other candidate (clean {heads.clean.iloc[0]:.2f}, corrupted "
              f"{heads.corrupt.iloc[0]:.2f}); normalised (patched - corrupt) / (clean - corrupt).", "",
              "Heads whose clean output restores most: " + ", ".join(
                  f"L{int(r.layer)}H{int(r['head'])} {r.normalized:.2f}" for _, r in best_heads.iterrows()) + "; "
              "the study's heads: " + ", ".join(
                  f"L{la}H{h} {heads[(heads.layer == la) & (heads['head'] == h)].normalized.iloc[0]:.2f}"
                  for la, h in named) + ".", "",
              "Residual stream per [layer, position]: [patching.html](patching.html); tables "
              "`analyses/patch_heads_antecedent.csv`, `analyses/patch_resid_antecedent.csv`."]
