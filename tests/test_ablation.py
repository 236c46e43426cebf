"""Ablation: the sweep equals ablating heads one at a time, mean/resample use the reference
set, on toy-induction the induction heads matter while other heads do not, and random sets
of as many heads of the same layers are drawn as documented and measured exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import run_cli

import models
from analyses.ablation import (
    ablate_against_random,
    ablate_heads_hooks,
    ablate_mlp_hooks,
    head_ablation_sweep,
    logit_difference,
    next_token_loss,
    replacement,
    resample_pairing,
    same_layer_random_heads,
    same_layer_sets,
)
from models.tasks import coref, induction


@pytest.fixture(scope="module")
def toy():
    return models.load("toy-induction")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    return induction.repeated_tokens(g, 32), induction.repeated_tokens(g, 32)


def test_sweep_equals_one_head_at_a_time(toy, data):
    tokens, reference = data
    metric = next_token_loss(induction.repeated_positions()[1])
    for method in ("zero", "mean", "resample"):
        sweep = head_ablation_sweep(toy, tokens, metric, method=method, reference=reference)
        assert len(sweep) == 8
        for layer, head in [(0, 1), (1, 2)]:
            hooks = ablate_heads_hooks(toy, [(layer, head)], method=method, reference=reference)
            with torch.no_grad():
                alone = metric(toy.run_with_hooks(tokens, hooks), tokens).mean().item()
            row = sweep[(sweep.layer == layer) & (sweep["head"] == head)].iloc[0]
            assert abs(row.ablated - alone) < 1e-4, (method, layer, head)


def test_mean_ablation_replaces_with_the_reference_mean(toy, data):
    tokens, reference = data
    hooks = ablate_heads_hooks(toy, [(1, 3)], method="mean", reference=reference)
    seen = {}
    with torch.no_grad():
        _, ref_cache = toy.run_with_cache(reference, names_filter="blocks.1.attn.hook_z")
        with toy.hooks(hooks + [("blocks.1.attn.hook_z", lambda z, hook: seen.setdefault("z", z))]):
            toy(tokens)
    expected = ref_cache["z", 1][:, :, 3].mean(0)
    assert torch.allclose(seen["z"][:, :, 3], expected.expand_as(seen["z"][:, :, 3]))
    with pytest.raises(ValueError, match="reference"):
        ablate_heads_hooks(toy, [(1, 3)], method="mean")[0][1](torch.zeros(2, 41, 4, 16), None)


def test_resample_never_pairs_an_example_with_itself():
    """With the inputs as their own reference (equal sizes) the pairing is a derangement, for
    every seed; each example's replacement is another example's activation."""
    for n in (2, 3, 5, 32):
        for seed in range(50):
            pick = resample_pairing(n, n, seed)
            assert sorted(pick.tolist()) == list(range(n))  # a permutation
            assert not (pick == torch.arange(n)).any(), (n, seed)
    z = torch.arange(6.0)[:, None, None].expand(6, 3, 2)  # example i holds the value i everywhere
    out = replacement("resample", z, z, seed=3)
    assert (out[:, 0, 0] != torch.arange(6.0)).all() and sorted(out[:, 0, 0].tolist()) == list(range(6))
    assert resample_pairing(4, 100, 0).max() < 100  # a separate, larger reference: independent draws
    with pytest.raises(ValueError, match="at least 2"):
        resample_pairing(1, 1)


def test_resample_sweep_with_the_inputs_as_reference_equals_a_hand_built_hook(toy, data):
    """The CLI's --prompts case (reference = the inputs): the sweep's resample value for a head
    equals a hook written here that swaps in that head's z from the paired other example."""
    tokens = data[0]
    metric = next_token_loss(induction.repeated_positions()[1])
    sweep = head_ablation_sweep(toy, tokens, metric, method="resample", reference=tokens, seed=7)
    pick = resample_pairing(len(tokens), len(tokens), 7)
    with torch.no_grad():
        _, cache = toy.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_z"))
        for layer, head in [(1, 0), (1, 1), (0, 2)]:
            def hook(z, hook, layer=layer, head=head):
                z = z.clone()
                z[:, :, head] = cache["z", layer][pick][:, :, head]
                return z

            by_hand = metric(toy.run_with_hooks(tokens, [(f"blocks.{layer}.attn.hook_z", hook)]), tokens).mean()
            row = sweep[(sweep.layer == layer) & (sweep["head"] == head)].iloc[0]
            assert abs(row.ablated - by_hand.item()) < 1e-4, (layer, head)
    effect = sweep.set_index(["layer", "head"]).effect
    assert effect[(1, 0)] > 0.1  # another sequence's induction output really ablates the head


def test_induction_heads_matter_and_others_do_not(toy, data):
    """Mean ablation (zero ablation of any layer-0 head knocks the residual stream off
    distribution, so every layer-0 head 'matters' under it; mean ablation separates them)."""
    tokens, reference = data
    loss = next_token_loss(induction.repeated_positions()[1])
    sweep = head_ablation_sweep(toy, tokens, loss, method="mean", reference=reference)
    clean = sweep.clean.iloc[0]
    assert clean < 1.0

    def ablated(heads):
        with torch.no_grad():
            hooks = ablate_heads_hooks(toy, heads, method="mean", reference=reference)
            return loss(toy.run_with_hooks(tokens, hooks), tokens).mean().item()

    assert ablated([(1, 0), (1, 2), (1, 3)]) - clean > 2.0  # the induction heads: the repeat is lost
    assert abs(ablated([(1, 1)]) - clean) < 0.1  # the other layer-1 head does nothing for it
    effect = {(int(r.layer), int(r["head"])): r.effect for _, r in sweep.iterrows()}
    assert min(effect[(0, 0)], effect[(0, 2)]) > 3 * effect[(1, 1)] + 0.5  # previous-token heads feed the circuit
    assert min(effect[(1, 0)], effect[(1, 2)], effect[(1, 3)]) > effect[(1, 1)] + 0.2


def test_logit_difference_and_mlp_ablation_on_toy_coref():
    model = models.load("toy-coref")
    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    examples = [e for e in coref.all_examples("test") if e.template == 0][:64]
    tokens = torch.tensor([coref.ids_of(e, vocab) for e in examples])
    answer = torch.tensor([vocab[e.answer] for e in examples])
    wrong = torch.tensor([vocab[e.other] for e in examples])
    metric = logit_difference(answer, wrong)
    with torch.no_grad():
        clean = metric(model(tokens), tokens).mean().item()
        no_mlp = metric(model.run_with_hooks(tokens, ablate_mlp_hooks(model, [0, 1])), tokens).mean().item()
    assert clean > 2.0  # it prefers the right noun
    assert no_mlp < clean


def test_ablate_cli(tmp_path):
    import pandas as pd

    out = tmp_path / "sweep.csv"
    r = run_cli("ablate", "--model", "toy-induction", "--task", "induction", "-n", "16", "-o", str(out))
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(out)
    assert len(table) == 8 and set(table.columns) >= {"layer", "head", "clean", "ablated", "effect"}
    top = table.sort_values("effect", ascending=False).iloc[0]
    assert (top.layer, top["head"]) in {(0, 0), (0, 2)}
    r = run_cli("ablate", "--model", "minilm", "--prompts", "seed", "-o", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_ablate_refuses_an_output_it_cannot_write_before_the_sweep(tmp_path, capsys, monkeypatch, where):
    import analyses.ablation_studies as studies
    from probe.cli import main

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran before -o was checked")

    monkeypatch.setattr(studies, "ablation_study", no_sweep)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("keep me")
    out = tmp_path / "dir" if where == "a directory" else tmp_path / "file" / "sweep.csv"
    assert main(["ablate", "--model", "toy-induction", "--task", "induction", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    problem = "is a directory; name a file to write" if where == "a directory" else "file is a file"
    assert err.startswith(f"probe ablate: error: -o {out}") and problem in err and len(err.splitlines()) == 1
    assert (tmp_path / "file").read_text() == "keep me" and not any((tmp_path / "dir").iterdir())


@pytest.mark.parametrize("kwargs, problem", [({"n": 0}, "n must be at least 1 .*, not 0"),
                                             ({"n": -3}, "n must be at least 1 .*, not -3"),
                                             ({"top": -1}, "top must be a positive integer .*, not -1")])
def test_ablation_study_refuses_counts_below_one(kwargs, problem):
    from analyses.ablation_studies import ablation_study
    from probe.errors import InputError

    with pytest.raises(InputError, match=problem):
        ablation_study("toy-induction", task="induction", **kwargs)


def test_sweep_with_a_per_example_metric_on_toy_coref():
    model = models.load("toy-coref")
    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    examples = [e for e in coref.all_examples("test") if e.template == 1][:16]
    tokens = torch.tensor([coref.ids_of(e, vocab) for e in examples])
    metric = logit_difference(torch.tensor([vocab[e.answer] for e in examples]),
                              torch.tensor([vocab[e.other] for e in examples]))
    sweep = head_ablation_sweep(model, tokens, metric, method="mean", reference=tokens)
    assert sweep.ablated.notna().all() and len(sweep) == 8
    with torch.no_grad():
        hooks = ablate_heads_hooks(model, [(1, 1)], method="mean", reference=tokens)
        alone = metric(model.run_with_hooks(tokens, hooks), tokens).mean().item()
    assert abs(sweep[(sweep.layer == 1) & (sweep["head"] == 1)].ablated.iloc[0] - alone) < 1e-4


def test_ablate_cli_ablates_a_set_of_heads_on_toy_induction(tmp_path):
    """`probe ablate --task induction --ablate-heads`: the planted induction heads together
    lose the repeat (repeated-half loss up by more than a nat); the other layer-1 head alone
    does almost nothing. The CLI's numbers equal hand-built mean-ablation hooks on the same data."""
    import pandas as pd

    rows = {}
    for name, heads in (("induction", ["L1H0", "L1H2", "L1H3"]), ("other", ["L1H1"])):
        out = tmp_path / f"{name}.csv"
        r = run_cli("ablate", "--model", "toy-induction", "--task", "induction", "-n", "32", "--seed", "3",
                    "--ablate-heads", *heads, "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert "clean" in r.stdout and "ablated" in r.stdout
        rows[name] = pd.read_csv(out).iloc[0]
    assert rows["induction"].effect > 1.0
    assert abs(rows["other"].effect) < 0.2
    # the same data built here (the CLI draws inputs then reference from one generator seeded --seed)
    from analyses.head_metrics import random_repeat_tokens

    model = models.load("toy-induction")
    g = torch.Generator().manual_seed(3)
    tokens, reference = random_repeat_tokens(model, 32, generator=g).ids, random_repeat_tokens(model, 32, generator=g).ids
    loss = next_token_loss(induction.repeated_positions()[1])
    with torch.no_grad():
        _, ref = model.run_with_cache(reference, names_filter="blocks.1.attn.hook_z")
        mean = ref["z", 1].mean(0)  # [pos, head, d_head]

        def hook(z, hook):
            z = z.clone()
            z[:, :, [0, 2, 3]] = mean[:, [0, 2, 3]]
            return z

        clean = loss(model(tokens), tokens).mean().item()
        by_hand = loss(model.run_with_hooks(tokens, [("blocks.1.attn.hook_z", hook)]), tokens).mean().item()
    assert abs(rows["induction"].clean - clean) < 1e-4 and abs(rows["induction"].ablated - by_hand) < 1e-4
    r = run_cli("ablate", "--model", "toy-induction", "--task", "induction", "--ablate-mlp", "0")
    assert r.returncode == 2 and "attention-only" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("ablate", "--model", "toy-induction", "--task", "induction", "--ablate-heads", "L1H7")
    assert r.returncode == 2 and "not in toy-induction" in r.stderr


def test_mlp_ablation_on_toy_coref_equals_hand_built_hooks(tmp_path):
    """toy-coref has MLPs: `probe ablate --prompts JSONL --metric logit-diff --ablate-mlp 0`
    (mean and resample, reference = the prompts) against hooks written here: the per-position
    mean of layer 0's MLP output over the prompts, and the output of the paired other prompt."""
    import json

    import pandas as pd

    model = models.load("toy-coref")
    assert not model.cfg.attn_only
    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    examples = [e for e in coref.all_examples("test") if e.template == 0][:24]
    tokens = torch.tensor([coref.ids_of(e, vocab) for e in examples])
    metric = logit_difference(torch.tensor([vocab[e.answer] for e in examples]),
                              torch.tensor([vocab[e.other] for e in examples]))
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": e.text, "answer": e.answer, "wrong": e.other}) + "\n"
                            for e in examples))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
        mlp = cache["blocks.0.hook_mlp_out"]  # [b, pos, d_model]
        pick = resample_pairing(len(examples), len(examples), 0)
        assert not (pick == torch.arange(len(examples))).any()
        expected = {"mean": mlp.mean(0, keepdim=True).expand_as(mlp), "resample": mlp[pick]}
        clean = metric(model(tokens), tokens).mean().item()
        for method, replaced in expected.items():
            hooks = [("blocks.0.hook_mlp_out", lambda x, hook, replaced=replaced: replaced)]
            by_hand = metric(model.run_with_hooks(tokens, hooks), tokens).mean().item()
            out = tmp_path / f"{method}.csv"
            r = run_cli("ablate", "--model", "toy-coref", "--prompts", str(path), "--metric", "logit-diff",
                        "--ablate-mlp", "0", "--method", method, "-o", str(out))
            assert r.returncode == 0, r.stderr
            row = pd.read_csv(out).iloc[0]
            assert abs(row.clean - clean) < 1e-4 and abs(row.ablated - by_hand) < 1e-4, method
            assert row.ablated < clean - 0.5, method  # layer 0's MLP matters for the answer
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": examples[0].text, "answer": "animal"}) + "\n")
    r = run_cli("ablate", "--model", "toy-coref", "--prompts", str(bad), "--metric", "logit-diff", "--ablate-mlp", "0")
    assert r.returncode == 2 and "answer/wrong" in r.stderr and "Traceback" not in r.stderr


def test_ablate_run_without_gold_antecedents_sweeps_loss(tmp_path, minilm):
    """A toy-induction run recorded on repeated-token texts: `probe ablate --run RUN` sweeps
    next-token loss on the run's own prompts (both halves) and saves RUN/analyses/ablation_loss.csv.
    The planted circuit shows: the previous-token heads L0H0 and L0H2 have the two largest
    effects, and in layer 1 the induction heads L1H0, L1H2, L1H3 each matter while L1H1 does
    not. (L0H3, outside the documented ground truth, also matters: about 0.4 nats here, 0.9 on
    the repeated half alone, so the test does not claim the top five are the planted heads.)
    An encoder run is refused."""
    import pandas as pd

    import probe

    g = torch.Generator().manual_seed(11)
    ids = induction.repeated_tokens(g, 24)[:, 1:]  # the recorder prepends <bos>
    texts = [" ".join(f"t{i - len(induction.SPECIALS)}" for i in row.tolist()) for row in ids]
    toy = models.load("toy-induction")
    run = probe.record(toy, texts, tmp_path / "run", names=["blocks.0.attn.hook_pattern"], progress=False)
    assert torch.equal(torch.as_tensor(run.tokens(0)), torch.cat([torch.tensor([toy.cfg.bos_token_id]), ids[0]]))
    r = run_cli("ablate", "--run", str(run.path))
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(run.path / "analyses" / "ablation_loss.csv")
    assert len(table) == 8 and set(table.method) == {"mean"}
    effect = table.set_index(["layer", "head"]).effect
    assert set(effect.sort_values(ascending=False).index[:2]) == {(0, 0), (0, 2)}
    assert min(effect[(1, 0)], effect[(1, 2)], effect[(1, 3)]) > abs(effect[(1, 1)]) + 0.08
    r = run_cli("ablate", "--run", str(run.path), "--metric", "accuracy")  # no antecedents to be accurate about
    assert r.returncode == 2 and "no gold antecedents" in r.stderr and "Traceback" not in r.stderr
    enc = probe.record(minilm, ["A cat sat.", "A dog ran."], tmp_path / "enc", names=["blocks.0.attn.hook_pattern"],
                       progress=False)
    r = run_cli("ablate", "--run", str(enc.path))
    assert r.returncode == 2 and "encoder without an LM head" in r.stderr and "Traceback" not in r.stderr


def test_same_layer_random_heads_match_the_layers_and_cover_every_set():
    """As many heads per layer as the set has there, never one of the set; over many draws
    every such set turns up, and same_layer_sets counts them (checked by enumeration)."""
    import itertools

    import numpy as np

    from probe.errors import InputError

    heads = [(1, 0), (1, 2), (0, 3), (3, 1), (3, 2)]
    n_heads = 5
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        drawn = same_layer_random_heads(heads, n_heads, rng)
        assert sorted(layer for layer, _ in drawn) == sorted(layer for layer, _ in heads)
        assert not set(drawn) & set(heads) and len(set(drawn)) == len(drawn)
        seen.add(tuple(sorted(drawn)))
    others = {layer: [h for h in range(n_heads) if (layer, h) not in heads] for layer in (0, 1, 3)}
    every = {tuple(sorted([(0, a), *((1, b) for b in bs), *((3, c) for c in cs)]))
             for a in others[0] for bs in itertools.combinations(others[1], 2)
             for cs in itertools.combinations(others[3], 2)}
    assert seen == every and same_layer_sets(heads, n_heads) == len(every) == 4 * 3 * 3
    with pytest.raises(InputError, match="layer 1 has 1 head"):
        same_layer_random_heads([(1, 0), (1, 1), (1, 2)], 4, rng)


def test_ablate_against_random_equals_hand_built_mean_ablation(toy, data):
    """Every row of the comparison (clean, the set, each random set) equals mean ablation
    written here: z of the row's heads replaced by its per-position mean over the reference,
    the whole forward pass run (the comparison starts at the set's first layer)."""
    import numpy as np

    from probe.head_labels import parse_heads

    tokens, reference = data
    first, repeated = induction.repeated_positions()
    metrics = {"first_half": next_token_loss(first), "repeated_half": next_token_loss(repeated)}
    table = ablate_against_random(toy, tokens, metrics, [(1, 2)], draws=3, reference=reference, seed=4)
    assert list(table.condition) == ["clean", "heads", "random", "random", "random"]
    assert list(table.draw) == [-1, -1, 0, 1, 2]
    with torch.no_grad():
        _, ref = toy.run_with_cache(reference, names_filter=lambda name: name.endswith("hook_z"))
        for _, row in table.iterrows():
            ablated = parse_heads(row.heads.split()) if row.heads else []
            if row.condition == "random":
                assert len(ablated) == 1 and ablated[0][0] == 1 and ablated[0][1] != 2

            def hook(z, hook, ablated=ablated):
                z = z.clone()
                for layer, head in ablated:
                    if hook.name == f"blocks.{layer}.attn.hook_z":
                        z[:, :, head] = ref["z", layer][:, :, head].mean(0)
                return z

            logits = toy.run_with_hooks(tokens, [("blocks.*.attn.hook_z", hook)])
            for name, metric in metrics.items():
                expected = metric(logits, tokens).mean().item()
                assert abs(row[name] - expected) < 1e-4, (row.condition, row.draw, name)
                clean = table[name].iloc[0]
                assert np.isclose(row[f"effect_{name}"], row[name] - clean)
    assert table.heads.iloc[1] == "L1H2"
