"""`probe record`: record a model's activations on a prompt set into a run directory."""

from __future__ import annotations

import argparse

from probe.cli.shared import nonnegative_int, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    from probe.prompts import bundled_sets

    p = sub.add_parser("record", help="record activations of a model on a prompt set into an HDF5 run")
    p.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    p.add_argument("--prompts", required=True,
                   help="a .txt file (one prompt per line), a .jsonl file ({\"text\": ...}), or a bundled set: "
                        + ", ".join(bundled_sets()))
    p.add_argument("-o", "--output", required=True, help="run directory to create")
    p.add_argument("--names", nargs="+", metavar="GLOB",
                   help="hook names or globs to record (default: all but hook_result)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float32", help="stored dtype")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--compression", choices=["none", "gzip", "lz4"], default="none",
                   help="lz4 = blosc-lz4 through hdf5plugin (readers need hdf5plugin too)")
    p.add_argument("--shard-mb", type=float, default=64.0,
                   help="publish a shard every this many MiB (also the bound on buffered data)")
    p.add_argument("--truncate", action="store_true",
                   help="cut prompts longer than the context (recorded in the run's metadata) instead of failing")
    p.add_argument("--sample", type=positive_int, metavar="N",
                   help="record a balanced sample of at most N prompts: twins (pair_id) kept together, the set's "
                        "subsets (stereotype, type, refers_to, gender) in equal numbers; deterministic, so --resume "
                        "works with the same N and seed")
    p.add_argument("--sample-seed", type=nonnegative_int, metavar="S",
                   help="seed of --sample's draw (default 0)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="record with N Ray workers, each with its own copy of the model, on disjoint slices of the "
                        "prompts (the same run as one process; needs the ray extra)")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="with --workers: an existing Ray cluster's head (default: start a local cluster)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue an interrupted run")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing run")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probe.recorder import record

    if args.sample is None and args.sample_seed is not None:
        from probe.errors import InputError

        raise InputError("--sample-seed only seeds --sample; add --sample N or drop --sample-seed")
    if args.ray_address and args.workers is None:
        from probe.errors import InputError

        raise InputError("--ray-address names the cluster for --workers; add --workers N or drop --ray-address")
    prompts = _sampled(args) if args.sample is not None else args.prompts
    # the model is loaded only once the output and the prompts have been checked
    run = record(args.model, prompts, args.output, names=args.names, batch_size=args.batch_size,
                 dtype=args.dtype, compression=args.compression, resume=args.resume, overwrite=args.overwrite,
                 truncate=args.truncate, shard_mb=args.shard_mb, model_dtype=args.model_dtype, workers=args.workers,
                 ray_address=args.ray_address)
    size = sum(f.stat().st_size for f in Path(args.output).rglob("*") if f.is_file())
    print(f"recorded {run.n_prompts} prompts, {run.n_tokens} tokens, {len(run.hooks)} hooks "
          f"({size / 2**20:.1f} MiB) to {args.output}")
    return 0


def _sampled(args: argparse.Namespace) -> list:
    """The balanced sample `--sample N [--sample-seed S]` asks for, announced in one line."""
    from probe.design import balanced_sample
    from probe.prompts import load_prompts

    prompts = load_prompts(args.prompts)
    seed = 0 if args.sample_seed is None else args.sample_seed
    sample = balanced_sample(prompts, args.sample, seed)
    print(_sample_line(sample, len(prompts), args.prompts, seed))
    return sample


def _sample_line(sample: list, total: int, source: str, seed: int) -> str:
    """'sampled 48 of 1584 prompts of winobias-dev (seed 0; 24 twin groups): stereotype anti/pro
    24/24, type 1/2 24/24, gender female/male 24/24' (values in sorted order)."""
    from collections import Counter

    from probe.design import SUBSET_FIELDS, subsets_of
    from probe.prompts import twin_key

    n_groups = len({twin_key(p.labels, i) for i, p in enumerate(sample)})
    groups = f"{n_groups} twin group" + ("" if n_groups == 1 else "s")
    counts = {f: Counter() for f in SUBSET_FIELDS}
    for p in sample:
        for field_, value in subsets_of(p.labels).items():
            counts[field_][value] += 1
    parts = [f"{f} {'/'.join(sorted(c))} {'/'.join(str(c[v]) for v in sorted(c))}" for f, c in counts.items() if c]
    return (f"sampled {len(sample)} of {total} prompts of {source} (seed {seed}; {groups}): "
            + (", ".join(parts) if parts else "no subset labels"))
