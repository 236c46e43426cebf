"""`probe ablate --task induction --top-induction K`: the top induction heads (by the
score on repeated random tokens) mean-ablated together against random sets of as many heads
of the same layers, measured by the model's next-token loss. On toy-induction the top head is
a planted one and the random sets are its layer's other heads; on SmolLM2 the top heads
carry the repeat (a real measurement)."""

from __future__ import annotations

import pandas as pd
import pytest

from analyses.ablation_studies import induction_ablation
from probe.cli import main


def test_top_induction_cli_on_toy_induction(tmp_path, capsys):
    out = tmp_path / "ind.csv"
    assert main(["ablate", "--model", "toy-induction", "--task", "induction", "--top-induction", "1", "--draws", "4",
                 "-n", "16", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.condition) == ["clean", "heads", "random", "random", "random", "random"]
    top = table.heads.iloc[1]
    assert top in {"L1H0", "L1H2", "L1H3"}  # a planted induction head
    assert all(h.startswith("L1H") and h != top for h in table.heads.iloc[2:])  # its layer's other heads
    assert table.repeated_half.iloc[1] > table.repeated_half.iloc[0] + 0.2  # the repeat partly lost
    assert "mean-ablating the top induction head of toy-induction vs 4 random sets" in stdout
    assert f"wrote {out}" in stdout


@pytest.mark.parametrize("argv, problem", [
    (["--top-induction", "3"], "layer 1 has 1 head(s) besides the 3 of the set there"),
    (["--draws", "3"], "give --top-induction K"),
    (["--top-induction", "1", "--ablate-mlp", "0"], "--top-induction picks the heads"),
    (["--top-induction", "1", "--metric", "logit-diff"], "measures next-token loss"),
])
def test_top_induction_refusals_are_one_line(argv, problem, capsys):
    assert main(["ablate", "--model", "toy-induction", "--task", "induction", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe ablate: error: ") and problem in err and len(err.splitlines()) == 1


def test_top_induction_refusals_of_other_data_and_of_an_encoder(capsys):
    assert main(["ablate", "--model", "toy-coref", "--prompts", "seed", "--top-induction", "1"]) == 2
    assert "takes no --run or --prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: --ablate-heads or --top-induction
        main(["ablate", "--model", "toy-induction", "--task", "induction", "--top-induction", "1",
              "--ablate-heads", "L1H0"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["ablate", "--model", "minilm", "--task", "induction", "--top-induction", "2"]) == 2
    assert "encoder without an LM head" in capsys.readouterr().err


def test_smollm2_top_induction_heads_carry_the_repeat(smollm2):
    """SmolLM2: mean-ablating its 5 top induction heads raises the loss on the repeated half
    by more than a nat, more than any of 5 random sets of as many heads of the same layers
    (by a nat too), and leaves the first half, which no earlier occurrence predicts, nearly
    as it was. Clean, the model copies: the repeated half costs far less than the first."""
    study = induction_ablation(smollm2, k=5, draws=5, n=8, half=16, seed=0)
    assert len(study.heads) == 5 and study.n_sets > 5
    assert study.loss("clean") < study.loss("clean", "first_half") - 5
    assert study.effect() > 1.0
    assert study.beats_every_draw and study.effect() > study.random_effects().max() + 1.0
    assert abs(study.effect("first_half")) < 0.25
    random_layers = {int(h.split("H")[0][1:]) for heads in study.table.heads.iloc[2:] for h in heads.split()}
    assert random_layers <= {layer for layer, _ in study.heads}
