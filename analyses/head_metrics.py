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
compares them with TransformerLens's own functions.

With the run's model (``probe heads`` loads it when it can), two scores on fresh repeated
random tokens (``random_repeat_scores``), the input induction and previous-token heads are
defined on, computed as TransformerLens's induction mosaic computes them (the attention
pattern's offset diagonal, averaged over the queries that have a target), so 1 means all of
the query's attention is on the target:
- ``induction_random``: from each query of the repeated half to the token after its earlier
  occurrence (q - half + 1);
- ``prev_token_random``: from each random token to the one before it (q - 1).

The sequences are framed as the model's tokenizer frames a text: SmolLM2's GGUF says to add no
BOS, so its sequences start with the first random token. Measured on SmolLM2 (2 x 20 random
tokens): its top five induction heads (scored on 8 sequences) are the same with nothing, with
<|im_start|> (its BOS id) and with <|endoftext|> in front; the clean repeated-half loss (16
sequences) is 3.8, 4.8 and 2.0 nats.

From the run again, where its prompts allow:
- ``antecedent`` (only for runs whose prompts carry coreference labels, e.g. seed or
  WinoBias): attention mass from the pronoun to the gold antecedent minus the mass to the
  other candidate, aggregated as Clark et al. (2019) do (sum over a mention's tokens, mean
  over the pronoun's tokens), averaged over prompts. See analyses/coref.py for accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .run_checks import require_layer_hooks

METRICS = ("entropy", "prev_token", "first_token", "self", "duplicate_token", "induction")


RANDOM_REPEAT = ("induction_random", "prev_token_random")  # on repeated random tokens: need the model
OPTIONAL = (*RANDOM_REPEAT, "antecedent")  # present when a model, or gold antecedents, allow them
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


@dataclass(frozen=True)
class RepeatedRandomTokens:
    """Sequences of ``half`` random tokens repeated once (TransformerLens's
    ``generate_repeated_tokens``, the input of the induction mosaic), framed by the special
    tokens the model's tokenizer puts around a text: [n, start + 2 * half + suffix] ids, the
    random tokens at positions ``start`` .. ``start + 2 * half - 1``."""

    ids: torch.Tensor  # [n, pos]
    start: int  # position of the first random token (0 where the tokenizer adds nothing in front)
    half: int  # random tokens per half

    @property
    def repeated(self) -> torch.Tensor:
        """Positions of the repeated half: the queries the induction score averages."""
        return torch.arange(self.start + self.half, self.start + 2 * self.half)

    @property
    def after_previous(self) -> torch.Tensor:
        """Random-token positions whose previous token is random too: the queries the
        previous-token score averages."""
        return torch.arange(self.start + 1, self.start + 2 * self.half)

    def loss_positions(self) -> tuple[slice, slice]:
        """(first half, repeated half) as slices of the [p-1] next-token loss: the
        predictions of the first half's tokens (those with a token before them), and of the
        repeated half's tokens after its first (the first is not predictable: nothing says
        the repeat starts there)."""
        s, h = self.start, self.half
        return slice(max(s, 1) - 1, s + h - 1), slice(s + h, s + 2 * h - 1)


def random_repeat_tokens(model, n: int = 16, half: int = 20, seed: int = 0,
                         generator: torch.Generator | None = None) -> RepeatedRandomTokens:
    """``n`` sequences of ``half`` random non-special tokens, uniform over the vocabulary and
    repeated once, framed as the model's tokenizer frames a text ([CLS] ... [SEP], <bos> ...,
    nothing for SmolLM2, whose GGUF says to add no BOS). ``half`` shrinks to fit a short
    context. Drawn from ``generator`` when given, else from one seeded with ``seed``."""
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
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    first = allowed[torch.randint(0, len(allowed), (n, half), generator=g)]
    frame = [torch.tensor([prefix] * n, dtype=torch.long).reshape(n, -1),
             torch.tensor([suffix] * n, dtype=torch.long).reshape(n, -1)]
    return RepeatedRandomTokens(torch.cat([frame[0], first, first, frame[1]], dim=1), len(prefix), half)


def random_repeat_scores(model, n: int = 16, half: int = 20, seed: int = 0,
                         data: RepeatedRandomTokens | None = None) -> dict[str, np.ndarray]:
    """{"induction_random", "prev_token_random"}: [layer, head] scores on repeated random
    tokens (``data``, else ``random_repeat_tokens(model, n, half, seed)``), as the induction
    mosaic measures them: the mean over the repeated half's queries q of the attention to
    q - half + 1 (the token after q's earlier occurrence), and the mean over the random
    tokens' queries of the attention to q - 1; both averaged over the sequences. A head of a
    grouped-query model (several query heads sharing a key/value head) has its own pattern
    and so its own scores."""
    data = data if data is not None else random_repeat_tokens(model, n, half, seed)
    device = next(model.parameters()).device
    with torch.no_grad():
        _, cache = model.run_with_cache(data.ids.to(device), names_filter="blocks.*.attn.hook_pattern")
    q_ind, q_prev = data.repeated, data.after_previous
    scores = {name: np.zeros((model.cfg.n_layers, model.cfg.n_heads)) for name in RANDOM_REPEAT}
    for layer in range(model.cfg.n_layers):
        p = cache["pattern", layer].float().cpu()  # [n, head, q, k]
        scores["induction_random"][layer] = p[:, :, q_ind, q_ind - data.half + 1].mean((0, 2)).numpy()
        scores["prev_token_random"][layer] = p[:, :, q_prev, q_prev - 1].mean((0, 2)).numpy()
    return scores


def head_metrics(run, prompts: list[int] | None = None, model=None, workers: int | None = None,
                 ray_address: str | None = None) -> pd.DataFrame:
    """A tidy table, one row per (layer, head), one column per metric, over the run's
    published prompts (or the given ones); with ``model`` (the run's) also the scores on
    repeated random tokens (``induction_random``, ``prev_token_random``). ``workers``: read the
    run's shards in parallel on that many Ray workers (`probe.distributed.map_over_shards`)."""
    if run.is_encoder_decoder:  # encoder, decoder and cross-attention heads, with the alignment score
        from .cross_attention import encoder_decoder_head_metrics

        return encoder_decoder_head_metrics(run, prompts)
    cfg = run.config
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    require_layer_hooks(run, "attn.hook_pattern", "head metrics")
    prompts = list(range(run.n_prompts)) if prompts is None else prompts
    # Sums per shard, added in shard order: the same arithmetic whether the shards are read here
    # or by Ray workers (``workers``), so both give the same numbers to the bit.
    from probe.distributed import map_over_shards

    parts = map_over_shards(run, prompts, _pattern_sums, workers, ray_address, by_shard=True)
    sums = {m: np.zeros((n_layers, n_heads)) for m in METRICS}
    counts = {m: np.zeros(n_layers) for m in METRICS}
    for part_sums, part_counts in parts:
        for m in METRICS:
            sums[m] += part_sums[m]
            counts[m] += part_counts[m]
    antecedent = antecedent_scores(run, prompts)
    on_random = random_repeat_scores(model) if model is not None else {}
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = {"layer": layer, "head": head}
            for m in METRICS:
                row[m] = sums[m][layer, head] / counts[m][layer] if counts[m][layer] else float("nan")
            for m, score in on_random.items():
                row[m] = score[layer, head]
            if antecedent is not None:
                row["antecedent"] = antecedent[layer, head]
            rows.append(row)
    return pd.DataFrame(rows)


def _pattern_sums(run, prompts: list[int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-head sums and per-layer counts of every pattern metric over ``prompts``."""
    n_layers, n_heads = run.config["n_layers"], run.config["n_heads"]
    sums = {m: np.zeros((n_layers, n_heads)) for m in METRICS}
    counts = {m: np.zeros(n_layers) for m in METRICS}
    for i in prompts:
        tokens = np.asarray(run.tokens(i))
        for layer in range(n_layers):
            for m, (s, c) in pattern_metrics(run.pattern(i, layer), tokens).items():
                sums[m][layer] += s
                counts[m][layer] += c
    return sums, counts


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
    the scores on repeated random tokens; (None, reason) when the run's model cannot be loaded or cannot take
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
