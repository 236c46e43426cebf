"""Activation patching (analyses/patching.py, and `probe patch`: analyses/patching_studies.py) on
the toy coreference model with the tired/wide twins."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

import models
from analyses.ablation import logit_difference
from analyses.patching import patch_heads, patch_residual
from models.tasks import coref


@pytest.fixture(scope="module")
def setup():
    model = models.load("toy-coref")
    vocab = {w: i for i, w in enumerate(coref.vocabulary())}
    pairs = [(coref.make_example(a, p, "tired", 0), coref.make_example(a, p, "wide", 0))
             for a, p in [("animal", "street"), ("dog", "road"), ("horse", "river"), ("cat", "bridge")]]
    clean = torch.tensor([coref.ids_of(c, vocab) for c, _ in pairs])
    corrupt = torch.tensor([coref.ids_of(w, vocab) for _, w in pairs])
    animate = torch.tensor([vocab[c.answer] for c, _ in pairs])  # clean answer
    place = torch.tensor([vocab[w.answer] for _, w in pairs])  # corrupted answer
    adjective_positions = {pairs[0][0].adjective_pos, len(coref.ids_of(pairs[0][0], vocab)) - 4}
    return model, clean, corrupt, logit_difference(animate, place), adjective_positions


def test_residual_patching_finds_the_adjective(setup):
    model, clean, corrupt, metric, adjective_positions = setup
    table = patch_residual(model, clean, corrupt, metric)
    assert table.clean.iloc[0] > 0 > table.corrupt.iloc[0]  # the twins flip the answer
    layer0 = table[table.layer == 0].set_index("position").normalized
    differing = set((clean[0] != corrupt[0]).nonzero()[:, 0].tolist())
    assert differing == adjective_positions
    for pos, value in layer0.items():
        if pos not in differing:
            assert abs(value) < 1e-5  # identical tokens: patching changes nothing
    assert layer0[sorted(differing)].sum() > 0.5  # the adjective mentions carry the answer
    # Later layers: the answer has moved to the final position.
    last = table[(table.layer == model.cfg.n_layers - 1)].set_index("position").normalized
    assert last.idxmax() == clean.shape[1] - 1


def test_batched_patching_equals_one_at_a_time(setup):
    model, clean, corrupt, metric, _ = setup
    heads = patch_heads(model, clean, corrupt, metric)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter="blocks.1.attn.hook_z")
        base_clean = metric(model(clean), clean).mean().item()
        base_corrupt = metric(model(corrupt), corrupt).mean().item()

        def hook(z, hook):
            z = z.clone()
            z[:, :, 2] = clean_cache["z", 1][:, :, 2]
            return z

        patched = metric(model.run_with_hooks(corrupt, [("blocks.1.attn.hook_z", hook)]), corrupt).mean().item()
    row = heads[(heads.layer == 1) & (heads["head"] == 2)].iloc[0]
    assert abs(row.normalized - (patched - base_corrupt) / (base_clean - base_corrupt)) < 1e-5
    # a chosen subset of heads gives exactly those rows of the full sweep
    subset = patch_heads(model, clean, corrupt, metric, heads=[(1, 2), (0, 1), (1, 0), (1, 2)])
    assert list(zip(subset.layer, subset["head"])) == [(0, 1), (1, 0), (1, 2)]
    full = heads.set_index(["layer", "head"]).normalized
    for layer, head, value in zip(subset.layer, subset["head"], subset.normalized):
        assert abs(value - full[(layer, head)]) < 1e-6
    with pytest.raises(ValueError, match="not in the model"):
        patch_heads(model, clean, corrupt, metric, heads=[(0, model.cfg.n_heads)])
    noised = patch_residual(model, clean, corrupt, metric, direction="noise")
    assert set(noised.direction) == {"noise"}
    with pytest.raises(ValueError, match="same token length"):
        patch_residual(model, clean, corrupt[:, :-1], metric)


def test_noising_equals_a_hand_built_patch(setup):
    """Noising: run the clean input with one activation replaced by the corrupted run's. The
    normalised value is (patched - corrupt) / (clean - corrupt) as for denoising (Heimersheim
    & Nanda 2024: 0 = corrupted behaviour, 1 = clean), so 1 means the patch did no damage."""
    model, clean, corrupt, metric, adjective_positions = setup
    heads = patch_heads(model, clean, corrupt, metric, direction="noise")
    resid = patch_residual(model, clean, corrupt, metric, direction="noise")
    with torch.no_grad():
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=lambda n: n.endswith(("hook_z", "resid_pre")))
        base_clean = metric(model(clean), clean).mean().item()
        base_corrupt = metric(model(corrupt), corrupt).mean().item()

        def noised(name, index):
            def hook(x, hook):
                x = x.clone()
                x[index] = corrupt_cache[name][index]
                return x

            return metric(model.run_with_hooks(clean, [(name, hook)]), clean).mean().item()

        by_hand = {("head", 1, 2): noised("blocks.1.attn.hook_z", (slice(None), slice(None), 2)),
                   ("head", 0, 3): noised("blocks.0.attn.hook_z", (slice(None), slice(None), 3))}
        adjective = min(adjective_positions)
        for layer, pos in [(0, adjective), (1, clean.shape[1] - 1), (0, 1)]:
            by_hand[("position", layer, pos)] = noised(f"blocks.{layer}.hook_resid_pre", (slice(None), pos))
    assert base_clean > 0 > base_corrupt
    for (key, layer, i), patched in by_hand.items():
        table = heads if key == "head" else resid
        row = table[(table.layer == layer) & (table[key] == i)].iloc[0]
        assert abs(row.patched - patched) < 1e-4, (key, layer, i)
        assert abs(row.normalized - (patched - base_corrupt) / (base_clean - base_corrupt)) < 1e-5
    assert set(heads.direction) == {"noise"} and abs(heads.clean.iloc[0] - base_clean) < 1e-5
    # ground truth: the twins share token 1, so noising it at layer 0 does nothing (exactly 1)
    at = resid.set_index(["layer", "position"]).normalized
    assert abs(at[(0, 1)] - 1) < 1e-5
    assert at[(0, adjective)] < 0.9  # losing the adjective hurts


def test_patch_cli(tmp_path):
    import pandas as pd

    r = run_cli("patch", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    resid = pd.read_csv(tmp_path / "patch_resid.csv")
    last = resid[resid.layer == resid.layer.max()]
    assert last.sort_values("normalized").position.iloc[-1] == last.position.max()  # answer lives at the end
    r = run_cli("patch", "--corrupt", "hungry", "-o", str(tmp_path))
    assert r.returncode == 2 and "different nouns" in r.stderr


@pytest.mark.parametrize("where", ["a file", "under a file", "a run whose analyses is a file"])
def test_patch_refuses_an_output_it_cannot_write_before_patching(tmp_path, capsys, monkeypatch, where):
    from probe.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before -o was checked")

    monkeypatch.setattr(models, "load", no_model)
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    (tmp_path / "run" / "analyses").write_text("keep me")
    out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "sub",
           "a run whose analyses is a file": tmp_path / "run" / "analyses"}[where]
    assert main(["patch", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"probe patch: error: -o {out}") and len(err.splitlines()) == 1
    assert " is a file" in err and "Errno" not in err
    assert (tmp_path / "file").read_text() == (tmp_path / "run" / "analyses").read_text() == "keep me"


@pytest.mark.parametrize("pairs, problem", [
    (None, "is a directory, not a JSONL file; give a JSONL file with the fields clean, corrupt, answer, wrong"),
    (b'{"clean": "caf\xe9"}\n', "line 1 is not valid UTF-8"),
    (b'{"clean": "a", "corrupt": "b", "answer": 3, "wrong": " y"}\n', "line 1: needs the string fields clean, corrupt, "
                                                                     "answer, wrong (answer missing or not a string)"),
])
def test_patch_refuses_pairs_it_cannot_read_in_one_line(tmp_path, capsys, pairs, problem):
    from probe.cli import main

    source = tmp_path
    if pairs is not None:
        source = tmp_path / "pairs.jsonl"
        source.write_bytes(pairs)
    assert main(["patch", "--pairs", str(source), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe patch: error: ") and problem in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_patch_cli_on_text_pairs_equals_the_python_api(setup, tmp_path):
    """Pairs given as texts (a JSONL file) go through the same patching as the API on the same
    token ids; unequal lengths, multi-token answers and encoders are refused clearly."""
    import json

    import pandas as pd

    model, clean, corrupt, metric, _ = setup
    vocab = coref.vocabulary()
    texts = [(" ".join(vocab[i] for i in c.tolist()), " ".join(vocab[i] for i in w.tolist())) for c, w in
             zip(clean, corrupt)]
    pairs = tmp_path / "pairs.jsonl"
    animals = ["animal", "dog", "horse", "cat"]
    places = ["street", "road", "river", "bridge"]
    pairs.write_text("".join(json.dumps({"clean": c, "corrupt": w, "answer": a, "wrong": p}) + "\n"
                             for (c, w), a, p in zip(texts, animals, places)))
    r = run_cli("patch", "--pairs", str(pairs), "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    cli = pd.read_csv(tmp_path / "o" / "patch_heads.csv")
    api = patch_heads(model, clean, corrupt, metric)
    assert torch.allclose(torch.tensor(cli.normalized.values), torch.tensor(api.normalized.values), atol=1e-4)

    def run(*extra):
        return run_cli("patch", *extra, "-o", str(tmp_path / "x"))

    r = run("--clean-text", "the dog was tired", "--corrupt-text", "the dog was very tired", "--answer", "dog",
            "--wrong", "road")
    assert r.returncode == 2 and "same token length" in r.stderr and "[5, 6]" in r.stderr
    r = run("--clean-text", texts[0][0], "--corrupt-text", texts[0][1], "--answer", "dog dog", "--wrong", "road")
    assert r.returncode == 2 and "is 2 tokens" in r.stderr
    r = run("--model", "minilm", "--clean-text", "a", "--corrupt-text", "b", "--answer", "a", "--wrong", "b")
    assert r.returncode == 2 and "encoder without an LM head" in r.stderr
    assert not (tmp_path / "x").exists()  # nothing written on a refused input


def test_patching_a_run_that_has_nothing_to_measure_with(tmp_path):
    """A decoder run whose prompts ask no question (so the model's answer cannot measure a
    patch) and that lacks resid_post (so no antecedent probe can): a clear refusal."""
    import probe

    rows = []
    for p in probe.load_prompts("toy-coref-test")[:40]:
        labels = {k: v for k, v in p.labels.items() if k != "question_span"}
        rows.append(json.dumps({"text": p.text, **labels}))
    (tmp_path / "p.jsonl").write_text("\n".join(rows) + "\n")
    run = probe.record(models.load("toy-coref"), tmp_path / "p.jsonl", tmp_path / "run",
                       names=["blocks.*.attn.hook_pattern"], progress=False)
    r = run_cli("patch", "--run", str(run.path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "record 'blocks.*.hook_resid_post'" in r.stderr
