"""Per-head attention statistics over a recorded run (`probe heads RUN`).

Computed from the recorded `hook_pattern` of each layer and the run's token ids (padding is
never stored). ``entropy``, ``first_token`` and ``self`` average over every real query
position of the run; the detector scores (below) are per-prompt scores averaged over prompts:

- ``entropy``: -sum_k p log p of the query's attention distribution (nats).
- ``prev_token``: attention to the previous position, p[q, q-1].
- ``first_token``: attention to position 0 ([CLS] for BERT, <bos> for decoders).
- ``self``: attention to the query's own position, p[q, q].
- ``duplicate_token``: attention to earlier positions holding the same token.
- ``induction``: attention to positions right after an earlier occurrence of the query's
  token (k with token[k-1] == token[q], k <= q).

``prev_token``, ``duplicate_token`` and ``induction`` are exactly TransformerLens's head
detector (``transformer_lens.head_detector``, ``error_measure="mul"``): the attention that falls
on the detection pattern's cells over all attention (so over every query, including those with
no target), per prompt, then averaged over prompts as ``detect_head`` does for a list. A test
compares them with TransformerLens's own functions. ``induction_random`` (``random_repeat_scores``,
``probe heads`` adds it when it can load the run's model) is the induction score on repeated
random tokens, the input the detector's induction score is meant for.
- ``antecedent`` (only for runs whose prompts carry coreference labels, e.g. seed or
  WinoBias): attention mass from the pronoun to the gold antecedent minus the mass to the
  other candidate, aggregated as Clark et al. (2019) do (sum over a mention's tokens, mean
  over the pronoun's tokens), averaged over prompts. See analyses/coref.py for accuracies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .run_checks import require_layer_hooks

METRICS = ("entropy", "prev_token", "first_token", "self", "duplicate_token", "induction")


OPTIONAL = ("induction_random", "antecedent")  # present when a model, or gold antecedents, allow them
LOWER_IS_STRONGER = ("entropy",)  # a sharp head has low entropy; every other metric: higher is stronger


def ranked_metrics(table: pd.DataFrame) -> list[tuple[str, bool]]:
    """(metric, ascending) for every metric column of a head-metrics table, in report order:
    the order in which the heads most characterised by it come first."""
    return [(m, m in LOWER_IS_STRONGER) for m in (*METRICS, *OPTIONAL) if m in table.columns]


PER_PROMPT = ("prev_token", "duplicate_token", "induction")  # TransformerLens detector scores: a mean of prompts


def pattern_metrics(pattern: np.ndarray, tokens: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """Sums (per head) and counts of each metric for one prompt.

    pattern: [head, q, k]; tokens: [n]. Returns {metric: (sum [head], count)}: the sum over
    queries and the number of queries, or for the detector scores (``PER_PROMPT``) the
    prompt's score and 1.
    """
    p = pattern.astype(np.float64)
    h, n, _ = p.shape
    out: dict[str, tuple[np.ndarray, int]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    out["entropy"] = (-plogp.sum(-1).sum(-1), n)
    idx = np.arange(n)
    total = p.sum((-1, -2))  # the detector's denominator: all attention (n for rows that sum to 1)
    out["prev_token"] = (p[:, idx[1:], idx[1:] - 1].sum(-1) / total, 1)
    out["first_token"] = (p[:, :, 0].sum(-1), n)
    out["self"] = (p[:, idx, idx].sum(-1), n)
    same = tokens[:, None] == tokens[None, :]  # [q, k]
    earlier = idx[None, :] < idx[:, None]
    dup = same & earlier
    out["duplicate_token"] = ((p * dup).sum((-1, -2)) / total, 1)
    # induction targets: k >= 1 with tokens[k-1] == tokens[q] and k-1 < q
    after = np.zeros_like(same)
    after[:, 1:] = same[:, :-1] & (idx[None, :-1] < idx[:, None])
    out["induction"] = ((p * after).sum((-1, -2)) / total, 1)
    return out


def random_repeat_tokens(model, n: int = 16, half: int = 20, seed: int = 0):
    """[n, specials + 2 * half] token ids: ``half`` random non-special tokens repeated once,
    framed by the special tokens the model's tokenizer puts around a text ([CLS] ... [SEP],
    <bos> ...). ``half`` shrinks to fit a short context."""
    import torch

    from probe.errors import InputError

    framed = model.tokenize("a").ids[0].tolist()
    inner = model.tokenize("a", prepend_bos=False).ids[0].tolist() if model.cfg.default_prepend_bos else None
    specials = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    word = [i for i in framed if i not in specials] if inner is None else inner
    start = framed.index(word[0]) if word else len(framed)
    prefix, suffix = framed[:start], framed[start + len(word):]
    half = min(half, (model.cfg.n_ctx - len(prefix) - len(suffix)) // 2)
    if half < 2:
        raise InputError(f"{model.cfg.model_name} takes {model.cfg.n_ctx} tokens: too few for repeated random tokens")
    vocab = getattr(model.tokenizer, "get_vocab", dict)()
    bracketed = {i for t, i in vocab.items() if t.startswith("[") and t.endswith("]")}  # BERT's [unused..]
    allowed = torch.tensor(sorted(set(range(model.cfg.d_vocab)) - specials - bracketed - set(prefix + suffix)))
    g = torch.Generator().manual_seed(seed)
    first = allowed[torch.randint(0, len(allowed), (n, half), generator=g)]
    frame = [torch.tensor([prefix] * n, dtype=torch.long).reshape(n, -1),
             torch.tensor([suffix] * n, dtype=torch.long).reshape(n, -1)]
    return torch.cat([frame[0], first, first, frame[1]], dim=1)


def random_repeat_scores(model, n: int = 16, half: int = 20, seed: int = 0) -> np.ndarray:
    """[layer, head] TransformerLens's induction-head detector score on repeated random
    tokens (``random_repeat_tokens``), averaged over the ``n`` sequences."""
    import torch

    ids = random_repeat_tokens(model, n, half, seed)
    device = next(model.parameters()).device
    with torch.no_grad():
        _, cache = model.run_with_cache(ids.to(device), names_filter="blocks.*.attn.hook_pattern")
    scores = np.zeros((model.cfg.n_layers, model.cfg.n_heads))
    for layer in range(model.cfg.n_layers):
        patterns = cache["pattern", layer].float().cpu().numpy()  # [n, head, q, k]
        for row, pattern in zip(ids.numpy(), patterns):
            scores[layer] += pattern_metrics(pattern, row)["induction"][0] / n
    return scores


def head_metrics(run, prompts: list[int] | None = None, model=None) -> pd.DataFrame:
    """A tidy table, one row per (layer, head), one column per metric, over the run's
    published prompts (or the given ones); with ``model`` (the run's) also
    ``induction_random``."""
    cfg = run.config
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    require_layer_hooks(run, "attn.hook_pattern", "head metrics")
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
    induction_random = random_repeat_scores(model) if model is not None else None
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = {"layer": layer, "head": head}
            for m in METRICS:
                row[m] = sums[m][layer, head] / counts[m][layer] if counts[m][layer] else float("nan")
            if induction_random is not None:
                row["induction_random"] = induction_random[layer, head]
            if antecedent is not None:
                row["antecedent"] = antecedent[layer, head]
            rows.append(row)
    return pd.DataFrame(rows)


def antecedent_scores(run, prompts: list[int] | None = None) -> np.ndarray | None:
    """[layer, head] mean (gold - other) attention mass from the pronoun, or None when the
    run's prompts carry no coreference labels."""
    from probe.errors import InputError

    from .coref import candidate_attention

    try:
        attn, gold, _ = candidate_attention(run, prompts)
    except InputError:
        return None
    g = gold[:, None, None]
    gold_mass = np.where(g == 0, attn[..., 0], attn[..., 1])
    other_mass = np.where(g == 0, attn[..., 1], attn[..., 0])
    return (gold_mass - other_mass).mean(0)


def induction_model(run, name: str | None = None):
    """(model, None): the run's own model (or ``name``, which must be the run's) for
    ``induction_random``; (None, reason) when the run's model cannot be loaded or cannot take
    repeated random tokens: the cache alone answers every other metric. A model the user
    named that cannot serve is a mistake, and its error propagates."""
    from probe.errors import InputError

    from .run_checks import check_model_matches
    from .run_inputs import LOAD_ERRORS, load_run_model

    try:
        model, why = load_run_model(run, name)
        if model is None:
            return None, why
        if name:
            check_model_matches(model, run)
        random_repeat_tokens(model, 1)
        return model, None
    except (*LOAD_ERRORS, InputError) as e:
        if name:
            raise
        return None, e
