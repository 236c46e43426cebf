"""`probe record`: record a model's activations on a prompt set into a run directory."""

from __future__ import annotations

import argparse


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
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue an interrupted run")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing run")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probe.recorder import record

    # the model is loaded only once the output and the prompts have been checked
    run = record(args.model, args.prompts, args.output, names=args.names, batch_size=args.batch_size,
                 dtype=args.dtype, compression=args.compression, resume=args.resume, overwrite=args.overwrite,
                 truncate=args.truncate, shard_mb=args.shard_mb, model_dtype=args.model_dtype)
    size = sum(f.stat().st_size for f in Path(args.output).rglob("*") if f.is_file())
    print(f"recorded {run.n_prompts} prompts, {run.n_tokens} tokens, {len(run.hooks)} hooks "
          f"({size / 2**20:.1f} MiB) to {args.output}")
    return 0
