"""Text to token ids and back, with the checks that turn user mistakes into clear errors."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from probe.errors import InputError

from .config import TransformerConfig


@dataclass
class Tokens:
    ids: torch.Tensor  # [b, p] long, padded
    attention_mask: torch.Tensor  # [b, p] long, 1 for real tokens
    truncated: list[int]  # indices of prompts that were cut to the context length


def encode(
    tokenizer: Any,
    cfg: TransformerConfig,
    text: str | list[str],
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] = "right",
    truncate: bool = False,
) -> Tokens:
    """Tokenize one text or a batch, pad to the longest, and check lengths.

    Special tokens are added as the family's tokenizer adds them ([CLS] ... [SEP] for BERT,
    <s> for Llama). GPT-2-style tokenizers add none; as in TransformerLens a BOS token is
    prepended for them unless ``prepend_bos=False``.
    """
    if tokenizer is None:
        raise InputError("this model has no tokenizer attached; pass token ids (a LongTensor) instead of text")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise InputError("no text given: pass a non-empty string or a non-empty list of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} is a {type(t).__name__}, not a str")
        if not t.strip():
            raise InputError(f"text {i} is empty; every prompt needs at least one non-space character")
    if prepend_bos is None:
        prepend_bos = cfg.default_prepend_bos
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else tokenizer.bos_token_id

    rows: list[list[int]] = []
    truncated: list[int] = []
    for i, t in enumerate(texts):
        ids = list(tokenizer(t, add_special_tokens=True)["input_ids"])
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if len(ids) > cfg.n_ctx:
            if not truncate:
                raise InputError(
                    f"text {i} is {len(ids)} tokens long but {cfg.model_name} takes at most "
                    f"{cfg.n_ctx}; shorten it or pass truncate=True to keep the first {cfg.n_ctx} tokens"
                )
            warnings.warn(f"text {i} truncated from {len(ids)} to {cfg.n_ctx} tokens", stacklevel=3)
            ids = ids[: cfg.n_ctx]
            truncated.append(i)
        rows.append(ids)
    return pad(rows, pad_id(tokenizer, cfg), padding_side, truncated)


def pad(rows: list[list[int]], pad_token: int, side: str, truncated: list[int] | None = None) -> Tokens:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_token, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(n - len(r), n)
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return Tokens(ids, mask, truncated or [])


def pad_id(tokenizer: Any, cfg: TransformerConfig) -> int:
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        cfg.pad_token_id,
        cfg.eos_token_id,
        getattr(tokenizer, "eos_token_id", None),
    ):
        if candidate is not None:
            return int(candidate)
    return 0


def str_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """One string per token, as TransformerLens shows them (" animal" for byte-level BPE,
    "##s" for WordPiece continuations)."""
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
