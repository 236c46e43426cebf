"""Indirect object identification on a model: how well it does the task, and which heads write the
answer directly (the first steps of Wang et al. 2022's analysis, on `probe.ioi_prompts` prompts).

* `ioi_batches`: the prompts grouped by token length, each group a batch whose positions line up
  (every prompt of a group has its names at the same token positions only if the group is also one
  template and order; groups are by length, so per-position results should be read per template).
* `ioi_baseline`: the mean logit difference IO - S at the last position (END) with a bootstrap
  interval over prompts, the share of prompts where it is positive, the same per order (ABBA/BABA)
  and on the ABC and name-swapped versions (which should be near 0 and flipped).
* `head_dla`: each head's direct logit attribution at END: its output (``hook_z`` through W_O), as
  the final norm sees it inside the whole stream (`ActivationCache.apply_ln_to_stack`), projected on
  ``W_U[:, IO] - W_U[:, S]``. With TransformerLens's weight processing
  (`HookedTransformer.from_pretrained`) the heads' terms plus the other components' add up to the
  logit difference; on raw weights the final norm's weight is not in the projection, so load the
  model processed (the function says so in its result when it is not).

The circuit itself (AtP* candidates checked by exact patching, path patching, head classes,
faithfulness, completeness, minimality) is the rest of the IOI issue and not here yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer
from probe.errors import InputError
from probe.prompts import Prompt

VERSIONS = ("text", "abc", "swap")


@dataclass(frozen=True)
class IOIBatch:
    """Prompts of one token length: ``tokens[version]`` [b, p] for the clean text, its ABC and its
    swapped version, and the IO and S token ids [b]."""

    prompts: tuple[Prompt, ...]
    tokens: dict[str, torch.Tensor]
    io: torch.Tensor
    s: torch.Tensor


def ioi_batches(model: HookedTransformer, prompts: Sequence[Prompt]) -> list[IOIBatch]:
    """The prompts grouped by token length (in the order lengths first appear), refusing a prompt
    whose names are not single tokens or whose versions differ in length."""
    groups: dict[int, list[tuple[Prompt, dict[str, list[int]]]]] = {}
    for i, p in enumerate(prompts):
        missing = [k for k in ("answer", "wrong", "abc", "swap") if k not in p.labels]
        if missing:
            raise InputError(f"prompt {i} has no {', '.join(missing)} label(s); IOI prompts come from probe.ioi_prompts "
                             "(the bundled set 'ioi')")
        ids = {v: model.to_tokens(p.text if v == "text" else p.labels[v])[0].tolist() for v in VERSIONS}
        if len({len(x) for x in ids.values()}) != 1:
            raise InputError(f"prompt {i}: its clean, ABC and swapped versions have different token lengths; "
                             "generate the prompts for this model's tokenizer (probe.ioi_prompts.ioi_prompts(tokenizer=))")
        groups.setdefault(len(ids["text"]), []).append((p, ids))
    batches = []
    for members in groups.values():
        tokens = {v: torch.tensor([ids[v] for _, ids in members]) for v in VERSIONS}
        io = torch.tensor([model.to_single_token(p.labels["answer"]) for p, _ in members])
        s = torch.tensor([model.to_single_token(p.labels["wrong"]) for p, _ in members])
        batches.append(IOIBatch(tuple(p for p, _ in members), tokens, io, s))
    return batches


def _logit_diffs(model: HookedTransformer, batch: IOIBatch, version: str) -> torch.Tensor:
    with torch.no_grad():
        last = model(batch.tokens[version].to(model.device))[:, -1].float().cpu()  # [b, vocab]
    rows = torch.arange(last.shape[0])
    return last[rows, batch.io] - last[rows, batch.s]


@dataclass(frozen=True)
class IOIBaseline:
    """The model on the task: per-prompt logit differences IO - S at END and their summaries."""

    n: int
    logit_diff: float
    logit_diff_ci: tuple[float, float]  # 95% bootstrap interval over prompts
    accuracy: float  # share of prompts with logit diff > 0
    by_order: dict[str, float]  # mean logit diff per ABBA / BABA
    abc_logit_diff: float  # the same IO and S tokens, on the ABC version (names removed)
    swap_logit_diff: float  # on the swapped version (should flip sign)
    per_prompt: pd.DataFrame  # order, template, text / abc / swap logit diffs


def ioi_baseline(model: HookedTransformer, prompts: Sequence[Prompt], n_boot: int = 2000,
                 seed: int = 0) -> IOIBaseline:
    rows = []
    for batch in ioi_batches(model, prompts):
        diffs = {v: _logit_diffs(model, batch, v) for v in VERSIONS}
        for i, p in enumerate(batch.prompts):
            rows.append({"order": p.labels.get("order"), "template": p.labels.get("template"),
                         **{f"{v}_logit_diff": float(diffs[v][i]) for v in VERSIONS}})
    table = pd.DataFrame(rows)
    values = table.text_logit_diff.to_numpy()
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return IOIBaseline(
        n=len(values), logit_diff=float(values.mean()),
        logit_diff_ci=(float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))),
        accuracy=float((values > 0).mean()),
        by_order={str(k): float(v) for k, v in table.groupby("order").text_logit_diff.mean().items()},
        abc_logit_diff=float(table.abc_logit_diff.mean()), swap_logit_diff=float(table.swap_logit_diff.mean()),
        per_prompt=table)


def head_dla(model: HookedTransformer, prompts: Sequence[Prompt]) -> pd.DataFrame:
    """One row per head: ``layer``, ``head``, ``dla`` (mean over prompts of its direct
    contribution to logit(IO) - logit(S) at END) and ``dla_sd``; ``processed`` says whether the
    model's norms were folded (`from_pretrained`), without which the terms do not add up."""
    cfg = model.cfg
    per_prompt = []
    for batch in ioi_batches(model, prompts):
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.tokens["text"].to(model.device),
                                            names_filter=lambda n: n.endswith(("hook_z", "hook_scale", "resid_post")))
            stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [n_layers * n_heads, b, d_model]
            scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
            direction = (model.W_U[:, batch.io] - model.W_U[:, batch.s]).T  # [b, d_model]
            per_prompt.append(torch.einsum("cbm,bm->bc", scaled, direction.to(scaled.dtype)).cpu())
    dla = torch.cat(per_prompt).reshape(-1, cfg.n_layers, cfg.n_heads)  # [prompts, layer, head]
    layers, heads = np.indices((cfg.n_layers, cfg.n_heads)).reshape(2, -1)
    processed = not cfg.norm_affine
    return pd.DataFrame({"layer": layers, "head": heads, "dla": dla.mean(0).reshape(-1).numpy(),
                         "dla_sd": dla.std(0).reshape(-1).numpy(), "processed": processed})
