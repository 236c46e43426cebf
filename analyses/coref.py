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

from models import InputError

REQUIRED = ("pronoun_span", "candidate_spans", "answer")
MIN_PROMPTS_FOR_CLAIMS = 20  # below this a bootstrap interval is too coarse to say a head beats a baseline


def candidate_attention(run, prompts: list[int] | None = None, query: str = "pronoun_span"
                        ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """attn [prompts, layers, heads, 2] (query span, the pronoun by default, -> each
    candidate), gold [prompts], and the prompt indices used (those with complete labels
    whose spans map to tokens)."""
    n_layers = run.config["n_layers"]
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


def write_report(run, out_dir: str | Path | None = None, seed: int = 0, top: int = 5,
                 query: str = "pronoun_span") -> Path:
    """Run the study and write RUN/analyses/coref/{coref_heads.csv, heads.html, report.md}."""
    import plotly.graph_objects as go

    table, base, n = coref_heads(run, seed, query)
    out = Path(out_dir) if out_dir else Path(run.path) / "analyses" / "coref"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "coref_heads.csv", index=False)
    L, H = table.layer.max() + 1, table["head"].max() + 1
    grid = table.accuracy.to_numpy().reshape(L, H)
    fig = go.Figure(go.Heatmap(z=grid, x=[f"H{h}" for h in range(H)], y=[f"L{layer}" for layer in range(L)],
                               colorscale="RdBu", zmid=max(base["nearest mention"], base["first mention"]),
                               colorbar={"title": "accuracy"}))
    fig.update_layout(title=f"Antecedent accuracy per head ({n} prompts; colour centre = best positional baseline)",
                      yaxis={"autorange": "reversed"})
    fig.write_html(out / "heads.html", include_plotlyjs="cdn")
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
              "", "Attention-based claims need intervention to confirm them (ablation, patching: "
              "`probe ablate`, analyses/patching.py).", "",
              "Figure: [heads.html](heads.html) (heatmap of per-head accuracy); table: "
              "[coref_heads.csv](coref_heads.csv)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
