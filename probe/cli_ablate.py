"""`probe ablate`: head and MLP ablation sweeps and sets, on built-in tasks, prompts or a run."""

from __future__ import annotations

import argparse

from probe.cli_patch import one_token_id


def cmd_ablate(args: argparse.Namespace) -> int:
    import models
    from analyses.ablation import head_ablation_sweep
    from models import InputError

    if args.run:
        return ablate_on_run(args)
    if not args.model:
        raise InputError("give --model (with --task or --prompts), or --run RUN for the coreference metrics")
    model = models.load(args.model)
    if not model.cfg.has_unembed:
        raise encoder_refusal(args.model)
    tokens, reference, metric, what = ablation_data(model, args)
    if args.ablate_heads or args.ablate_mlp:
        return report_ablation(model, tokens, metric, what, args, reference)
    if not args.output:
        raise InputError("give -o FILE.csv for the sweep's table (or --ablate-heads/--ablate-mlp to ablate a set)")
    table = head_ablation_sweep(model, tokens, metric, method=args.method, reference=reference, seed=args.seed)
    write_csv(table, args.output)
    print_sweep(table, f"{args.method}-ablation sweep of {args.model}: {what}; clean {table.clean.iloc[0]:.3f}",
                args.top)
    print(f"wrote {args.output}")
    return 0


def encoder_refusal(name: str, why: str = ""):
    from models import InputError

    return InputError(f"{name} is an encoder without an LM head, so next-token loss does not apply{why}; use "
                      "--run RUN --metric accuracy|antecedent-score on a run with gold antecedents (a probe or the "
                      "heads' attention measures the effect)")


def ablation_data(model, args: argparse.Namespace):
    """(tokens, reference, metric, description) for --task induction or --prompts: next-token
    loss, or with --metric logit-diff the answer-minus-wrong logit at the last token."""
    import torch

    from analyses.ablation import logit_difference, next_token_loss
    from models import InputError

    metric_name = args.metric or "loss"
    if metric_name not in ("loss", "logit-diff"):
        raise InputError(f"--metric {metric_name} needs --run RUN (a run with gold antecedents); with --task or "
                         "--prompts use --metric loss or logit-diff")
    if args.task == "induction":
        from models.tasks import induction

        if metric_name != "loss":
            raise InputError("--task induction measures next-token loss; --metric logit-diff needs --prompts JSONL "
                             "with answer and wrong fields")
        g = torch.Generator().manual_seed(args.seed)
        tokens, reference = induction.repeated_tokens(g, args.n), induction.repeated_tokens(g, args.n)
        metric = next_token_loss(induction.repeated_positions()[1])
        return tokens, reference, metric, f"next-token loss on the repeated half of {args.n} repeated random sequences"
    from probe.prompts import load_prompts

    if not args.prompts:
        raise InputError("give --prompts (equal-length texts) or --task induction")
    prompts = load_prompts(args.prompts)
    rows = [model.tokenize(p.text).ids[0] for p in prompts]
    if len({len(r) for r in rows}) != 1:
        raise InputError("ablation compares positions across prompts: give prompts of equal token length "
                         f"(these have {sorted({len(r) for r in rows})} tokens)")
    tokens = torch.stack(rows)
    if metric_name == "loss":
        return tokens, tokens, next_token_loss(), f"next-token loss on {len(prompts)} prompts"
    for n, p in enumerate(prompts, 1):
        if "answer" not in p.labels or "wrong" not in p.labels:
            raise InputError(f"{args.prompts}: prompt {n} lacks the answer/wrong fields --metric logit-diff needs; "
                             'write JSONL lines like {"text": "...", "answer": " Mary", "wrong": " John"}')
    answer = torch.tensor([one_token_id(model, str(p.labels["answer"])) for p in prompts])
    wrong = torch.tensor([one_token_id(model, str(p.labels["wrong"])) for p in prompts])
    return tokens, tokens, logit_difference(answer, wrong), f"logit difference answer - wrong on {len(prompts)} prompts"


def parse_heads(specs: list[str] | None) -> list[tuple[int, int]]:
    """'L1H0' -> (1, 0)."""
    import re

    from models import InputError

    heads = []
    for spec in specs or []:
        m = re.fullmatch(r"[lL](\d+)[hH](\d+)", spec)
        if not m:
            raise InputError(f"head {spec!r}: write heads as LxHy (layer x, head y), e.g. L1H0")
        heads.append((int(m.group(1)), int(m.group(2))))
    return heads


def report_ablation(model, tokens, metric, what: str, args: argparse.Namespace, reference, attention_mask=None,
                    reference_mask=None) -> int:
    """--ablate-heads/--ablate-mlp: the metric clean and with all of them ablated together."""
    from analyses.ablation import ablate_together

    table = ablate_together(model, tokens, metric, parse_heads(args.ablate_heads), args.ablate_mlp or [],
                            args.method, reference, args.seed, attention_mask, reference_mask)
    r = table.iloc[0]
    parts = ([f"heads {r.heads}"] if r.heads else []) + ([f"MLP layer(s) {r.mlp}"] if r.mlp else [])
    print(f"{args.method}-ablating {' and '.join(parts)} of {model.cfg.model_name} together: {what}")
    print(f"  clean   {r.clean:.4f}\n  ablated {r.ablated:.4f}  (effect {r.effect:+.4f})")
    if args.output:
        print(f"wrote {write_csv(table, args.output)}")
    return 0


def print_sweep(table, title: str, top: int) -> None:
    print(title)
    for _, r in table.reindex(table.effect.abs().sort_values(ascending=False).index).head(top).iterrows():
        print(f"  L{int(r.layer)}H{int(r['head'])}  {r.effect:+.3f}")


def has_coref_labels(run, query: str) -> bool:
    from analyses.coref import REQUIRED

    return any(all(k in labels for k in (*REQUIRED, query)) for labels in map(run.labels, range(run.n_prompts)))


def ablate_on_run(args: argparse.Namespace) -> int:
    """On a run with gold antecedents: the sweep (or --ablate-heads/--ablate-mlp) measured by
    the model's own answer or the antecedent probe (``accuracy``), or by the study's heads'
    attention (``antecedent-score``). On a decoder run without them (or with --metric loss):
    next-token loss on the run's own prompts."""
    import models
    from analyses.coref import candidate_attention, coref_heads
    from analyses.coref_interventions import ablation_setup, setup_metric, sweep
    from models import InputError
    from probe.reader import open_run

    run = open_run(args.run)
    model = models.load(args.model or run.model_name)
    if args.metric == "logit-diff":
        raise InputError("--metric logit-diff takes --prompts JSONL with answer and wrong fields; on a run use "
                         "accuracy (the model's own answer, runs with gold antecedents) or loss")
    labelled = has_coref_labels(run, args.query)
    if args.metric in ("accuracy", "antecedent-score") and not labelled:
        raise InputError(f"--metric {args.metric} measures the antecedent, and the prompts of {args.run} have no gold "
                         f"antecedents ({args.query!r}, candidate_spans, answer); record seed, winobias, winogender or "
                         "toy-coref-test, or use --metric loss on a decoder run")
    if args.metric == "loss" or not labelled:
        return ablate_run_loss(model, run, args)
    if args.method == "resample":
        raise InputError("resample ablation needs prompts of one length; on a run use --method mean or zero")
    metric = args.metric or "accuracy"
    _, _, used = candidate_attention(run, query=args.query)
    layer = args.layer if args.layer is not None else run.config["n_layers"] - 1
    heads = parse_heads(args.heads) or None
    if metric == "antecedent-score" and not heads:
        table, _, _ = coref_heads(run, query=args.query)
        best = table[table.beats_positional] if table.beats_positional.any() else table
        heads = [(int(r.layer), int(r["head"])) for _, r in best.sort_values("accuracy", ascending=False)
                 .head(args.top).iterrows()]
        print("heads measured (the coreference study's best): " + ", ".join(f"L{la}H{h}" for la, h in heads))
    setup = ablation_setup(model, run, used, layer, args.query, args.seed)
    if args.ablate_heads or args.ablate_mlp:
        fn, what = setup_metric(setup, metric, heads)
        return report_ablation(model, setup.data.tokens, fn, f"{what} on {len(setup.data.prompts)} held-out prompts",
                               args, setup.reference, setup.data.mask, setup.reference_mask)
    table = sweep(model, setup, metric, heads, args.method)
    out = write_sweep(run, f"ablation_{metric.replace('-', '_')}", table, args.output)
    print_sweep(table, f"{args.method}-ablation sweep on {len(setup.data.prompts)} held-out prompts of {args.run}: "
                f"{table.metric.iloc[0]}; clean {table.clean.iloc[0]:.3f}", args.top)
    print(f"wrote {out}")
    return 0


def write_sweep(run, name: str, table, output: str | None):
    """A sweep's table: next to the run (RUN/analyses/NAME.csv, where the dashboard finds it),
    or to -o FILE."""
    from analyses.results import save_result

    return save_result(run.path, name, table) if not output else write_csv(table, output)


def write_csv(table, output: str):
    """A table to the -o FILE the user named (its folder made)."""
    from pathlib import Path

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def ablate_run_loss(model, run, args: argparse.Namespace) -> int:
    """Next-token loss on all of a decoder run's prompts (its stored token ids, right-padded
    with a mask when lengths differ); the sweep is saved as RUN/analyses/ablation_loss.csv."""

    from analyses.ablation import head_ablation_sweep, next_token_loss
    from analyses.coref_interventions import check_model_matches
    from models import InputError
    from models.tokens import pad, pad_id

    if not model.cfg.has_unembed:
        labelled = has_coref_labels(run, args.query)
        raise encoder_refusal(model.cfg.model_name, "" if labelled else f" ({args.run} has no gold antecedents either)")
    check_model_matches(model, run)
    tok = pad([run.tokens(i).tolist() for i in range(run.n_prompts)], pad_id(model.tokenizer, model.cfg), "right")
    lengths = sorted(set(tok.attention_mask.sum(1).tolist()))
    mask = None if len(lengths) == 1 else tok.attention_mask
    if mask is not None and args.method == "resample":
        raise InputError(f"resample ablation swaps activations position by position, but the prompts of {args.run} "
                         f"have {lengths[0]}-{lengths[-1]} tokens; use --method mean or zero")
    metric, what = next_token_loss(attention_mask=mask), f"next-token loss on the {run.n_prompts} prompts of {args.run}"
    if args.ablate_heads or args.ablate_mlp:
        return report_ablation(model, tok.ids, metric, what, args, tok.ids, mask, mask)
    table = head_ablation_sweep(model, tok.ids, metric, args.method, tok.ids, args.seed, attention_mask=mask,
                                reference_mask=mask).assign(metric="next-token loss")
    out = write_sweep(run, "ablation_loss", table, args.output)
    print_sweep(table, f"{args.method}-ablation sweep of {model.cfg.model_name}: {what}; clean "
                f"{table.clean.iloc[0]:.3f}", args.top)
    print(f"wrote {out}")
    return 0


def add_subcommand(sub) -> None:
    """``probe ablate``: its arguments, added to the main parser's subcommands."""
    abl = sub.add_parser("ablate", help="effect of ablating each head in turn ([layer, head] table)")
    abl.add_argument("--model", help="model (default with --run: the one the run was recorded with)")
    abl.add_argument("--task", choices=["induction"], help="built-in data and metric (repeated random tokens)")
    abl.add_argument("--prompts", help="equal-length prompts (txt/jsonl/bundled); metric: next-token loss, or with "
                                       "--metric logit-diff JSONL with one-token answer and wrong fields")
    abl.add_argument("--run", help="a run with gold antecedents (seed, winobias, toy-coref-test): sweep on its "
                                   "held-out prompts with --metric; a decoder run without them: next-token loss on "
                                   "its prompts; saved next to the run")
    abl.add_argument("--metric", choices=["loss", "logit-diff", "accuracy", "antecedent-score"],
                     help="loss (default for --task, --prompts and runs without gold antecedents): next-token loss; "
                          "logit-diff: logit[answer] - logit[wrong] at the last token (--prompts JSONL); with --run "
                          "(default accuracy): accuracy = the model's own answer where it gives one (toy-coref), else "
                          "an antecedent probe at --layer; antecedent-score = attention from the pronoun to the gold "
                          "minus the other candidate, averaged over --heads")
    abl.add_argument("--ablate-heads", nargs="+", metavar="LxHy",
                     help="instead of the sweep, ablate these heads together (e.g. L1H0 L1H2) and print the metric "
                          "clean vs ablated")
    abl.add_argument("--ablate-mlp", nargs="+", type=int, metavar="LAYER",
                     help="ablate these MLP layers (their hook_mlp_out) together, with --ablate-heads if given")
    abl.add_argument("--layer", type=int, help="with --run: the probe's layer (default: the last)")
    abl.add_argument("--heads", nargs="+", metavar="LxHy", help="heads the antecedent score averages (e.g. L1H3); "
                                                               "default: the coreference study's best")
    abl.add_argument("--query", default="pronoun_span", help="with --run: the span that attends / is probed")
    abl.add_argument("--method", choices=["zero", "mean", "resample"], default="mean")
    abl.add_argument("-n", type=int, default=64, help="examples for --task")
    abl.add_argument("--seed", type=int, default=0)
    abl.add_argument("--top", type=int, default=5)
    abl.add_argument("-o", "--output", help="CSV file to write (default with --run: RUN/analyses/ablation_METRIC.csv; "
                                            "with --ablate-heads/--ablate-mlp: optional, one row)")
    abl.set_defaults(func=cmd_ablate)
