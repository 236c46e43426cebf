"""models/tokens.py: text the model cannot take (empty, none, too long) and token ids out of
range get a clear error naming the problem and the fix; truncation is opt-in and warns."""

from __future__ import annotations

import pytest
import torch

import models


def test_empty_text_and_too_long_text(minilm):
    with pytest.raises(models.InputError, match="empty"):
        minilm("")
    with pytest.raises(models.InputError, match="empty"):
        minilm(["fine", "   "])
    with pytest.raises(models.InputError, match="no text"):
        minilm([])
    long = "word " * 600
    with pytest.raises(models.InputError, match="at most 512.*truncate=True"):
        minilm(long)
    with pytest.warns(UserWarning, match="truncated"):
        toks = minilm.tokenize(long, truncate=True)
    assert toks.ids.shape[1] == 512 and toks.truncated == [0]
    with pytest.raises(models.InputError, match="at most"):
        minilm(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(models.InputError, match="token ids must lie"):
        minilm(torch.tensor([[1, 10**6]]))
