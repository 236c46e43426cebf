"""`probe patch`: activation patching of clean/corrupted prompt pairs or a run's twin prompts."""

from __future__ import annotations

import argparse

from probe.cli.shared import positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("patch", help="activation patching of clean/corrupted prompt pairs ([layer, position], "
                                     "[layer, head])")
    p.add_argument("--model", help="default: toy-coref, or with --run the model the run was recorded with")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--clean-text", help="clean prompt (with --corrupt-text, --answer, --wrong)")
    p.add_argument("--corrupt-text", help="corrupted prompt, the same number of tokens as the clean one")
    p.add_argument("--answer", help="the clean prompt's next token (one token), e.g. ' Mary'")
    p.add_argument("--wrong", help="the corrupted prompt's next token (one token), e.g. ' John'")
    source.add_argument("--pairs", help="JSONL file of pairs, one per line: {clean, corrupt, answer, wrong}")
    p.add_argument("--clean", default="tired", help="toy twins (no texts given): clean adjective (default tired)")
    p.add_argument("--corrupt", default="wide", help="toy twins: corrupted adjective (default wide)")
    p.add_argument("--direction", choices=["denoise", "noise"], default="denoise",
                   help="denoise: patch clean activations into the corrupted run (sufficient?); noise: corrupted "
                        "into the clean run (necessary?); normalised 0 = corrupt, 1 = clean either way")
    p.add_argument("--top", type=positive_int, default=5, help="heads to print")
    source.add_argument("--run", help="patch the twin prompts of a run with gold antecedents (works on encoders: an "
                                 "antecedent probe at --layer measures); saved next to the run")
    p.add_argument("--layer", type=int, help="with --run: the probe's layer (default: the last)")
    p.add_argument("--query", default="pronoun_span", help="with --run: the span the probe reads")
    p.add_argument("-o", "--output", help="directory for patch_resid.csv and patch_heads.csv")
    return p


def run(args: argparse.Namespace) -> int:
    if args.run:
        return run_on_run(args)
    from pathlib import Path

    import models
    from analyses.patching_studies import patch_inputs, text_patching
    from analyses.results import save_result
    from probe.cli.shared import command_line, output_dir
    from probe.errors import InputError
    from probe.store import MANIFEST

    if args.output:  # before the model loads and the patching runs
        output_dir(args.output)
    model = models.load(args.model or "toy-coref")
    inputs = patch_inputs(model, pairs=args.pairs, clean_text=args.clean_text, corrupt_text=args.corrupt_text,
                          answer=args.answer, wrong=args.wrong, clean=args.clean, corrupt=args.corrupt)
    if not args.output:
        raise InputError("give -o DIR for patch_resid.csv and patch_heads.csv")
    result = text_patching(model, inputs, args.direction)
    out = Path(args.output)
    resid, heads = result.resid, result.heads
    if out.name == "analyses" and (out.parent / MANIFEST).is_file():  # a run's results: with their sidecars
        for name, table in (("patch_resid", resid), ("patch_heads", heads)):
            save_result(out.parent, name, table, command=command_line())
    else:
        out.mkdir(parents=True, exist_ok=True)
        resid.to_csv(out / "patch_resid.csv", index=False)
        heads.to_csv(out / "patch_heads.csv", index=False)
    print(f"{args.direction} patching, {result.what}, metric: logit difference "
          f"clean {resid.clean.iloc[0]:.2f}, corrupt {resid.corrupt.iloc[0]:.2f}; normalised (patched - corrupt) / "
          "(clean - corrupt):")
    grid = resid.pivot(index="layer", columns="position", values="normalized")
    print("resid_pre  " + " ".join(f"{t[:6]:>6}" for t in result.tokens))
    for layer, row in grid.iterrows():
        print(f"layer {layer:<4} " + " ".join(f"{v:6.2f}" for v in row))
    print_top_heads(heads, args.top)
    print(f"wrote {out / 'patch_resid.csv'} and {out / 'patch_heads.csv'}")
    return 0


def print_top_heads(heads, top: int) -> None:
    """The heads whose patch moves the normalised metric most toward clean."""
    from probe.head_labels import top_heads_text

    print("heads: " + top_heads_text(heads, "normalized", top, ".2f"))


def run_on_run(args: argparse.Namespace) -> int:
    """Patching on the twin prompts of a run with gold antecedents (same pair_id, flipped
    antecedent), measured by the model's answer or an antecedent probe: works on encoders."""
    from analyses.patching_studies import run_patching
    from analyses.results import check_results_dir, save_result
    from analyses.run_inputs import run_model
    from probe.cli.shared import command_line
    from probe.reader import open_run

    run = open_run(args.run)
    check_results_dir(run.path)
    model = run_model(run, args.model)
    if run.is_encoder_decoder:
        return _cross_heads_on_run(args, run, model)
    result = run_patching(model, run, args.layer, args.query, args.direction)
    heads = result.heads
    out = [save_result(run.path, name, table, command=command_line())
           for name, table in zip(result.names, (result.heads, result.resid))]
    print(f"{args.direction} patches of {int(heads.n_pairs.iloc[0])} twin pair(s) of {args.run}, "
          f"metric: {heads.metric.iloc[0]} (clean {heads.clean.iloc[0]:.2f}, corrupt {heads.corrupt.iloc[0]:.2f})")
    print_top_heads(heads, args.top)
    print(f"wrote {out[0]} and {out[1]}")
    return 0


def _cross_heads_on_run(args: argparse.Namespace, run, model) -> int:
    """An encoder-decoder run: each cross-attention head patched between the run's sources and
    the same sources shuffled among its prompts, read with the run's targets."""
    from analyses.cross_attention import run_cross_patching
    from analyses.results import save_result
    from probe.cli.shared import command_line

    table, name = run_cross_patching(model, run, args.direction)
    out = save_result(run.path, name, table, command=command_line())
    print(f"{args.direction} patches of the cross-attention heads on {run.n_prompts} prompts of {args.run} "
          f"(corrupted: each source replaced by another prompt's), metric: the targets' mean log-likelihood "
          f"(clean {table.clean.iloc[0]:.2f}, corrupt {table.corrupt.iloc[0]:.2f})")
    print_top_heads(table, args.top)
    print(f"wrote {out}")
    return 0

