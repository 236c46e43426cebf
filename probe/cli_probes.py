"""`probe probes`: linear (logistic or ridge) probes per layer of a recorded run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported inside the commands, so `probe --help` stays fast
    import numpy as np


def cmd_probes(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from analyses.probe_features import FeatureRows, antecedent_features, prompt_features, word_features
    from analyses.probes import layer_probes
    from analyses.results import save_result
    from analyses.ridge_probes import layer_ridge_probes, prompt_targets
    from analyses.run_checks import require_layer_hooks
    from models import InputError
    from probe.reader import open_run

    if args.task and args.target == "real":
        raise InputError(f"--task {args.task} probes classes; --target real is for a numeric --label field")
    run = open_run(args.run)
    L = run.config["n_layers"]
    layers = range(L)
    require_layer_hooks(run, args.hook, "probes")
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
        # twin prompts (same pair_id: WinoBias pro/anti, WinoGender's genders) differ in a word or
        # two, so they are one split unit: a probe must not be tested on the twin of a train prompt
        labels, prompt_of = np.array([str(values[i]) for i in keep]), split_units_of(run, keep)
        name, what = f"probes_{args.label}", f"{args.label!r} from {args.pool}-pooled {args.hook}"
        if args.control:
            types = control_types(run, keep, args.control, fields)
            what += f", control task: a random label per {args.control!r} value"
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


def split_units_of(run, prompts) -> np.ndarray:
    """The split unit of each prompt: its pair_id where it has one, else the prompt itself."""
    import numpy as np

    units = []
    for i in prompts:
        pair = run.labels(int(i)).get("pair_id")
        units.append(f"pair:{pair}" if pair is not None else f"prompt:{int(i)}")
    return np.array(units)


def control_types(run, prompts, field: str, fields: list[str]) -> list[str]:
    """The word type of each prompt for a prompt-level label's control task (Hewitt & Liang:
    every type gets one random label): the value of another label field, e.g. the pronoun for
    a gender probe, so the control measures what a probe gets from memorising that field."""
    from models import InputError

    if field not in fields:
        raise InputError(f"--control {field!r}: the run's prompts have no such field; they carry {fields}")
    values = [run.labels(int(i)).get(field) for i in prompts]
    missing = [int(i) for i, v in zip(prompts, values) if v is None]
    if missing:
        raise InputError(f"--control {field!r}: prompts {missing[:5]} lack that field; every probed prompt needs it")
    return [str(v).lower() for v in values]


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


def add_subcommand(sub) -> None:
    """``probe probes``: its arguments, added to the main parser's subcommands."""
    pr = sub.add_parser("probes", help="linear probes per layer: a prompt-level label, part of speech, or the antecedent")
    pr.add_argument("run")
    pr.add_argument("--label", help="a prompt-level label field of the run's prompts (e.g. gender, stereotype)")
    pr.add_argument("--task", choices=["pos", "antecedent"],
                    help="pos: part of speech per word (runs of the ud-ewt sets); antecedent: which candidate "
                         "mention the pronoun refers to, from its representation (seed, winobias, toy-coref runs)")
    pr.add_argument("--control", metavar="FIELD",
                    help="for --label: run Hewitt & Liang's control task with this label field as the word type "
                         "(one random label per value, e.g. --control pronoun for a gender probe) and report "
                         "control accuracy and selectivity; pos and antecedent have their own control tasks")
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
