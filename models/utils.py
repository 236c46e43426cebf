"""TransformerLens's `utils` helpers under their names and signatures, so notebook code written
for `transformer_lens.utils` runs on this package: ``from models import utils``.

Each delegates to this package's one home of the concept where there is one (hook names:
`models.activation_cache.act_name`; the LM loss: `models.loss`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probe.errors import InputError

from .activation_cache import act_name as get_act_name
from .loss import next_token_nll

if TYPE_CHECKING:
    from .hooked_transformer import HookedTransformer


def to_numpy(tensor: Any) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU; bfloat16 as float32, which NumPy
    lacks), a list, a tuple, an array or a Python scalar (TransformerLens's `to_numpy`)."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, torch.Tensor):  # parameters included
        t = tensor.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(tensor, (int, float, bool, str)):
        return np.array(tensor)
    raise InputError(f"to_numpy takes a tensor, array, list, tuple or scalar, not {type(tensor).__name__}")


def get_corner(tensor: Any, n: int = 3) -> torch.Tensor:
    """The top-left ``n x n x ...`` corner of a tensor (every axis cut to its first ``n``), or of a
    `FactoredMatrix`'s product, formed only for that corner (TransformerLens's `get_corner`)."""
    from .factored_matrix import FactoredMatrix

    corner = tensor[tuple(slice(n) for _ in range(tensor.ndim))]
    return corner.AB if isinstance(tensor, FactoredMatrix) else corner


def get_device() -> torch.device:
    """The device a notebook should put its model on (TransformerLens's `get_device`): CUDA when
    there is one, else the CPU. Apple's MPS is not chosen automatically, as in TransformerLens 4.3
    (its results have been unreliable); pass ``device="mps"`` to use it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lm_cross_entropy_loss(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy (TransformerLens's `lm_cross_entropy_loss`): the mean over
    predicted positions, or with ``per_token`` the [batch, pos-1] losses. With an
    ``attention_mask`` ([batch, pos], 1 for real tokens) a position counts only when it and the
    token it predicts are both real; the others are 0 and left out of the mean.

    Computed in float32 by `models.loss.next_token_nll` (TransformerLens keeps the logits'
    dtype). A mask with no valid position gives 0 here (TransformerLens: nan)."""
    if logits.dim() == 2:  # one sequence without a batch axis, as TransformerLens accepts
        out = lm_cross_entropy_loss(logits[None], tokens[None], None if attention_mask is None
                                    else attention_mask[None], per_token)
        return out[0] if per_token else out
    nll = next_token_nll(logits, tokens)
    if attention_mask is None:
        return nll if per_token else nll.mean()
    if attention_mask.shape != tokens.shape:
        raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, the tokens {tuple(tokens.shape)}")
    valid = attention_mask.bool()
    valid = valid[:, :-1] & valid[:, 1:]
    masked = nll.masked_fill(~valid, 0.0)
    return masked if per_token else masked.sum() / valid.sum().clamp(min=1)


def tokenize_and_concatenate(dataset: Any, tokenizer: Any, streaming: bool = False, max_length: int = 1024,
                             column_name: str = "text", add_bos_token: bool = True, num_proc: int | None = 10,
                             set_format: bool = True) -> Any:
    """TransformerLens's `tokenize_and_concatenate` (4.x): each document tokenized without
    special tokens, documents of a map batch joined by one EOS token, cut into rows of
    ``max_length`` (``max_length - 1`` tokens after a BOS with ``add_bos_token``), the remainder
    dropped; a batch shorter than one row becomes one row padded with the pad token (EOS where
    the tokenizer has none). Returns a dataset with the single column "tokens" (torch format
    with ``set_format``).

    ``dataset`` is a Hugging Face ``datasets.Dataset`` or ``IterableDataset``, or anything with
    their ``map(fn, batched=True, remove_columns=..., num_proc=...)``; `datasets` itself is not
    imported here (it is not a dependency of this package). ``num_proc=None`` tokenizes in this
    process. Unlike TransformerLens, a tokenizer without a pad token is left unchanged (it would
    gain a "<PAD>" token that the rows never use)."""
    if not hasattr(dataset, "map"):
        raise InputError(f"tokenize_and_concatenate takes a datasets.Dataset (anything with .map), "
                         f"not {type(dataset).__name__}")
    if tokenizer.eos_token_id is None:
        raise InputError("tokenize_and_concatenate joins documents with EOS; this tokenizer has no EOS token")
    seq_len = max_length - 1 if add_bos_token else max_length
    pad_token = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, np.ndarray]:
        return {"tokens": _rows(tokenizer, batch[column_name], seq_len, pad_token,
                                tokenizer.bos_token_id if add_bos_token else None)}

    columns = getattr(dataset, "column_names", None) or [column_name]
    with _long_inputs_allowed(tokenizer):  # documents may exceed the tokenizer's model_max_length
        out = dataset.map(tokenize, batched=True, remove_columns=list(columns),
                          **({} if streaming else {"num_proc": num_proc}))
    if set_format:
        out.set_format(type="torch", columns=["tokens"])
    return out


def _rows(tokenizer: Any, texts: list[str], seq_len: int, pad_token: int, bos: int | None) -> np.ndarray:
    """[n, seq_len (+1 with a BOS)] rows of one map batch's documents joined by EOS."""
    if not texts:
        return np.array([], dtype=np.int64)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pieces: list[np.ndarray] = []
    for i, ids in enumerate(encoded):
        pieces.append(np.asarray(ids, dtype=np.int64))
        if i < len(encoded) - 1:
            pieces.append(np.array([tokenizer.eos_token_id], dtype=np.int64))
    tokens = np.concatenate(pieces)
    if len(tokens) < seq_len:
        tokens = np.concatenate([tokens, np.full(seq_len - len(tokens), pad_token, dtype=np.int64)])
    n = len(tokens) // seq_len
    rows = tokens[: n * seq_len].reshape(n, seq_len)
    if bos is not None:
        rows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), rows], axis=1)
    return rows


class _long_inputs_allowed:
    """Silences transformers' "sequence longer than the maximum" warning while tokenizing
    whole documents (as TransformerLens does), restoring the tokenizer's flags after."""

    def __init__(self, tokenizer: Any) -> None:
        self.flags = getattr(tokenizer, "deprecation_warnings", None)
        self.saved: dict | None = None

    def __enter__(self) -> None:
        if self.flags is not None:
            self.saved = dict(self.flags)
            self.flags["sequence-length-is-longer-than-the-specified-maximum"] = False

    def __exit__(self, *exc: object) -> None:
        if self.flags is not None and self.saved is not None:
            self.flags.clear()
            self.flags.update(self.saved)


def test_prompt(prompt: str, answer: str | list[str], model: HookedTransformer, prepend_space_to_answer: bool = True,
                print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10) -> None:
    """Print how well ``model`` predicts ``answer`` after ``prompt`` (TransformerLens's
    `test_prompt`, the same report): the tokenized prompt and answer, for each answer token its
    rank, logit and probability, the ``top_k`` tokens, then the ranks. Several answers are
    compared as alternative next tokens (their first tokens)."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    tokens, n_prompt, n_answer = _prompt_and_answers(model, prompt, answers, prepend_bos)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_strs = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    if print_details:
        print("Tokenized prompt:", prompt_str)
        if len(answers) > 1:
            print("Tokenized answers:", answer_strs)
        else:
            print("Tokenized answer:", answer_strs[0])
    with torch.no_grad():
        logits = model(tokens)
    ranks = [_report_position(model, logits, tokens, index, [a[index - n_prompt] for a in answer_strs],
                              print_details, top_k) for index in range(n_prompt, n_prompt + n_answer)]
    _rich_print(f"[b]Ranks of the answer tokens:[/b] {[r[0] for r in ranks] if len(answers) == 1 else ranks}")


# A name pytest would otherwise collect as a test when a test module imports it.
test_prompt.__test__ = False  # type: ignore[attr-defined]


def _prompt_and_answers(model: HookedTransformer, prompt: str, answers: list[str],
                        prepend_bos: bool | None) -> tuple[torch.Tensor, int, int]:
    """([n_answers, pos] prompt + answer ids, prompt length, answer positions scored); several
    answers are only scored on their first token."""
    prompt_ids = model.to_tokens(prompt, prepend_bos=prepend_bos)
    if len(answers) > 1:
        answer_ids = torch.cat([model.to_tokens(a, prepend_bos=False)[:, :1] for a in answers])
    else:
        answer_ids = model.to_tokens(answers, prepend_bos=False)
    tokens = torch.cat((prompt_ids.repeat(answer_ids.shape[0], 1), answer_ids), dim=1)
    return tokens, prompt_ids.shape[1], 1 if len(answers) > 1 else answer_ids.shape[1]


def _report_position(model: HookedTransformer, logits: torch.Tensor, tokens: torch.Tensor, index: int,
                     answer_strs: list[str], print_details: bool, top_k: int) -> list[tuple[str, int]]:
    """[(answer token, rank)] at ``index`` (predicted from ``index - 1``), printing the details."""
    n = tokens.shape[0]
    answer_ids = tokens[:, index]
    probs = logits[:, index - 1].softmax(dim=-1)
    sorted_probs, sorted_ids = probs.sort(descending=True)
    ranks = sorted_ids.argsort(-1)[range(n), answer_ids.cpu()].tolist()
    if print_details:
        lines = [f"[b]Rank: {ranks[i]: <8} Logit: {logits[i, index - 1, answer_ids[i]].item():5.2f} "
                 f"Prob: {probs[i, answer_ids[i]].item():6.2%} Token: |{answer_strs[i]}|[/b]" for i in range(n)]
        _rich_print(f"Performance on answer token{'s' if n > 1 else ''}:\n" + "\n".join(lines))
        for i in range(top_k):
            print(f"Top {i}th token. Logit: {logits[0, index - 1, sorted_ids[0, i]].item():5.2f} "
                  f"Prob: {sorted_probs[0, i].item():6.2%} Token: |{model.to_string(sorted_ids[0, i])}|")
    return list(zip(answer_strs, ranks))


def _rich_print(text: str) -> None:
    # rich renders the [b] markup as TransformerLens's report does (plain text off a terminal).
    from rich import print as rprint

    rprint(text)


__all__ = ["get_act_name", "get_corner", "get_device", "lm_cross_entropy_loss", "test_prompt", "to_numpy", "tokenize_and_concatenate"]
