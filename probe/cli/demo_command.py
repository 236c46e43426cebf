"""`probe demo`: the seed question, then the pipeline on the default model.

The seed question ("The animal didn't cross the street because it was tired / wide"), asked of
``--model`` (default minilm, an encoder) and then of ``--decoder`` (default smollm2, a language
model; ``--decoder none`` skips it): the heads attending most from *it*, both twins side by side
(`analyses.seed_question`), and, for the language model, its own answer as a logit difference after
a continuation that asks for the referent. The decoder only answers here; it records nothing.

Then the pipeline on ``--model``: record -> head metrics -> coreference study -> a gender probe
with a control task -> a part-of-speech probe -> the dashboard. Each step is the library call the
matching command makes (`probe record`, `heads`, `coref`, `probes`), so the demo shows what they
print.
"""

from __future__ import annotations

import argparse

from probe.cli.shared import port, positive_int

SEED = "The animal didn't cross the street because it was tired."


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="the seed question asked of minilm and of a language model (its heads, its "
                                    "answer), then record -> analyse -> dashboard on the default model")
    p.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    p.add_argument("--decoder", default="smollm2",
                   help="language model asked the seed question after --model, by its own answer (default smollm2; "
                        "'none' skips it, as does naming --model); it records nothing")
    p.add_argument("-o", "--output", default="runs/demo", help="run directory to (re)create (default runs/demo)")
    p.add_argument("-n", type=positive_int, default=400,
                   help="WinoBias dev prompts to record, a balanced sample: pro/anti-stereotyped and type 1/2 in equal "
                        "numbers, twins together (default 400)")
    p.add_argument("--no-record", action="store_true", help="only ask the seed question (of --model and --decoder)")
    p.add_argument("--no-serve", action="store_true",
                   help="do not open the dashboard at the end (for scripts; it prints the command instead)")
    p.add_argument("--port", type=port, default=8050, help="dashboard port (default 8050)")
    return p


def run(args: argparse.Namespace) -> int:
    import models
    from analyses.seed_question import render_seed_question, seed_question
    from probe.cli.shared import print_attention

    if not args.no_record:  # the demo replaces its own runs, never anything else: refused before any work
        from probe.store import check_run_target

        for target in (args.output, str(args.output) + "-pos"):
            check_run_target(target, resume=False, overwrite=True)
    model = models.load(args.model)
    decoder = None if args.decoder in ("none", args.model) else load_decoder(args.decoder)  # refused before any work
    print_attention(model, args.model, SEED, "it", ["animal", "street"], 3)
    print("\n" + render_seed_question(seed_question(model)))
    if decoder is not None:
        question = seed_question(decoder)
        print(f"\n\nthe seed question asked of a language model: {args.decoder}")
        for twin in question.twins:
            print(f"tokens: {decoder.to_str_tokens(twin.prompt or twin.sentence)}")
        print("\n" + render_seed_question(question))
    if args.no_record:
        return 0
    from analyses.coref import write_report
    from analyses.head_metrics import head_metrics
    from analyses.probe_studies import probe_study
    from analyses.results import save_result
    from probe.cli.shared import command_line, stage_printer
    from probe.design import balanced_sample
    from probe.head_labels import top_heads_text
    from probe.prompts import load_prompts
    from probe.recorder import record

    made_by = command_line()
    # balanced: on the first sentences of WinoBias dev (all pro-stereotyped type 1) the gender stereotype
    # alone is right every time, and a head that follows it looks like a coreference head
    prompts = load_prompts("seed") + balanced_sample(load_prompts("winobias-dev"), args.n, seed=0)
    print(f"\nrecording {len(prompts)} prompts (the seed pair + a balanced sample of WinoBias dev: pro/anti x type "
          f"1/2, twins together) to {args.output} ...")
    run = record(model, prompts, args.output, names=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"],
                 batch_size=32, overwrite=True)
    metrics = head_metrics(run, model=model)
    save_result(run.path, "head_metrics", metrics, command=made_by)
    print("\nhead metrics (saved to analyses/head_metrics.csv): strongest previous-token heads:",
          top_heads_text(metrics, "prev_token", 3, ".2f"))
    report = write_report(run, model=model, command=made_by, progress=stage_printer("coref"))
    print("\n" + report.read_text())
    # control task: a random label per pronoun word; a probe that only memorises the pronoun
    # scores as well on it, so selectivity says what the representation adds
    gender = probe_study(run, label="gender", control="pronoun").table
    save_result(run.path, "probes_gender", gender, command=made_by)
    print("linear probe, pronoun gender from mean-pooled resid_post (test accuracy / selectivity over a control "
          "task keyed by the pronoun): " + per_layer(gender))
    pos_prompts = load_prompts("ud-ewt-dev")[: args.n // 2]
    print(f"\nrecording {len(pos_prompts)} UD English-EWT sentences for a part-of-speech probe ...")
    pos_run = record(model, pos_prompts, str(args.output) + "-pos", names=["blocks.*.hook_resid_post"],
                     batch_size=32, overwrite=True)
    pos = probe_study(pos_run, task="pos").table
    save_result(pos_run.path, "probes_pos", pos, command=made_by)
    print("part-of-speech probe per layer (test accuracy / selectivity over a control task): " + per_layer(pos))
    print(f"\nreport: {report}")
    runs = [str(args.output), str(pos_run.path)]
    if args.no_serve:
        print(f"dashboard: probe dashboard {' '.join(runs)}")
        return 0
    from dashboard.server import serve

    print()
    serve(runs, port=args.port)  # prints its URL; Ctrl-C stops it
    return 0


def load_decoder(name: str):
    """The --decoder model; one that is not installed is refused with the way out."""
    import models
    from probe.errors import ModelNotFound

    try:
        return models.load(name)
    except ModelNotFound as e:
        raise ModelNotFound(f"{e} (or skip the language model with --decoder none)") from None


def per_layer(table) -> str:
    """'L0 0.98/0.03, L1 ... (majority 0.51)': test accuracy / selectivity per layer."""
    return (", ".join(f"L{int(r.layer)} {r.test_acc:.2f}/{r.selectivity:.2f}" for _, r in table.iterrows())
            + f" (majority {table.majority_baseline.iloc[0]:.2f})")
