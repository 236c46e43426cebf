"""Synthetic tasks with known ground truth, used to train the shipped toy models and to
check that analyses find what is really there.

Each task module defines:
    NAME, DESCRIPTION
    vocabulary() -> list[str]                  word-level vocabulary (specials first)
    model_config(vocab_size) -> TransformerConfig
    training_defaults: dict                    steps, batch size, learning rate...
    sample_batch(generator, batch_size) -> (ids [b, p], attention_mask [b, p] or None, loss_mask [b, p-1])
    evaluate(model) -> dict[str, float]         the task's metrics on held-out data
and optionally:
    training_loss(model, batch) -> loss          for models that are not decoder-only LMs (the
                                                 translator: sample_batch gives source and target)
    APPEND_EOS                                   a token the tokenizer appends to every text
"""

from __future__ import annotations

from types import ModuleType


def get_task(name: str) -> ModuleType:
    from . import coref, induction, translate

    tasks = {m.NAME: m for m in (induction, coref, translate)}
    if name not in tasks:
        from probe.errors import InputError

        raise InputError(f"unknown task {name!r}; tasks: {sorted(tasks)}")
    return tasks[name]


SPECIALS = ["<pad>", "<bos>", "<unk>"]
