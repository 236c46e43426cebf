"""The `probe` command. Each subcommand imports what it needs inside its function so
`probe --help` stays fast (DESIGN.md, "Layout")."""

from __future__ import annotations

import argparse
import sys

from probe.errors import StoreError

SEED = "The animal didn't cross the street because it was tired."


def cmd_attend(args: argparse.Namespace) -> int:
    import models
    from analyses.word_attention import top_heads, word_to_word_attention

    model = models.load(args.model)
    print(f"model: {args.model} ({model.cfg.family}, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    print(f"text:  {args.text}")
    print(f"tokens: {model.to_str_tokens(args.text)}")
    for key in args.to:
        scores = word_to_word_attention(model, args.text, args.from_word, key)
        print(f"\nheads attending most from {args.from_word!r} to {key!r}:")
        for h in top_heads(scores, args.top):
            print(f"  {h.label:<6} {h.score:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The seed question, then the pipeline: record -> head metrics -> coreference study ->
    probe, on the default model."""
    args.text, args.from_word, args.to, args.top = SEED, "it", ["animal", "street"], 3
    cmd_attend(args)
    if args.no_record:
        return 0
    import numpy as np

    import models
    from analyses.coref import write_report
    from analyses.head_metrics import head_metrics
    from analyses.probes import layer_probes, prompt_features
    from analyses.results import save_result
    from probe.prompts import load_prompts
    from probe.recorder import record

    prompts = load_prompts("seed") + load_prompts("winobias-dev")[: args.n]
    print(f"\nrecording {len(prompts)} prompts (the seed pair + WinoBias dev) to {args.output} ...")
    model = models.load(args.model)
    run = record(model, prompts, args.output, names=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"],
                 batch_size=32, overwrite=True)
    metrics = head_metrics(run, model=model)
    save_result(run.path, "head_metrics", metrics)
    print("\nhead metrics (saved to analyses/head_metrics.csv): strongest previous-token heads:",
          ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r.prev_token:.2f}"
                    for _, r in metrics.sort_values("prev_token", ascending=False).head(3).iterrows()))
    report = write_report(run, model=model)
    print("\n" + report.read_text())
    labels = np.array([str(run.labels(i).get("gender")) for i in range(run.n_prompts)])
    keep = np.flatnonzero(labels != "None")
    table = layer_probes(prompt_features(run, range(run.config["n_layers"]))[:, keep], labels[keep], keep)
    save_result(run.path, "probes_gender", table)
    print("linear probe, pronoun gender from mean-pooled resid_post (test accuracy per layer): "
          + ", ".join(f"L{int(r.layer)} {r.test_acc:.2f}" for _, r in table.iterrows())
          + f" (majority {table.majority_baseline.iloc[0]:.2f})")
    from analyses.probes import word_features

    pos_prompts = load_prompts("ud-ewt-dev")[: args.n // 2]
    print(f"\nrecording {len(pos_prompts)} UD English-EWT sentences for a part-of-speech probe ...")
    pos_run = record(model, pos_prompts, str(args.output) + "-pos", names=["blocks.*.hook_resid_post"],
                     batch_size=32, overwrite=True)
    feats, labels, prompt_of, types = word_features(pos_run, range(run.config["n_layers"]))
    pos = layer_probes(feats, labels, prompt_of, types=types)
    save_result(pos_run.path, "probes_pos", pos)
    print("part-of-speech probe per layer (test accuracy / selectivity over a control task): "
          + ", ".join(f"L{int(r.layer)} {r.test_acc:.2f}/{r.selectivity:.2f}" for _, r in pos.iterrows())
          + f" (majority {pos.majority_baseline.iloc[0]:.2f})")
    print(f"\nreport: {report}")
    runs = [str(args.output), str(pos_run.path)]
    if args.no_serve:
        print(f"dashboard: probe dashboard {' '.join(runs)}")
        return 0
    from dashboard.cli import serve

    print()
    serve(runs, port=args.port)  # prints its URL; Ctrl-C stops it
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    import models
    from probe.recorder import record

    if args.resume and args.overwrite:
        raise StoreError("--resume and --overwrite contradict each other; pick one")
    from pathlib import Path

    if Path(args.output).exists() and not (args.resume or args.overwrite):
        raise StoreError(f"{args.output} already exists; pass --resume to continue it or --overwrite to replace it")
    from probe.prompts import load_prompts

    prompts = load_prompts(args.prompts)  # before loading the model: bad prompt files fail fast
    model = models.load(args.model, dtype=args.model_dtype)
    run = record(model, prompts, args.output, names=args.names, batch_size=args.batch_size, dtype=args.dtype,
                 compression=args.compression, resume=args.resume, overwrite=args.overwrite,
                 truncate=args.truncate, shard_mb=args.shard_mb)
    size = sum(f.stat().st_size for f in Path(args.output).rglob("*") if f.is_file())
    print(f"recorded {run.n_prompts} prompts, {run.n_tokens} tokens, {len(run.hooks)} hooks "
          f"({size / 2**20:.1f} MiB) to {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from models.training import describe, train
    from probe.progress import StepProgress

    if Path(args.output).exists() and any(Path(args.output).iterdir()) and not args.overwrite:
        raise StoreError(f"{args.output} already exists and is not empty; pass --overwrite to replace its checkpoint")
    command = "probe " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    from models.tasks import get_task

    steps = args.steps or get_task(args.task).training_defaults["steps"]
    bar = StepProgress(steps, f"training {args.task}")
    try:
        out = train(args.task, args.output, steps=steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                    command=command, on_step=bar)
    finally:
        bar.close()
    metrics = describe(out)["final_metrics"]
    print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    import models
    from analyses.head_metrics import METRICS, head_metrics
    from analyses.results import save_result
    from probe.reader import open_run

    run = open_run(args.run)
    if not run.complete:
        print(f"note: {args.run} is still being recorded; using the {run.n_prompts} prompts published so far",
              file=sys.stderr)
    model = None
    if not args.no_model:  # for induction_random, the detector's score on repeated random tokens
        try:
            model = models.load(args.model or run.model_name)
        except (models.ModelNotFound, OSError) as e:
            if args.model:
                raise
            print(f"note: cannot load the run's model {run.model_name!r} ({e}); induction_random left out "
                  "(give --model)", file=sys.stderr)
    table = head_metrics(run, model=model)
    out = save_result(args.run, "head_metrics", table)
    print(f"head metrics over {run.n_prompts} prompts -> {out}")
    extra = [m for m in ("induction_random", "antecedent") if m in table.columns]
    for metric in [*METRICS, *extra]:
        top = table.sort_values(metric, ascending=metric == "entropy").head(args.top)
        heads = ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r[metric]:.3f}" for _, r in top.iterrows())
        print(f"  {metric:<16} {'lowest' if metric == 'entropy' else 'highest'}: {heads}")
    return 0


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
    from pathlib import Path

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, index=False)
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
    from pathlib import Path

    from analyses.ablation import ablate_together

    table = ablate_together(model, tokens, metric, parse_heads(args.ablate_heads), args.ablate_mlp or [],
                            args.method, reference, args.seed, attention_mask, reference_mask)
    r = table.iloc[0]
    parts = ([f"heads {r.heads}"] if r.heads else []) + ([f"MLP layer(s) {r.mlp}"] if r.mlp else [])
    print(f"{args.method}-ablating {' and '.join(parts)} of {model.cfg.model_name} together: {what}")
    print(f"  clean   {r.clean:.4f}\n  ablated {r.ablated:.4f}  (effect {r.effect:+.4f})")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.output, index=False)
        print(f"wrote {args.output}")
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
    from pathlib import Path

    import models
    from analyses.coref import candidate_attention, coref_heads
    from analyses.coref_interventions import ablation_setup, setup_metric, sweep
    from analyses.results import save_result
    from models import InputError
    from probe.reader import open_run

    run = open_run(args.run)
    model = models.load(args.model or run.model_name)
    if args.metric == "logit-diff":
        raise InputError("--metric logit-diff takes --prompts JSONL with answer and wrong fields; on a run use "
                         "accuracy (the model's own answer, runs with gold antecedents) or loss")
    if args.metric == "loss" or not has_coref_labels(run, args.query):
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
    name = f"ablation_{metric.replace('-', '_')}"
    out = save_result(run.path, name, table) if not args.output else Path(args.output)
    if args.output:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    print_sweep(table, f"{args.method}-ablation sweep on {len(setup.data.prompts)} held-out prompts of {args.run}: "
                f"{table.metric.iloc[0]}; clean {table.clean.iloc[0]:.3f}", args.top)
    print(f"wrote {out}")
    return 0


def ablate_run_loss(model, run, args: argparse.Namespace) -> int:
    """Next-token loss on all of a decoder run's prompts (its stored token ids, right-padded
    with a mask when lengths differ); the sweep is saved as RUN/analyses/ablation_loss.csv."""
    from pathlib import Path

    from analyses.ablation import head_ablation_sweep, next_token_loss
    from analyses.coref_interventions import check_model_matches
    from analyses.results import save_result
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
    out = save_result(run.path, "ablation_loss", table) if not args.output else Path(args.output)
    if args.output:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    print_sweep(table, f"{args.method}-ablation sweep of {model.cfg.model_name}: {what}; clean "
                f"{table.clean.iloc[0]:.3f}", args.top)
    print(f"wrote {out}")
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from analyses.probe_features import FeatureRows, antecedent_features, prompt_features, word_features
    from analyses.probes import layer_probes
    from analyses.results import save_result
    from analyses.ridge_probes import layer_ridge_probes, prompt_targets
    from models import InputError
    from probe.reader import open_run

    if args.task and args.target == "real":
        raise InputError(f"--task {args.task} probes classes; --target real is for a numeric --label field")
    run = open_run(args.run)
    L = run.config["n_layers"]
    layers = range(L)
    missing = [f"blocks.{layer}.{args.hook}" for layer in layers if f"blocks.{layer}.{args.hook}" not in run.hooks]
    if missing:
        raise InputError(f"{args.run} lacks {missing[:2]}...; record with --names 'blocks.*.{args.hook}'")
    fields = run.manifest.get("label_fields", [])
    # Rows go to a scratch file and are streamed through the fit when asked, or when the
    # features would not comfortably fit in memory (a quarter of what is available).
    rows_bound = run.n_tokens if args.task == "pos" else run.n_prompts
    need = rows_bound * L * run.config["d_model"] * 4
    stream = args.stream or need > available_memory() // 4
    scratch = tempfile.TemporaryDirectory(prefix="probe-rows-") if stream else None
    out = FeatureRows(f"{scratch.name}/rows.f32", L, run.config["d_model"]) if scratch else None
    types, real = None, None  # real: the targets [n] when the probe is a ridge regression
    if args.task == "pos":
        if "upos" not in fields:
            raise InputError(f"{args.run} has no part-of-speech labels; record the bundled 'ud-ewt-dev' set")
        feats, labels, prompt_of, types = word_features(run, layers, hook=args.hook, out=out)
        name, what = "probes_pos", f"UPOS of {len(labels)} words (first subword token)"
    elif args.task == "antecedent":
        if "answer" not in fields or args.query not in fields:
            raise InputError(f"{args.run} has no antecedent labels ('answer', {args.query!r}); record a set with "
                             "gold antecedents: seed, winobias-dev, toy-coref-test")
        feats, labels, prompt_of, types = antecedent_features(run, layers, query=args.query, hook=args.hook, out=out)
        name = "probes_antecedent" + ("" if args.query == "pronoun_span" else f"_{args.query}")
        what = f"the antecedent (first or second mention) from {args.query}"
    else:
        if not args.label:
            raise InputError("give --label FIELD (a prompt-level label) or --task pos|antecedent")
        if args.label not in fields:
            raise InputError(f"{args.run} has no label field {args.label!r}; its prompts carry {fields}")
        values = [run.labels(i).get(args.label) for i in range(run.n_prompts)]
        keep = np.flatnonzero([v is not None for v in values])  # prompts without the field are left out, not a class
        real = prompt_targets([values[i] for i in keep], args.target, args.label)
        feats = prompt_features(run, layers, args.hook, args.pool, prompts=keep, out=out)
        labels, prompt_of = np.array([str(values[i]) for i in keep]), keep
        name, what = f"probes_{args.label}", f"{args.label!r} from {args.pool}-pooled {args.hook}"
    if stream:
        print(f"streaming {len(labels)} feature rows ({need / 2**30:.2f} GiB bound) from disk through the fit")
    if real is not None:
        if args.mdl:
            raise InputError("--mdl is the online codelength of class labels; this target is real-valued "
                             "(a ridge probe): leave out --mdl, or give --target class")
        table = layer_ridge_probes(feats, real, prompt_of, types=types, seed=args.seed)
    else:
        table = layer_probes(feats, labels, prompt_of, types=types, seed=args.seed)
    if args.mdl:
        if stream:
            raise InputError("--mdl fits probes on growing prefixes in memory; these features are streamed from disk "
                             "(too large for RAM or --stream): leave out --mdl or probe fewer prompts")
        from analyses.probes import online_codelength

        mdl = online_codelength(feats, labels, prompt_of, seed=args.seed)
        table = table.merge(mdl, on="layer")
    out_path = save_result(args.run, name, table)
    kind = "ridge probe (real-valued target; --target class to probe classes)" if real is not None else "probe"
    print(f"{kind} for {what}, {run.n_prompts} prompts -> {out_path}")
    print(table.round(3).to_string(index=False))
    return 0


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux), or a generous guess elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def cmd_patch(args: argparse.Namespace) -> int:
    """Activation patching of clean/corrupted pairs: given texts (or a JSONL file of pairs)
    for any decoder, or the toy coreference model's tired/wide twins by default."""
    from pathlib import Path

    import models
    from analyses.ablation import logit_difference
    from analyses.patching import patch_heads, patch_residual
    from models import InputError

    if args.run:
        return patch_on_run(args)
    model = models.load(args.model or "toy-coref")
    if args.pairs or args.clean_text:
        clean, corrupt, answer, wrong, what = text_pairs(model, args)
    else:
        clean, corrupt, answer, wrong, what = toy_twins(model, args)
    metric = logit_difference(answer, wrong)
    if not args.output:
        raise InputError("give -o DIR for patch_resid.csv and patch_heads.csv")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    resid = patch_residual(model, clean, corrupt, metric, direction=args.direction)
    heads = patch_heads(model, clean, corrupt, metric, direction=args.direction)
    tokens = model.to_str_tokens(clean[0])
    resid["token"] = [tokens[p] for p in resid.position]
    resid.to_csv(out / "patch_resid.csv", index=False)
    heads.to_csv(out / "patch_heads.csv", index=False)
    print(f"{args.direction} patching, {what}, metric: logit difference "
          f"clean {resid.clean.iloc[0]:.2f}, corrupt {resid.corrupt.iloc[0]:.2f}; normalised (patched - corrupt) / "
          "(clean - corrupt):")
    grid = resid.pivot(index="layer", columns="position", values="normalized")
    print("resid_pre  " + " ".join(f"{t[:6]:>6}" for t in tokens))
    for layer, row in grid.iterrows():
        print(f"layer {layer:<4} " + " ".join(f"{v:6.2f}" for v in row))
    print("heads: " + ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r.normalized:.2f}" for _, r in
                                heads.sort_values("normalized", ascending=False).head(args.top).iterrows()))
    print(f"wrote {out / 'patch_resid.csv'} and {out / 'patch_heads.csv'}")
    return 0


def patch_on_run(args: argparse.Namespace) -> int:
    """Patching on the twin prompts of a run with gold antecedents (same pair_id, flipped
    antecedent), measured by the model's answer or an antecedent probe: works on encoders."""
    import models
    from analyses.coref import candidate_attention
    from analyses.coref_interventions import check_model_matches, fit_antecedent_probe, patching_tests, twin_pairs
    from analyses.results import save_result
    from models import InputError
    from probe.reader import open_run

    run = open_run(args.run)
    model = models.load(args.model or run.model_name)
    check_model_matches(model, run)
    _, _, used = candidate_attention(run, query=args.query)
    pairs = twin_pairs(run, used)
    if not pairs:
        raise InputError(f"{args.run} has no twin prompts (same pair_id, different antecedent, same token length); "
                         "record the bundled seed set or toy-coref-test")
    layer = args.layer if args.layer is not None else run.config["n_layers"] - 1
    hook = f"blocks.{layer}.hook_resid_post"
    if hook not in run.hooks and not model.cfg.has_unembed:
        raise InputError(f"{args.run} lacks {hook}, which the antecedent probe reads; record 'blocks.*.hook_resid_post'")
    probe = fit_antecedent_probe(run, used, layer, args.query) if hook in run.hooks else None
    heads, resid = patching_tests(model, run, pairs, probe, args.query, args.direction)
    out = [save_result(run.path, "patch_heads_antecedent", heads), save_result(run.path, "patch_resid_antecedent", resid)]
    print(f"{args.direction} patches of {int(heads.n_pairs.iloc[0])} twin pair(s) of {args.run}, "
          f"metric: {heads.metric.iloc[0]} (clean {heads.clean.iloc[0]:.2f}, corrupt {heads.corrupt.iloc[0]:.2f})")
    print("heads: " + ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r.normalized:.2f}" for _, r in
                                heads.sort_values("normalized", ascending=False).head(args.top).iterrows()))
    print(f"wrote {out[0]} and {out[1]}")
    return 0


def text_pairs(model, args: argparse.Namespace):
    """Token ids of clean/corrupted texts with the answer and wrong-answer token ids; pairs
    from --clean-text/--corrupt-text/--answer/--wrong or a JSONL file with those four fields."""
    import json

    import torch

    from models import InputError

    if not model.cfg.has_unembed:
        raise InputError(f"{args.model} is an encoder without an LM head, so there is no answer logit to patch; "
                         "`probe coref RUN` patches encoder twins measured by an antecedent probe")
    if args.pairs:
        rows = []
        with open(args.pairs, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(f"{args.pairs}:{n}: not valid JSON ({e.msg})") from None
        fields = ("clean", "corrupt", "answer", "wrong")
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict) or any(k not in r for k in fields):
                raise InputError(f"{args.pairs}: pair {n} needs the fields {', '.join(fields)}")
    else:
        if not (args.corrupt_text and args.answer and args.wrong):
            raise InputError("give --clean-text, --corrupt-text, --answer and --wrong together (or --pairs FILE)")
        rows = [{"clean": args.clean_text, "corrupt": args.corrupt_text, "answer": args.answer, "wrong": args.wrong}]
    if not rows:
        raise InputError(f"{args.pairs} holds no pairs")

    clean = [model.tokenize(r["clean"]).ids[0] for r in rows]
    corrupt = [model.tokenize(r["corrupt"]).ids[0] for r in rows]
    lengths = {len(t) for t in clean + corrupt}
    if len(lengths) != 1:
        raise InputError("patching swaps activations position by position, so every clean and corrupted prompt "
                         f"must have the same token length; these have {sorted(lengths)} tokens")
    answer = torch.tensor([one_token_id(model, r["answer"]) for r in rows])
    wrong = torch.tensor([one_token_id(model, r["wrong"]) for r in rows])
    return torch.stack(clean), torch.stack(corrupt), answer, wrong, f"{len(rows)} pair(s)"


def one_token_id(model, word: str) -> int:
    """The token id of an answer that must be one token (the logit difference reads one logit)."""
    from models import InputError

    ids = model.tokenize(word, prepend_bos=False).ids[0].tolist()
    if len(ids) != 1:
        raise InputError(f"the answer {word!r} is {len(ids)} tokens ({model.to_str_tokens(ids)}); the logit "
                         "difference needs one-token answers (with GPT-2-style tokenizers, mind the leading space)")
    return ids[0]


def toy_twins(model, args: argparse.Namespace):
    import torch

    from models import InputError
    from models.tasks import coref

    if model.cfg.model_name != "toy-coref" and args.model not in (None, "toy-coref"):
        raise InputError("without --clean-text/--pairs, probe patch builds the toy coreference task's twins, which "
                         "need --model toy-coref")
    adjectives = coref.ANIMATE_ADJ + coref.PLACE_ADJ
    for adj in (args.clean, args.corrupt):
        if adj not in adjectives:
            raise InputError(f"adjective {adj!r} is not in the toy task's vocabulary; use one of {adjectives}")
    if (args.clean in coref.ANIMATE_ADJ) == (args.corrupt in coref.ANIMATE_ADJ):
        raise InputError("the clean and corrupted adjectives must point to different nouns: pair an animate one "
                         f"({', '.join(coref.ANIMATE_ADJ)}) with a place one ({', '.join(coref.PLACE_ADJ)})")
    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    pairs = [(coref.make_example(a, p, args.clean, 0), coref.make_example(a, p, args.corrupt, 0))
             for a in coref.ANIMATES[:4] for p in coref.PLACES[:4]]
    clean = torch.tensor([coref.ids_of(c, vocab) for c, _ in pairs])
    corrupt = torch.tensor([coref.ids_of(w, vocab) for _, w in pairs])
    answer = torch.tensor([vocab[c.answer] for c, _ in pairs])
    wrong = torch.tensor([vocab[w.answer] for _, w in pairs])
    return clean, corrupt, answer, wrong, f"{len(pairs)} pairs '{args.clean}' vs '{args.corrupt}'"


def cmd_coref(args: argparse.Namespace) -> int:
    import models
    from analyses.coref import write_report
    from probe.reader import open_run

    run = open_run(args.run)
    model = None
    if not args.no_interventions:
        name = args.model or run.model_name
        try:
            model = models.load(name)
        except (models.ModelNotFound, OSError) as e:
            if args.model:  # asked for explicitly: a mistake to report
                raise
            print(f"note: cannot load the run's model {name!r} ({e}); give --model to ablate and patch its heads",
                  file=sys.stderr)
    report = write_report(run, seed=args.seed, top=args.top, query=args.query, model=model)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description="Mechanistic-interpretability workbench.")
    from probe import __version__

    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the seed sentence through the default model and show its heads")
    demo.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    demo.add_argument("-o", "--output", default="runs/demo", help="run directory to (re)create (default runs/demo)")
    demo.add_argument("-n", type=int, default=400, help="WinoBias dev prompts to record (default 400)")
    demo.add_argument("--no-record", action="store_true", help="only print the seed sentence's heads")
    demo.add_argument("--no-serve", action="store_true",
                      help="do not open the dashboard at the end (for scripts; it prints the command instead)")
    demo.add_argument("--port", type=int, default=8050, help="dashboard port (default 8050)")
    demo.set_defaults(func=cmd_demo)

    attend = sub.add_parser("attend", help="heads that attend most from one word to others in a text")
    attend.add_argument("text")
    attend.add_argument("--from", dest="from_word", required=True, help="query word, e.g. it")
    attend.add_argument("--to", nargs="+", required=True, help="key word(s), e.g. animal street")
    attend.add_argument("--top", type=int, default=3)
    attend.add_argument("--model", default="minilm")
    attend.set_defaults(func=cmd_attend)

    rec = sub.add_parser("record", help="record activations of a model on a prompt set into an HDF5 run")
    rec.add_argument("--model", default="minilm", help="model name or checkpoint directory (default: minilm)")
    rec.add_argument("--prompts", required=True,
                     help="a .txt file (one prompt per line), a .jsonl file ({\"text\": ...}), or a bundled set: "
                          "seed, winobias, winobias-dev, winobias-test, ud-ewt-dev, ud-ewt-test")
    rec.add_argument("-o", "--output", required=True, help="run directory to create")
    rec.add_argument("--names", nargs="+", metavar="GLOB",
                     help="hook names or globs to record (default: all but hook_result)")
    rec.add_argument("--batch-size", type=int, default=16)
    rec.add_argument("--dtype", choices=["float16", "float32"], default="float32", help="stored dtype")
    rec.add_argument("--model-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    rec.add_argument("--compression", choices=["none", "gzip", "lz4"], default="none",
                     help="lz4 = blosc-lz4 through hdf5plugin (readers need hdf5plugin too)")
    rec.add_argument("--shard-mb", type=float, default=64.0,
                     help="publish a shard every this many MiB (also the bound on buffered data)")
    rec.add_argument("--truncate", action="store_true",
                     help="cut prompts longer than the context (recorded in the run's metadata) instead of failing")
    rec.add_argument("--resume", action="store_true", help="continue an interrupted run")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing run")
    rec.set_defaults(func=cmd_record)

    tr = sub.add_parser("train", help="train a toy model with known ground truth (induction, coref)")
    tr.add_argument("task", help="induction or coref")
    tr.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    tr.add_argument("--steps", type=int, help="optimisation steps (default: the task's)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    tr.set_defaults(func=cmd_train)

    heads = sub.add_parser("heads", help="per-head attention metrics of a recorded run (saved next to it)")
    heads.add_argument("run", help="run directory written by `probe record`")
    heads.add_argument("--top", type=int, default=3, help="heads to print per metric")
    heads.add_argument("--model", help="model for induction_random (default: the one the run was recorded with)")
    heads.add_argument("--no-model", action="store_true",
                       help="leave out induction_random (TransformerLens's induction score on repeated random tokens), "
                            "which runs the model")
    heads.set_defaults(func=cmd_heads)

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

    pr = sub.add_parser("probes", help="linear probes per layer: a prompt-level label, part of speech, or the antecedent")
    pr.add_argument("run")
    pr.add_argument("--label", help="a prompt-level label field of the run's prompts (e.g. gender, stereotype)")
    pr.add_argument("--task", choices=["pos", "antecedent"],
                    help="pos: part of speech per word (runs of the ud-ewt sets); antecedent: which candidate "
                         "mention the pronoun refers to, from its representation (seed, winobias, toy-coref runs)")
    pr.add_argument("--target", choices=["auto", "class", "real"], default="auto",
                    help="for --label: class (logistic regression, accuracy) or real (ridge regression, R^2); "
                         "auto: real when every value is a number, except 0/1-style integer fields (class indices)")
    pr.add_argument("--query", default="pronoun_span",
                    help="for --task antecedent: the span whose representation is probed (default pronoun_span; "
                         "toy-coref runs also have question_span)")
    pr.add_argument("--mdl", action="store_true",
                    help="add the online-code description length per layer (Voita & Titov 2020): mdl_bits, compression")
    pr.add_argument("--stream", action="store_true",
                    help="stream feature rows from disk through the fit (automatic when they would not fit in RAM)")
    pr.add_argument("--hook", default="hook_resid_post", help="per-layer hook to probe (default hook_resid_post)")
    pr.add_argument("--pool", choices=["mean", "first", "last"], default="mean")
    pr.add_argument("--seed", type=int, default=0)
    pr.set_defaults(func=cmd_probes)

    pa = sub.add_parser("patch", help="activation patching of clean/corrupted prompt pairs ([layer, position], "
                                      "[layer, head])")
    pa.add_argument("--model", help="default: toy-coref, or with --run the model the run was recorded with")
    pa.add_argument("--clean-text", help="clean prompt (with --corrupt-text, --answer, --wrong)")
    pa.add_argument("--corrupt-text", help="corrupted prompt, the same number of tokens as the clean one")
    pa.add_argument("--answer", help="the clean prompt's next token (one token), e.g. ' Mary'")
    pa.add_argument("--wrong", help="the corrupted prompt's next token (one token), e.g. ' John'")
    pa.add_argument("--pairs", help="JSONL file of pairs, one per line: {clean, corrupt, answer, wrong}")
    pa.add_argument("--clean", default="tired", help="toy twins (no texts given): clean adjective (default tired)")
    pa.add_argument("--corrupt", default="wide", help="toy twins: corrupted adjective (default wide)")
    pa.add_argument("--direction", choices=["denoise", "noise"], default="denoise",
                    help="denoise: patch clean activations into the corrupted run (sufficient?); noise: corrupted "
                         "into the clean run (necessary?); normalised 0 = corrupt, 1 = clean either way")
    pa.add_argument("--top", type=int, default=5, help="heads to print")
    pa.add_argument("--run", help="patch the twin prompts of a run with gold antecedents (works on encoders: an "
                                  "antecedent probe at --layer measures); saved next to the run")
    pa.add_argument("--layer", type=int, help="with --run: the probe's layer (default: the last)")
    pa.add_argument("--query", default="pronoun_span", help="with --run: the span the probe reads")
    pa.add_argument("-o", "--output", help="directory for patch_resid.csv and patch_heads.csv")
    pa.set_defaults(func=cmd_patch)

    from dashboard.cli import add_subcommand as add_dashboard

    add_dashboard(sub)

    co = sub.add_parser("coref", help="coreference study: which heads attend from the pronoun to its antecedent")
    co.add_argument("run", help="a run recorded on prompts with gold antecedents (seed, winobias, or JSONL)")
    co.add_argument("--top", type=int, default=5)
    co.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    co.add_argument("--model", help="the model the run was recorded with, for the ablation and patching tests "
                                    "(default: the name recorded in the run)")
    co.add_argument("--no-interventions", action="store_true", help="attention and probes only; no model runs")
    co.add_argument("--query", default="pronoun_span",
                    help="label field of the span that attends (default pronoun_span; the toy task also has "
                         "question_span, where its model answers)")
    co.set_defaults(func=cmd_coref)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes become one clear line; real bugs keep their traceback
        if is_user_error(e):
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"probe {args.command}: error: {msg}", file=sys.stderr)
            return 2
        raise


def is_user_error(e: BaseException) -> bool:
    from models import CheckpointMismatch, InputError, ModelNotFound, UnsupportedArchitecture
    from probe.prompts import PromptSetError

    return isinstance(e, (InputError, ModelNotFound, UnsupportedArchitecture, CheckpointMismatch, KeyError,
                          FileNotFoundError, PermissionError, StoreError, PromptSetError))


if __name__ == "__main__":
    sys.exit(main())
