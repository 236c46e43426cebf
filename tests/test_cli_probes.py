"""`probe probes` end to end on small recorded runs: part of speech, the antecedent, a
real-valued label (ridge) and a boolean one (logistic), results next to the run; labelled
spans that do not align with the text are refused with the prompt and the fix named."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import probe
from probe.cli import main

RESID = ["blocks.*.hook_resid_post"]
WORDS = "the cat dog sat on mat and ran to house big small red blue green old man woman said that".split()


def probes(run, *flags: str) -> int:
    return main(["probes", str(run.path), *flags])


def result(run, name: str) -> pd.DataFrame:
    return pd.read_csv(run.path / "analyses" / f"{name}.csv")


def test_pos_probe_cli(minilm, tmp_path):
    run = probe.record(minilm, probe.load_prompts("ud-ewt-dev")[:30], tmp_path / "ud", names=RESID, progress=False)
    assert probes(run, "--task", "pos") == 0
    table = result(run, "probes_pos")
    assert list(table.layer) == list(range(6))
    # ~400 words of 30 sentences: far above always-NOUN, and above the control task somewhere
    assert table.test_acc.max() > table.majority_baseline.iloc[0] + 0.3
    assert table.selectivity.max() > 0


def test_antecedent_probe_cli(tmp_path):
    import models

    toy = models.load("toy-coref")
    prompts = probe.load_prompts("toy-coref-test")[::12][:240]
    run = probe.record(toy, prompts, tmp_path / "toy", names=RESID, progress=False)
    assert probes(run, "--task", "antecedent", "--query", "question_span") == 0
    question = result(run, "probes_antecedent_question_span")
    assert question.test_acc.iloc[-1] > 0.9 and question.majority_baseline.iloc[0] < 0.65
    assert probes(run, "--task", "antecedent") == 0
    assert result(run, "probes_antecedent").test_acc.max() < 0.75  # causal: the pronoun precedes the cue
    assert probes(run, "--task", "antecedent", "--target", "real") == 2  # antecedents are classes


@pytest.fixture(scope="module")
def numeric_run(tmp_path_factory, minilm):
    """80 prompts of 3..22 random words, labelled with their word count (an int), a float
    of it, a constant, a flag and a category."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("num") / "prompts.jsonl"
    lines = []
    for _ in range(80):
        n = int(rng.integers(3, 23))
        lines.append({"text": " ".join(rng.choice(WORDS, n)), "n_words": n, "half_words": n / 2, "constant": 7.5,
                      "long": bool(n > 12), "parity": "even" if n % 2 == 0 else "odd"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return probe.record(minilm, path, path.parent / "run", names=RESID, progress=False)


def test_real_valued_label_gets_a_ridge_probe(numeric_run, capsys):
    run = numeric_run
    assert probes(run, "--label", "n_words") == 0
    assert "ridge probe" in capsys.readouterr().out
    table = result(run, "probes_n_words")
    assert {"train_r2", "dev_r2", "test_r2", "test_mse", "mean_baseline_r2", "lambda"} <= set(table.columns)
    assert table.mean_baseline_r2.iloc[0] <= 0.05  # predicting the train mean explains nothing
    assert table.test_r2.max() > 0.8 and table.test_r2.max() > table.mean_baseline_r2.iloc[0] + 0.7
    # Halving the target changes nothing but the MSE's scale (ridge is equivariant to it).
    assert probes(run, "--label", "half_words") == 0
    half = result(run, "probes_half_words")
    assert np.allclose(half.test_r2, table.test_r2, atol=1e-3)
    assert np.allclose(half.test_mse, table.test_mse / 4, rtol=1e-2)
    # Streamed from disk through the sufficient statistics: the same table.
    assert probes(run, "--label", "n_words", "--stream") == 0
    streamed = result(run, "probes_n_words")
    assert np.array_equal(streamed["lambda"], table["lambda"])
    assert np.allclose(streamed.test_r2, table.test_r2, atol=1e-4)


def test_target_choice_and_refusals(numeric_run, capsys):
    run = numeric_run
    assert probes(run, "--label", "long") == 0  # booleans are classes
    assert "test_acc" in result(run, "probes_long").columns
    assert probes(run, "--label", "n_words", "--target", "class") == 0  # forced: logistic over 20 lengths
    assert "test_acc" in result(run, "probes_n_words").columns
    capsys.readouterr()
    assert probes(run, "--label", "constant") == 2
    assert "every row has the target value 7.5: a constant target has nothing to predict" in capsys.readouterr().err
    assert probes(run, "--label", "parity", "--target", "real") == 2
    assert "'parity' has the value" in capsys.readouterr().err
    assert probes(run, "--label", "n_words", "--mdl") == 2
    assert "--mdl" in capsys.readouterr().err


def write_pos_prompts(path, spans_of_second: list) -> None:
    """Ten well-formed POS prompts and, second, one whose spans are given."""
    good = {"text": "the cat sat", "words": [[0, 3], [4, 7], [8, 11]], "upos": ["DET", "NOUN", "VERB"]}
    bad = {"text": "the dog ran", "words": spans_of_second, "upos": ["DET", "NOUN", "VERB"][:len(spans_of_second)]}
    path.write_text("".join(json.dumps(p) + "\n" for p in [good, bad] + [good] * 9))


@pytest.mark.parametrize("spans, message", [
    ([[0, 3], [4, 7], [8, 15]], r"span \[8, 15\] does not lie inside its text \(11 characters\)"),
    ([[0, 3], [3, 7], [8, 11]], r"span \[3, 7\] is ' dog', which starts or ends with whitespace"),
    ([[0, 3], [5, 4], [8, 11]], r"span \[5, 4\] does not lie inside"),
])
def test_misaligned_spans_are_refused(minilm, tmp_path, capsys, spans, message):
    path = tmp_path / "pos.jsonl"
    write_pos_prompts(path, spans)
    run = probe.record(minilm, path, tmp_path / "run", names=RESID, progress=False)
    assert probes(run, "--task", "pos") == 2
    err = capsys.readouterr().err
    assert "prompt 1 of" in err and "fix the prompt file" in err
    assert re.search(message, err), err
    assert not (run.path / "analyses" / "probes_pos.csv").exists()


def test_span_covering_no_token_is_refused(tmp_path):
    """A span inside the text that no token overlaps (characters the tokenizer dropped, such
    as a zero-width or control character) is refused too, not skipped."""
    from analyses.probe_features import word_features
    from probe.errors import InputError

    class FakeRun:  # the reader's span interface, with a gap between the tokens
        path, n_prompts, hooks = "RUN", 1, {"blocks.0.hook_resid_post"}
        manifest: dict = {"shards": [{"first_prompt": 0}]}  # one shard (features are read shard by shard)
        prompt_records = [{"text": "a x b", "words": [[0, 1], [2, 3], [4, 5]], "upos": ["X", "X", "X"]}]

        def labels(self, i):
            return {k: v for k, v in self.prompt_records[i].items() if k != "text"}

        def token_spans(self, i):
            return np.array([[-1, -1], [0, 1], [4, 5], [-1, -1]])  # nothing covers the "x"

        def tokens_in(self, i, start, end):
            return [j for j, (a, b) in enumerate(self.token_spans(i)) if a >= 0 and a < end and b > start]

        def prompt_activation(self, name, i):
            return np.zeros((4, 2), np.float32)

    with pytest.raises(InputError, match=r"prompt 0 of RUN: the 'words' span \[2, 3\] \('x'\) covers none of the "
                                         r"prompt's tokens; spans are \[start, end\) character offsets"):
        word_features(FakeRun(), [0])
    FakeRun.prompt_records[0]["words"] = [[0, 1], [4, 5]]  # the aligned spans alone are fine
    FakeRun.prompt_records[0]["upos"] = ["X", "Y"]
    feats, labels, _, _ = word_features(FakeRun(), [0])
    assert list(labels) == ["X", "Y"] and feats.shape == (1, 2, 2)


def test_prompt_label_control_task_and_twin_splits(minilm, tmp_path):
    """WinoBias pronoun gender from mean-pooled resid_post. The gender is a function of the
    pronoun word, so a control task keyed by the pronoun (Hewitt & Liang: one random label
    per type) is learnable too and selectivity is small; keyed by the twin pair (pro/anti
    twins share a pair_id and never straddle the split), the control labels of test prompts
    are unseen and the control stays near chance."""
    from analyses.probe_features import split_groups

    wb = probe.load_prompts("winobias-dev")
    pairs = {p.labels["pair_id"] for p in wb[:150]}  # 150 type-1 pro sentences and their anti twins
    run = probe.record(minilm, [p for p in wb if p.labels["pair_id"] in pairs], tmp_path / "wb", names=RESID,
                       progress=False)
    units = split_groups(run, range(run.n_prompts))
    assert run.n_prompts == 300 and units[0] == f"pair:{run.labels(0)['pair_id']}"
    assert len(set(units)) == 150  # twins share a unit
    assert probes(run, "--label", "gender", "--control", "pronoun") == 0
    by_pronoun = result(run, "probes_gender")
    assert by_pronoun.test_acc.max() > 0.9
    assert by_pronoun.control_test_acc.max() > 0.85 and by_pronoun.selectivity.min() < 0.15
    assert probes(run, "--label", "gender", "--control", "pair_id") == 0
    by_pair = result(run, "probes_gender")
    assert by_pair.control_test_acc.mean() < 0.7 and by_pair.selectivity.mean() > 0.25
    assert probes(run, "--label", "gender", "--control", "no_such_field") == 2


def test_some_prompts_without_pair_id_split_the_same_through_the_cli_and_the_api(minilm, tmp_path):
    """Regression: the CLI and the Python API used to key twins differently ("pair:X" /
    "prompt:i" against "X" / "prompt-i"), so on a run where only some prompts carry a pair_id
    one seed gave two partitions. Now both go through one key: the CLI's table equals the
    API's fitted on the same split units, and twins never straddle the split."""
    from analyses.probe_features import prompt_features, split_groups
    from analyses.probes import layer_probes, split_units

    rng = np.random.default_rng(1)
    rows = []
    for i in range(24):  # 8 twin pairs (z-prefixed ids sort after "prompt-") and 16 single prompts
        words = " ".join(rng.choice(WORDS, 6))
        label = {"text": f"the {words}.", "y": ["a", "b"][i % 2]}
        if i < 16:
            label["pair_id"] = f"z{i // 2}"
        rows.append(label)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = probe.record(minilm, str(path), tmp_path / "run", names=RESID, progress=False)
    units = split_groups(run, range(run.n_prompts))
    split = split_units(units, seed=0)
    for pair in range(8):  # twins land in one split
        assert split[2 * pair] == split[2 * pair + 1]
    old_api = [str(r.get("pair_id", f"prompt-{i}")) for i, r in enumerate(rows)]
    assert not np.array_equal(split_units(old_api, seed=0), split)  # this run does show the old defect
    assert probes(run, "--label", "y") == 0
    labels = np.array([r["y"] for r in rows])
    api = layer_probes(prompt_features(run, range(6)), labels, units, seed=0)
    pd.testing.assert_frame_equal(result(run, "probes_y"), api, check_dtype=False, atol=1e-9)


def test_missing_hook_is_named_with_how_to_record_it(numeric_run, capsys):
    assert probes(numeric_run, "--label", "n_words", "--hook", "hook_mlp_out") == 2
    err = capsys.readouterr().err
    assert "lacks blocks.0.hook_mlp_out" in err and "--names 'blocks.*.hook_mlp_out'" in err


@pytest.mark.parametrize("query, shown", [("answer", "0"), ("pronoun", "'it'"), ("words", r"\[\[0, 3\], \[4, 7\]\]")])
def test_an_antecedent_query_that_is_no_span_field_is_refused(tmp_path, capsys, query, shown):
    import models

    rows = [{"text": p.text, **p.labels, "words": [[0, 3], [4, 7]]} for p in probe.load_prompts("toy-coref-test")[:12]]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = probe.record(models.load("toy-coref"), path, tmp_path / "run", names=RESID, progress=False)
    assert probes(run, "--task", "antecedent", "--query", query) == 2
    err = capsys.readouterr().err
    assert re.search(rf"prompt 0 of .*run: {query!r} is {shown}, not a \[start, end\] character span .*; give --query "
                     "a field that holds one span, e.g. pronoun_span", err), err
    assert len(err.splitlines()) == 1 and not (run.path / "analyses").exists()
