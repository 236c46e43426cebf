"""AtP and AtP* against exact activation patching of every head x position, on IOI in SmolLM2-135M.

    python bench/attribution.py [--model smollm2|toy-coref] [--prompts 8] [--node z|q|k|v] [--max-copies 64]

The prompts are the bundled IOI set's (``probe.load_prompts("ioi")``), those of its most common token
length (so every position is one slot of one template family), the first ``--prompts`` of them; the
corrupted run is each prompt's ABC version (three unrelated names), the metric the mean logit
difference IO - S at the last position, the direction noising (clean run, corrupted activation patched
in), as Kramár et al. 2024. Exact patching is `analyses.attribution.exact_patching`, batched (up to
``--max-copies`` patched copies per forward pass, each starting at its node's block), so the ratio is
against the fastest exact sweep this project has, not a naive one-pass-per-node loop.

Prints the wall time of each method, the ratios, and each estimate's agreement with the exact effects
(Spearman's rank correlation of magnitudes, recall of the exact top-10 and top-20), and the nodes of the
exact top-20 that AtP misses with whether AtP* recovers them. ``--model toy-coref`` runs the shipped
toy coreference model on its tired/wide twins instead (4 pairs; the answer flips between them). Timings are of one process on this
machine (torch threads as set by ``--threads``); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

# the repository first: bench/ (the script's folder, first on sys.path) has a module named analyses.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from analyses.attribution import (  # noqa: E402
    agreement,
    attribution_patching,
    exact_patching,
    logit_diff_metric,
    recovered,
)
from probe.prompts import load_prompts  # noqa: E402


def ioi_batch(model, n: int):
    prompts = load_prompts("ioi")
    lengths = [len(model.to_tokens(p.text)[0]) for p in prompts]
    common = Counter(lengths).most_common(1)[0][0]
    chosen = [p for p, n_tok in zip(prompts, lengths) if n_tok == common][:n]
    clean = model.to_tokens([p.text for p in chosen])
    corrupt = model.to_tokens([p.labels["abc"] for p in chosen])
    answer = [model.to_single_token(p.labels["answer"]) for p in chosen]
    wrong = [model.to_single_token(p.labels["wrong"]) for p in chosen]
    return clean, corrupt, logit_diff_metric(answer, wrong)


def toy_coref_batch(model):
    """The shipped toy-coref model's twins: tired/wide sentences whose answer flips (the clean
    answer's logit minus the corrupted one's)."""
    from models.tasks import coref

    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    pairs = [(coref.make_example(a, p, "tired", 0), coref.make_example(a, p, "wide", 0))
             for a, p in [("animal", "street"), ("dog", "road"), ("horse", "river"), ("cat", "bridge")]]
    clean = torch.tensor([coref.ids_of(c, vocab) for c, _ in pairs])
    corrupt = torch.tensor([coref.ids_of(w, vocab) for _, w in pairs])
    return clean, corrupt, logit_diff_metric([vocab[c.answer] for c, _ in pairs], [vocab[w.answer] for _, w in pairs])


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--node", default="z", choices=["z", "q", "k", "v"])
    parser.add_argument("--max-copies", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = models.load(args.model).eval()
    clean, corrupt, metric = toy_coref_batch(model) if args.model == "toy-coref" else ioi_batch(model, args.prompts)
    cfg = model.cfg
    n_nodes = cfg.n_layers * clean.shape[1] * (cfg.n_heads if args.node in ("z", "q") else cfg.n_kv_heads)
    print(f"{cfg.model_name}: {clean.shape[0]} IOI prompts of {clean.shape[1]} tokens, node {args.node!r}: "
          f"{n_nodes} heads x positions; torch threads {args.threads}")

    attribution_patching(model, clean[:1], corrupt[:1], metric, [args.node], method="atp")  # warm-up
    atp, t_atp = timed(lambda: attribution_patching(model, clean, corrupt, metric, [args.node], method="atp")[args.node])
    star, t_star = timed(lambda: attribution_patching(model, clean, corrupt, metric, [args.node],
                                                      method="atp*")[args.node])
    exact, t_exact = timed(lambda: exact_patching(model, clean, corrupt, metric, args.node,
                                                  max_copies=args.max_copies))
    print(f"clean logit diff {exact.base_metric:+.3f}, corrupted (ABC) {exact.source_metric:+.3f}")
    print(f"{'method':<8} {'seconds':>9} {'exact/this':>11} {'spearman':>9} {'top-10':>7} {'top-20':>7}")
    for name, result, seconds in (("atp", atp, t_atp), ("atp*", star, t_star)):
        agree = agreement(result, exact)
        print(f"{name:<8} {seconds:>9.2f} {t_exact / seconds:>10.1f}x {agree.spearman:>9.3f} "
              f"{agree.recall[10]:>7.2f} {agree.recall[20]:>7.2f}")
    print(f"{'exact':<8} {t_exact:>9.2f} {1.0:>10.1f}x")
    missed = recovered(atp, star, exact, k=20)
    if len(missed):
        print("exact top-20 nodes AtP's top-20 misses (recovered = in AtP*'s top-20):")
        print(missed.to_string(index=False, float_format=lambda v: f"{v:+.4f}"))
    else:
        print("AtP's top-20 holds all of the exact top-20")


if __name__ == "__main__":
    main()
