"""`probe patch`: activation patching of clean/corrupted prompt pairs or a run's twin prompts."""

from __future__ import annotations

import argparse


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
    print_top_heads(heads, args.top)
    print(f"wrote {out / 'patch_resid.csv'} and {out / 'patch_heads.csv'}")
    return 0


def print_top_heads(heads, top: int) -> None:
    """The heads whose patch moves the normalised metric most toward clean."""
    print("heads: " + ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r.normalized:.2f}" for _, r in
                                heads.sort_values("normalized", ascending=False).head(top).iterrows()))


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
    # noising reads the other way (1 = no damage), so it never overwrites the denoising tables
    suffix = "" if args.direction == "denoise" else "_noise"
    out = [save_result(run.path, f"patch_heads_antecedent{suffix}", heads),
           save_result(run.path, f"patch_resid_antecedent{suffix}", resid)]
    print(f"{args.direction} patches of {int(heads.n_pairs.iloc[0])} twin pair(s) of {args.run}, "
          f"metric: {heads.metric.iloc[0]} (clean {heads.clean.iloc[0]:.2f}, corrupt {heads.corrupt.iloc[0]:.2f})")
    print_top_heads(heads, args.top)
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


def add_subcommand(sub) -> None:
    """``probe patch``: its arguments, added to the main parser's subcommands."""
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
