"""Cross-attention heads of an encoder-decoder model against a gold word alignment: which heads
align, and does the translation need them?

The data is a `TranslationSet`: sources and targets as ids (targets as the decoder reads them,
from the start token) with, for each target query position, the gold source position of the
word that position predicts (-1 where there is none, e.g. the step predicting EOS). Query j of
the decoder reads target tokens 0..j and predicts token j+1, so a head that looks up the word to
translate next attends, at query j, to ``gold[j]``.

Scores per cross-attention head (`alignment_scores`), over every gold query:
- ``alignment``: how often the head's strongest source position is the gold one;
- ``gold_attention``: its mean attention weight on the gold position;
- ``previous``: how often its strongest position is the gold position of the word just read
  (the query's own token: a head tracking what was emitted rather than what comes next).
Baselines on the same queries: ``diagonal`` (the monotonic guess, target word j from source word
j: what a position-only head scores; `diagonal_baseline`) and ``uniform`` (1 / the source's real
length, in expectation, for a head attending at random).

The intervention (`ablate_against_random`): the heads' z replaced during greedy decoding (zero,
or the head's mean z over every real target position of the set: generation sees one position
at a time, so the mean is position-free), scored by exact match of the decoded translations and
by teacher-forced next-token accuracy, against as many random heads of the same layers
(`analyses.ablation.same_layer_random_heads`), several draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from models.encoder_decoder import HookedEncoderDecoder
from probe.errors import InputError
from probe.head_labels import heads_text

from .ablation import same_layer_random_heads, same_layer_sets

Method = Literal["zero", "mean"]


@dataclass(frozen=True)
class TranslationSet:
    source: torch.Tensor  # [b, s] ids
    source_mask: torch.Tensor  # [b, s] 1 for real tokens
    target: torch.Tensor  # [b, t] ids from the decoder start token
    target_mask: torch.Tensor  # [b, t]
    gold: torch.Tensor  # [b, t] the source position query j should read (-1: none)

    def __post_init__(self) -> None:
        b, t = self.target.shape
        if self.gold.shape != (b, t) or self.source.shape[0] != b or self.source_mask.shape != self.source.shape \
                or self.target_mask.shape != self.target.shape:
            raise InputError(f"a TranslationSet needs sources [b, s], targets [b, t] and gold [b, t] with one b; got "
                             f"{tuple(self.source.shape)}, {tuple(self.target.shape)}, {tuple(self.gold.shape)}")
        lengths = self.source_mask.sum(-1)[:, None]
        if bool(((self.gold >= lengths) | (self.gold < -1)).any()):
            raise InputError("gold source positions must be -1 or inside the source's real tokens")


def translation_set(examples: list, batch) -> TranslationSet:
    """A `TranslationSet` from the toy translator's examples (``models.tasks.translate``'s
    ``Example`` and ``batch``): query j predicts target word j, which translates source word
    ``alignment[j]``; the query predicting EOS has none."""
    source, source_mask, target, target_mask = batch(examples)
    gold = torch.full(target.shape, -1, dtype=torch.long)
    for row, e in enumerate(examples):
        gold[row, : len(e.alignment)] = torch.tensor(e.alignment)
    return TranslationSet(source, source_mask, target, target_mask, gold)


def run_translation_set(run) -> TranslationSet:
    """The sources and targets an encoder-decoder run recorded, right-padded, with the gold
    alignment of its prompts' ``alignment`` labels where they have them (else -1)."""
    from models.tokens import pad

    n = run.n_prompts
    if n == 0:
        raise InputError(f"{run.path} has no published prompts yet")
    sources = [run.tokens(i).tolist() for i in range(n)]
    targets = [run.tokens(i, "target").tolist() for i in range(n)]
    source, target = pad(sources, 0, "right"), pad(targets, 0, "right")
    gold = torch.full(target.ids.shape, -1, dtype=torch.long)
    for i in range(n):
        if "alignment" in run.labels(i):
            g = gold_of_prompt(run.labels(i), len(targets[i]), len(sources[i]), i)
            gold[i, : len(g)] = torch.from_numpy(g)
    return TranslationSet(source.ids, source.attention_mask, target.ids, target.attention_mask, gold)


def check_model(model) -> None:
    if not isinstance(model, HookedEncoderDecoder):
        raise InputError(f"{model.cfg.model_name} is not an encoder-decoder model: it has no cross-attention")


@torch.no_grad()
def cross_patterns(model: HookedEncoderDecoder, data: TranslationSet) -> torch.Tensor:
    """Every cross-attention pattern under teacher forcing, [layer, b, head, t, s]."""
    check_model(model)
    names = [f"decoder.{layer}.cross_attn.hook_pattern" for layer in range(model.cfg.n_decoder_layers)]
    _, cache = model.run_with_cache(data.source, decoder_input=data.target, attention_mask=data.source_mask,
                                    decoder_attention_mask=data.target_mask, names_filter=names)
    return torch.stack([cache[n] for n in names])


def diagonal_baseline(data: TranslationSet) -> float:
    """The monotonic-diagonal guess's alignment score: query j reads source position j (the last
    real one past the source's end)."""
    rows, cols = (data.gold >= 0).nonzero(as_tuple=True)
    guess = torch.minimum(cols, data.source_mask.sum(-1)[rows] - 1)
    return float((guess == data.gold[rows, cols]).float().mean())


def alignment_scores(model: HookedEncoderDecoder, data: TranslationSet) -> pd.DataFrame:
    """One row per cross-attention head (layer, head, label, alignment, gold_attention, previous,
    diagonal, uniform), sorted by alignment."""
    patterns = cross_patterns(model, data)  # [l, b, h, t, s]
    rows, cols = (data.gold >= 0).nonzero(as_tuple=True)
    if len(rows) == 0:
        raise InputError("no target position has a gold source position to score against")
    gold = data.gold[rows, cols]
    previous_gold = torch.where(cols > 0, data.gold[rows, (cols - 1).clamp(min=0)], -1)
    at = patterns.permute(1, 3, 0, 2, 4)[rows, cols].permute(1, 0, 2, 3)  # [l, q, h, s]
    strongest = at.argmax(-1)  # [l, q, h]
    uniform = float((1.0 / data.source_mask.sum(-1)[rows].float()).mean())
    diagonal = diagonal_baseline(data)
    out = []
    for layer in range(at.shape[0]):
        for head in range(at.shape[2]):
            top = strongest[layer, :, head]
            has_prev = previous_gold >= 0
            out.append({"layer": layer, "head": head, "label": f"L{layer}H{head}",
                        "alignment": float((top == gold).float().mean()),
                        "gold_attention": float(at[layer, torch.arange(len(gold)), head, gold].mean()),
                        "previous": float((top[has_prev] == previous_gold[has_prev]).float().mean()),
                        "diagonal": diagonal, "uniform": uniform})
    return pd.DataFrame(out).sort_values("alignment", ascending=False, ignore_index=True)


@torch.no_grad()
def mean_z(model: HookedEncoderDecoder, data: TranslationSet) -> dict[int, torch.Tensor]:
    """Each decoder layer's cross-attention z averaged over every real target position, [h, d]."""
    names = [f"decoder.{layer}.cross_attn.hook_z" for layer in range(model.cfg.n_decoder_layers)]
    _, cache = model.run_with_cache(data.source, decoder_input=data.target, attention_mask=data.source_mask,
                                    decoder_attention_mask=data.target_mask, names_filter=names)
    real = data.target_mask.bool()
    return {layer: cache[n][real].mean(0) for layer, n in enumerate(names)}


def ablation_hooks(heads: list[tuple[int, int]], method: Method, means: dict[int, torch.Tensor] | None) -> list:
    """Forward hooks replacing the cross-attention z of ``heads`` (zero, or the position-free mean)."""
    if method not in ("zero", "mean"):
        raise InputError(f"cross-attention heads are ablated by 'zero' or 'mean', not {method!r}")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def replacing(layer: int, hs: list[int]):
        def hook(z, hook):  # z [b, t, h, d]
            z = z.clone()
            for h in hs:
                z[:, :, h] = 0 if method == "zero" else means[layer][h]  # type: ignore[index]
            return z

        return hook

    return [(f"decoder.{layer}.cross_attn.hook_z", replacing(layer, hs)) for layer, hs in by_layer.items()]


@torch.no_grad()
def translation_metrics(model: HookedEncoderDecoder, data: TranslationSet, hooks: list = ()) -> dict[str, float]:
    """Exact match of greedy decoding (up to EOS) and teacher-forced next-token accuracy over real
    target tokens, with ``hooks`` active in both."""
    eos = model.cfg.eos_token_id
    with model.hooks(list(hooks)):
        decoded = model.generate(data.source, attention_mask=data.source_mask,
                                 max_new_tokens=data.target.shape[1], return_type="tokens")
        logits = model(data.source, data.target, data.source_mask, data.target_mask)
    hits = 0
    for row in range(data.target.shape[0]):
        want = data.target[row, 1: int(data.target_mask[row].sum())].tolist()
        got = decoded[row, 1:].tolist()
        got = got[: got.index(eos) + 1] if eos in got else got
        hits += got == want
    keep = data.target_mask[:, 1:].bool()
    accuracy = (logits[:, :-1].argmax(-1) == data.target[:, 1:])[keep].float().mean()
    return {"exact_match": hits / data.target.shape[0], "token_accuracy": float(accuracy)}


def check_heads(model: HookedEncoderDecoder, heads: list[tuple[int, int]]) -> None:
    check_model(model)
    bad = [(layer, h) for layer, h in heads if not (0 <= layer < model.cfg.n_decoder_layers and 0 <= h < model.cfg.n_heads)]
    if bad:
        raise InputError(f"no cross-attention head L{bad[0][0]}H{bad[0][1]}: the decoder has "
                         f"{model.cfg.n_decoder_layers} layers of {model.cfg.n_heads} heads")
    if not heads:
        raise InputError("no heads to ablate")


def ablate_against_random(model: HookedEncoderDecoder, data: TranslationSet, heads: list[tuple[int, int]],
                          draws: int = 20, method: Method = "mean", seed: int = 0,
                          reference: TranslationSet | None = None) -> pd.DataFrame:
    """Translation metrics clean, with ``heads`` ablated together, and with each of ``draws``
    random sets of as many heads of the same layers (distinct sets only: a layer of few heads has
    few). Rows: condition (clean, heads, random), draw, heads, exact_match, token_accuracy."""
    check_heads(model, heads)
    means = mean_z(model, reference or data) if method == "mean" else None
    rows = [{"condition": "clean", "draw": -1, "heads": "", **translation_metrics(model, data)},
            {"condition": "heads", "draw": -1, "heads": heads_text(heads, " "),
             **translation_metrics(model, data, ablation_hooks(heads, method, means))}]
    rng = np.random.default_rng(seed)
    seen: set[tuple[tuple[int, int], ...]] = set()
    possible = same_layer_sets(heads, model.cfg.n_heads)
    while len(seen) < min(draws, possible):
        other = tuple(same_layer_random_heads(heads, model.cfg.n_heads, rng))
        if other in seen:
            continue
        seen.add(other)
        rows.append({"condition": "random", "draw": len(seen) - 1, "heads": heads_text(list(other), " "),
                     **translation_metrics(model, data, ablation_hooks(list(other), method, means))})
    return pd.DataFrame(rows)


def ablation_sweep(model: HookedEncoderDecoder, data: TranslationSet, method: Method = "mean",
                   reference: TranslationSet | None = None) -> pd.DataFrame:
    """Each cross-attention head ablated alone: rows (layer, head, label, exact_match,
    token_accuracy), the clean model's as layer -1."""
    check_model(model)
    means = mean_z(model, reference or data) if method == "mean" else None
    rows = [{"layer": -1, "head": -1, "label": "clean", **translation_metrics(model, data)}]
    for layer in range(model.cfg.n_decoder_layers):
        for head in range(model.cfg.n_heads):
            rows.append({"layer": layer, "head": head, "label": f"L{layer}H{head}",
                         **translation_metrics(model, data, ablation_hooks([(layer, head)], method, means))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ over a recorded run
def gold_of_prompt(labels: dict, n_target: int, n_source: int, prompt: int) -> np.ndarray:
    """[n_target] the gold source token of each decoder query (-1: none) from a prompt's
    ``alignment`` label: for target word j, the source token it translates, which query j (the
    decoder's input up to word j-1, from the start token) predicts."""
    alignment = labels.get("alignment")
    if not isinstance(alignment, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in alignment):
        raise InputError(f"prompt {prompt} has no 'alignment' label (a list of source token positions, one per "
                         "target word); the alignment score needs the gold alignment")
    if len(alignment) > n_target or any(not 0 <= a < n_source for a in alignment):
        raise InputError(f"prompt {prompt}'s alignment {alignment} does not fit its {n_source} source and "
                         f"{n_target} target tokens")
    gold = np.full(n_target, -1)
    gold[: len(alignment)] = alignment
    return gold


def encoder_decoder_head_metrics(run, prompts: list[int] | None = None) -> pd.DataFrame:
    """`probe heads` on an encoder-decoder run: one row per head of the encoder's and the
    decoder's self-attention (``attention`` "encoder"/"decoder"; the decoder-only metrics of
    `analyses.head_metrics.pattern_metrics` over that stack's tokens) and of cross-attention
    ("cross": entropy, and where the prompts carry ``alignment`` labels the alignment score,
    the attention on the gold word, and the diagonal and uniform baselines, as `alignment_scores`)."""
    from .head_metrics import METRICS, pattern_metrics

    cfg = run.config
    prompts = list(range(run.n_prompts)) if prompts is None else prompts
    stacks = {"encoder": (cfg["n_layers"], "source"), "decoder": (cfg["n_decoder_layers"], "target")}
    for stack, (n_layers, _) in stacks.items():
        names = [f"{stack}.{layer}.attn.hook_pattern" for layer in range(n_layers)]
        missing = [n for n in names if n not in run.hooks]
        if missing:
            raise InputError(f"head metrics need every layer's pattern; the run lacks {missing[0]}; record it "
                             f"with `probe record --names '{stack}.*.attn.hook_pattern' ...`")
    n_heads = cfg["n_heads"]
    rows = []
    for stack, (n_layers, sequence) in stacks.items():
        sums = {m: np.zeros((n_layers, n_heads)) for m in METRICS}
        counts = {m: np.zeros(n_layers) for m in METRICS}
        for i in prompts:
            tokens = np.asarray(run.tokens(i, sequence))
            for layer in range(n_layers):
                for m, (s, c) in pattern_metrics(run.prompt_activation(f"{stack}.{layer}.attn.hook_pattern", i),
                                                 tokens).items():
                    sums[m][layer] += s
                    counts[m][layer] += c
        rows += [{"attention": stack, "layer": layer, "head": head,
                  **{m: sums[m][layer, head] / counts[m][layer] for m in METRICS}}
                 for layer in range(n_layers) for head in range(n_heads)]
    rows += _cross_rows(run, prompts, cfg["n_decoder_layers"], n_heads)
    return pd.DataFrame(rows)


def _cross_rows(run, prompts: list[int], n_layers: int, n_heads: int) -> list[dict]:
    names = [f"decoder.{layer}.cross_attn.hook_pattern" for layer in range(n_layers)]
    if any(n not in run.hooks for n in names):
        return []
    labelled = all("alignment" in run.labels(i) for i in prompts)
    entropy = np.zeros((n_layers, n_heads))
    hits, mass, previous = (np.zeros((n_layers, n_heads)) for _ in range(3))
    queries = prev_queries = diagonal = 0
    uniform = 0.0
    for i in prompts:
        n_source, n_target = len(run.tokens(i)), len(run.tokens(i, "target"))
        gold = gold_of_prompt(run.labels(i), n_target, n_source, i) if labelled else None
        for layer, name in enumerate(names):
            p = run.prompt_activation(name, i).astype(np.float64)  # [head, target, source]
            with np.errstate(divide="ignore", invalid="ignore"):
                entropy[layer] += -np.where(p > 0, p * np.log(p), 0.0).sum((-1, -2))
            if gold is None:
                continue
            q = np.nonzero(gold >= 0)[0]
            top = p[:, q].argmax(-1)  # [head, queries]
            hits[layer] += (top == gold[q]).sum(-1)
            mass[layer] += p[:, q, gold[q]].sum(-1)
            qp = q[q > 0]
            qp = qp[gold[qp - 1] >= 0]
            previous[layer] += (p[:, qp].argmax(-1) == gold[qp - 1]).sum(-1)
        if gold is not None:
            q = np.nonzero(gold >= 0)[0]
            queries += len(q)
            qp = q[q > 0]
            prev_queries += int((gold[qp - 1] >= 0).sum())
            diagonal += int((np.minimum(q, n_source - 1) == gold[q]).sum())
            uniform += len(q) / n_source
    n_queries_all = sum(len(run.tokens(i, "target")) for i in prompts)
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = {"attention": "cross", "layer": layer, "head": head,
                   "entropy": entropy[layer, head] / n_queries_all}
            if labelled and queries:
                row.update(alignment=hits[layer, head] / queries, gold_attention=mass[layer, head] / queries,
                           previous=previous[layer, head] / max(prev_queries, 1), diagonal=diagonal / queries,
                           uniform=uniform / queries)
            rows.append(row)
    return rows


# ------------------------------------------------------------------ patching
def target_log_likelihood(model: HookedEncoderDecoder, data: TranslationSet, hooks: list = (),
                          source: TranslationSet | None = None) -> float:
    """Mean log-probability of the targets' real tokens given their prefixes (teacher forced),
    reading the sources of ``source`` (default ``data``'s) with ``hooks`` active."""
    src = source or data
    with torch.no_grad(), model.hooks(list(hooks)):
        logits = model(src.source, data.target, src.source_mask, data.target_mask)
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, data.target[:, 1:, None])[..., 0]
    keep = data.target_mask[:, 1:].bool()
    return float(logp[keep].mean())


def patch_cross_heads(model: HookedEncoderDecoder, clean: TranslationSet, corrupt_sources: TranslationSet,
                      direction: Literal["denoise", "noise"] = "denoise") -> pd.DataFrame:
    """Activation patching of each cross-attention head between two sources read with the same
    (clean) targets: the metric is the clean targets' log-likelihood (`target_log_likelihood`);
    ``denoise`` runs the corrupted sources with one head's clean z patched in, ``noise`` the clean
    sources with one head's corrupted z. A head's z is per target position, so the sources may
    differ in length. Rows: layer, head, patched, normalized ((patched - corrupt) / (clean -
    corrupt), as `analyses.patching`), direction, clean, corrupt."""
    check_model(model)
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' or 'noise', not {direction!r}")
    if clean.source.shape[0] != corrupt_sources.source.shape[0]:
        raise InputError(f"{clean.source.shape[0]} clean and {corrupt_sources.source.shape[0]} corrupted sources; "
                         "pair each clean sentence with one corrupted source")
    clean_value = target_log_likelihood(model, clean)
    corrupt_value = target_log_likelihood(model, clean, source=corrupt_sources)
    if abs(clean_value - corrupt_value) < 1e-9:
        raise InputError("the corrupted sources do not change the targets' likelihood; nothing to patch")
    giver, runner = (clean, corrupt_sources) if direction == "denoise" else (corrupt_sources, clean)
    names = [f"decoder.{layer}.cross_attn.hook_z" for layer in range(model.cfg.n_decoder_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(giver.source, decoder_input=clean.target, attention_mask=giver.source_mask,
                                        decoder_attention_mask=clean.target_mask, names_filter=names)
    rows = []
    for layer, name in enumerate(names):
        for head in range(model.cfg.n_heads):
            def place(z, hook, head=head, given=cache[name]):
                z = z.clone()
                z[:, :, head] = given[:, :, head]
                return z

            patched = target_log_likelihood(model, clean, [(name, place)], source=runner)
            rows.append({"layer": layer, "head": head, "patched": patched,
                         "normalized": (patched - corrupt_value) / (clean_value - corrupt_value)})
    return pd.DataFrame(rows).assign(direction=direction, clean=clean_value, corrupt=corrupt_value)


def shuffled_sources(data: TranslationSet, seed: int = 0) -> TranslationSet:
    """The same targets with each source replaced by another sentence's (a random derangement of
    the rows): the corruption `patch_cross_heads` compares against when none is given."""
    from .ablation import resample_pairing

    rows = resample_pairing(data.source.shape[0], data.source.shape[0], seed)
    return TranslationSet(data.source[rows], data.source_mask[rows], data.target, data.target_mask,
                          torch.full_like(data.gold, -1))


def run_cross_patching(model: HookedEncoderDecoder, run, direction: Literal["denoise", "noise"] = "denoise",
                       seed: int = 0) -> tuple[pd.DataFrame, str]:
    """`patch_cross_heads` on an encoder-decoder run's prompts against their sources shuffled
    (`shuffled_sources`); returns the table and its result name next to the run
    (patch_heads_cross, or patch_heads_cross_noise: noising reads the other way)."""
    from .run_checks import check_model_matches

    check_model_matches(model, run)
    data = run_translation_set(run)
    if data.source.shape[0] < 2:
        raise InputError("cross-attention patching swaps sources between prompts; the run needs at least 2")
    table = patch_cross_heads(model, data, shuffled_sources(data, seed), direction)
    return table, "patch_heads_cross" + ("" if direction == "denoise" else "_noise")

