"""Per-head attention statistics over a recorded run (`probe heads RUN`).

Every metric is an average over the run's real query positions (padding is never stored),
computed from the recorded `hook_pattern` of each layer and the run's token ids:

- ``entropy``: -sum_k p log p of the query's attention distribution (nats).
- ``prev_token``: attention to the previous position, p[q, q-1] (queries q >= 1).
- ``first_token``: attention to position 0 ([CLS] for BERT, <bos> for decoders).
- ``self``: attention to the query's own position, p[q, q].
- ``duplicate_token``: attention to earlier positions holding the same token, over queries
  whose token occurred before.
- ``induction``: attention to positions right after an earlier occurrence of the query's
  token (k with token[k-1] == token[q], k <= q), over queries that have one. On repeated
  random tokens this is TransformerLens's induction pattern (q attends to q - len + 1).
- ``antecedent`` (only for runs whose prompts carry coreference labels, e.g. seed or
  WinoBias): attention mass from the pronoun to the gold antecedent minus the mass to the
  other candidate, aggregated as Clark et al. (2019) do (sum over a mention's tokens, mean
  over the pronoun's tokens), averaged over prompts. See analyses/coref.py for accuracies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("entropy", "prev_token", "first_token", "self", "duplicate_token", "induction")


def pattern_metrics(pattern: np.ndarray, tokens: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """Sums (per head) and counts of each metric for one prompt.

    pattern: [head, q, k]; tokens: [n]. Returns {metric: (sum over queries [head], n queries)}.
    """
    p = pattern.astype(np.float64)
    h, n, _ = p.shape
    out: dict[str, tuple[np.ndarray, int]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    out["entropy"] = (-plogp.sum(-1).sum(-1), n)
    idx = np.arange(n)
    out["prev_token"] = (p[:, idx[1:], idx[1:] - 1].sum(-1), n - 1)
    out["first_token"] = (p[:, :, 0].sum(-1), n)
    out["self"] = (p[:, idx, idx].sum(-1), n)
    same = tokens[:, None] == tokens[None, :]  # [q, k]
    earlier = idx[None, :] < idx[:, None]
    dup = same & earlier
    has_dup = dup.any(-1)
    out["duplicate_token"] = ((p * dup).sum(-1)[:, has_dup].sum(-1), int(has_dup.sum()))
    # induction targets: k >= 1 with tokens[k-1] == tokens[q] and k-1 < q
    after = np.zeros_like(same)
    after[:, 1:] = same[:, :-1] & (idx[None, :-1] < idx[:, None])
    has_ind = after.any(-1)
    out["induction"] = ((p * after).sum(-1)[:, has_ind].sum(-1), int(has_ind.sum()))
    return out


def head_metrics(run, prompts: list[int] | None = None) -> pd.DataFrame:
    """A tidy table, one row per (layer, head), one column per metric, over the run's
    published prompts (or the given ones)."""
    cfg = run.config
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    missing = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)
               if f"blocks.{layer}.attn.hook_pattern" not in run.hooks]
    if missing:
        raise KeyError(f"head metrics need attention patterns; this run lacks {missing[:3]}. Record them with "
                       "`probe record --names 'blocks.*.attn.hook_pattern' ...`")
    prompts = list(range(run.n_prompts)) if prompts is None else prompts
    sums = {m: np.zeros((n_layers, n_heads)) for m in METRICS}
    counts = {m: np.zeros(n_layers) for m in METRICS}
    for i in prompts:
        tokens = np.asarray(run.tokens(i))
        for layer in range(n_layers):
            for m, (s, c) in pattern_metrics(run.pattern(i, layer), tokens).items():
                sums[m][layer] += s
                counts[m][layer] += c
    antecedent = antecedent_scores(run, prompts)
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = {"layer": layer, "head": head}
            for m in METRICS:
                row[m] = sums[m][layer, head] / counts[m][layer] if counts[m][layer] else float("nan")
            if antecedent is not None:
                row["antecedent"] = antecedent[layer, head]
            rows.append(row)
    return pd.DataFrame(rows)


def antecedent_scores(run, prompts: list[int] | None = None) -> np.ndarray | None:
    """[layer, head] mean (gold - other) attention mass from the pronoun, or None when the
    run's prompts carry no coreference labels."""
    from models import InputError

    from .coref import candidate_attention

    try:
        attn, gold, _ = candidate_attention(run, prompts)
    except InputError:
        return None
    g = gold[:, None, None]
    gold_mass = np.where(g == 0, attn[..., 0], attn[..., 1])
    other_mass = np.where(g == 0, attn[..., 1], attn[..., 0])
    return (gold_mass - other_mass).mean(0)
