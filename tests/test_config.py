"""models/config.py: a `TransformerConfig` that cannot describe a model is refused when it is
made (InputError naming the field and the fix), so a bad checkpoint config never reaches a
division by zero or a silently truthy string; the one config the toy models ship with passes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from models.config import TransformerConfig
from probe.errors import InputError

SMALL = dict(d_model=16, n_layers=1, n_heads=2, d_vocab=20, n_ctx=12)


@pytest.mark.parametrize("changes, problem", [
    ({"n_heads": 0}, "n_heads must be a positive integer, not 0"),
    ({"n_heads": -2}, "n_heads must be a positive integer, not -2"),
    ({"d_model": 0}, "d_model must be a positive integer"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
    ({"n_heads": 3}, "d_model=16 is not divisible by n_heads=3"),
    ({"n_kv_heads": 0}, "n_kv_heads must be a positive integer"),
    ({"d_head": 0}, "d_head must be a positive integer"),
    ({"n_heads": "2"}, "n_heads must be an integer, not the str '2'"),
    ({"n_heads": True}, "n_heads must be an integer, not the bool True"),
    ({"causal": "false"}, "causal must be true or false, not the str 'false'"),
    ({"norm": "batchnorm"}, "norm must be one of 'layernorm', 'rmsnorm', not 'batchnorm'"),
    ({"norm_eps": 0}, "norm_eps must be a positive finite number"),
    ({"norm_eps": float("nan")}, "norm_eps must be a positive finite number"),
    ({"rotary_base": "1e4"}, "rotary_base must be a number, not the str '1e4'"),
])
def test_a_config_that_cannot_describe_a_model_is_refused(changes, problem):
    with pytest.raises(InputError, match="^" + problem.replace("(", r"\(").replace(")", r"\)")):
        TransformerConfig(**{**SMALL, **changes})


def test_from_dict_names_unknown_and_missing_fields():
    good = TransformerConfig(**SMALL).to_dict()
    with pytest.raises(InputError, match=r"unknown field 'bogus'.*known fields: act_fn"):
        TransformerConfig.from_dict({**good, "bogus": 1})
    with pytest.raises(InputError, match=r"lacks the field 'd_model', which every config needs"):
        TransformerConfig.from_dict({k: v for k, v in good.items() if k != "d_model"})
    with pytest.raises(InputError, match="must be a JSON object of fields, not a list"):
        TransformerConfig.from_dict([1, 2])  # type: ignore[arg-type]
    assert TransformerConfig.from_dict(good) == TransformerConfig(**SMALL)


def test_the_shipped_toy_configs_are_valid():
    zoo = Path(__file__).resolve().parents[1] / "models" / "zoo"
    for path in zoo.glob("*/probe_config.json"):
        cfg = TransformerConfig.from_dict(json.loads(path.read_text()))
        assert dataclasses.asdict(cfg) == json.loads(path.read_text())
