"""`probe probes RUN`: linear (logistic or ridge) probes per layer of a recorded run."""

from __future__ import annotations

import argparse

from probe.cli.shared import nonnegative_int, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("probes", help="linear probes per layer: a prompt-level label, part of speech, or the "
                                      "antecedent")
    p.add_argument("run")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--label", help="a prompt-level label field of the run's prompts (e.g. gender, stereotype)")
    what.add_argument("--task", choices=["pos", "antecedent"],
                      help="pos: part of speech per word (runs of the ud-ewt sets); antecedent: which candidate "
                           "mention the pronoun refers to, from its representation (seed, winobias, toy-coref runs)")
    p.add_argument("--control", metavar="FIELD",
                   help="for --label: run Hewitt & Liang's control task with this label field as the word type "
                        "(one random label per value, e.g. --control pronoun for a gender probe) and report "
                        "control accuracy and selectivity; pos and antecedent have their own control tasks")
    p.add_argument("--target", choices=["auto", "class", "real"], default="auto",
                   help="for --label: class (logistic regression, accuracy) or real (ridge regression, R^2); "
                        "auto: real when every value is a number, except 0/1-style integer fields (class indices)")
    p.add_argument("--query", default="pronoun_span",
                   help="for --task antecedent: the span whose representation is probed (default pronoun_span; "
                        "toy-coref runs also have question_span)")
    p.add_argument("--mdl", action="store_true",
                   help="add the online-code description length per layer (Voita & Titov 2020): mdl_bits, "
                        "compression")
    p.add_argument("--stream", action="store_true",
                   help="stream feature rows from disk through the fit (automatic when they would not fit in RAM)")
    p.add_argument("--hook", default="hook_resid_post", help="per-layer hook to probe (default hook_resid_post)")
    p.add_argument("--pool", choices=["mean", "first", "last"], default="mean")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="read the features from the run's shards on N Ray workers (the same rows; needs the ray extra)")
    p.add_argument("--ray-address", metavar="HOST:PORT", help="with --workers: an existing Ray cluster's head")
    return p


def print_streaming(rows: int, need: int) -> None:
    print(f"streaming {rows} feature rows ({need / 2**30:.2f} GiB bound) from disk through the fit")


def run(args: argparse.Namespace) -> int:
    from analyses.probe_studies import probe_study
    from analyses.results import check_results_dir, save_result
    from probe.cli.shared import command_line
    from probe.reader import open_run

    run = open_run(args.run)
    check_results_dir(args.run)  # where save_result writes
    study = probe_study(run, label=args.label, task=args.task, control=args.control, target=args.target,
                        query=args.query, mdl=args.mdl, stream=args.stream, hook=args.hook, pool=args.pool,
                        seed=args.seed, on_stream=print_streaming, workers=args.workers, ray_address=args.ray_address)
    out_path = save_result(args.run, study.name, study.table, command=command_line())
    kind = "ridge probe (real-valued target; --target class to probe classes)" if study.ridge else "probe"
    print(f"{kind} for {study.what}, {run.n_prompts} prompts -> {out_path}")
    print(study.table.round(3).to_string(index=False))
    return 0
