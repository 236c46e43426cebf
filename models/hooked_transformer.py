"""`HookedTransformer`: one model class for every family, configured by `TransformerConfig`.

Read top to bottom like nanoGPT: embeddings, blocks, final norm, unembedding. Every
activation passes through a named `HookPoint` (TransformerLens names and axis orders).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from probe.errors import InputError
from probe.hooks import HookPoint

from .components import (
    AttentionMask,
    Embed,
    KVCache,
    PosEmbed,
    Rotary,
    SinusoidalPosEmbed,
    TokenTypeEmbed,
    TransformerBlock,
    Unembed,
    make_norm,
)
from .config import TransformerConfig
from .hooked_model import HookedModel
from .loss import lm_loss, next_token_nll
from .tokens import Tokens, encode, str_tokens

ModelInput = str | list[str] | torch.Tensor
ReturnType = Literal["logits", "hidden", "loss", "both"] | None


class HookedTransformer(HookedModel):
    def __init__(self, cfg: TransformerConfig, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [b, p, m]
        if cfg.positional in ("learned", "sinusoidal"):
            self.pos_embed = PosEmbed(cfg) if cfg.positional == "learned" else SinusoidalPosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [b, p, m]
        if cfg.n_token_types:
            self.token_type_embed = TokenTypeEmbed(cfg)
            self.hook_token_type_embed = HookPoint()  # [b, p, m]
        if cfg.embed_norm:
            self.ln_embed = make_norm(cfg)
        # Rotary tables are shared by all layers; each Attention applies them.
        self.rotary = Rotary(cfg) if cfg.positional == "rotary" else None
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        if cfg.final_norm:
            self.ln_final = make_norm(cfg)
        if cfg.has_unembed:
            self.unembed = Unembed(cfg.d_model, cfg.d_vocab, bias=cfg.unembed_bias)
            if cfg.tie_embeddings:
                self.unembed.weight = self.embed.W_E
        self.setup_hooks()
        self._record_placement()

    # ------------------------------------------------------------------ TransformerLens entry points
    @classmethod
    def from_pretrained(cls, name: str, fold_ln: bool = True, center_writing_weights: bool = True,
                        center_unembed: bool = True, fold_value_biases: bool = True,
                        refactor_factored_attn_matrices: bool = False, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32) -> HookedTransformer:
        """TransformerLens's entry point with its defaults: `models.load(name)` (raw weights),
        then `process_weights_` (fold the norms, centre the writing weights and the unembedding,
        fold the value biases), in float32, then cast to ``dtype``. `models.load` stays the way
        to get the checkpoint's own weights; `from_pretrained_no_processing` is this without
        processing."""
        from .loading import _dtype, load

        model = load(name, device=device, dtype=torch.float32)
        model.process_weights_(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                               center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                               refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        return model.to(_dtype(dtype))

    @classmethod
    def from_pretrained_no_processing(cls, name: str, **kwargs: Any) -> HookedTransformer:
        """`from_pretrained` with every processing step off: the checkpoint's weights."""
        flags = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                     refactor_factored_attn_matrices=False)
        return cls.from_pretrained(name, **{**flags, **kwargs})

    def process_weights_(self, fold_ln: bool = True, center_writing_weights: bool = True,
                         center_unembed: bool = True, fold_value_biases: bool = True,
                         refactor_factored_attn_matrices: bool = False) -> HookedTransformer:
        """Process the weights in place as TransformerLens does (`models.weight_processing`);
        a step the model cannot take (RMSNorm centring, post-norm folding) is skipped with a
        warning. Running it again is harmless: every step is idempotent."""
        from .weight_processing import process_weights

        return process_weights(self, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                               center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                               refactor_factored_attn_matrices=refactor_factored_attn_matrices)

    # ------------------------------------------------------------------ stacked weights
    # TransformerLens's stacked views, [n_layers, ...] (read-only: they are built from the
    # blocks' weights on each access). W_K/W_V/b_K/b_V have one entry per query head (the
    # kv heads repeated), as HookedTransformer's; components.Attention explains why.
    def _stack(self, part: str, name: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    @property
    def W_Q(self) -> torch.Tensor:  # [l, h, m, d]
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> torch.Tensor:  # [l, h, m, d]
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> torch.Tensor:  # [l, h, m, d]
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> torch.Tensor:  # [l, h, d, m]
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> torch.Tensor:  # [l, h, d]
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> torch.Tensor:  # [l, h, d]
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> torch.Tensor:  # [l, h, d]
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> torch.Tensor:  # [l, m]
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> torch.Tensor:  # [l, m, f]
        return self._stack("mlp", "W_in")

    @property
    def W_gate(self) -> torch.Tensor | None:  # [l, m, f]; None without a gated MLP
        return self._stack("mlp", "W_gate") if self.cfg.gated_mlp else None

    @property
    def W_out(self) -> torch.Tensor:  # [l, f, m]
        return self._stack("mlp", "W_out")

    @property
    def b_in(self) -> torch.Tensor:  # [l, f]
        return self._stack("mlp", "b_in")

    @property
    def b_out(self) -> torch.Tensor:  # [l, m]
        return self._stack("mlp", "b_out")

    @property
    def W_E(self) -> torch.Tensor:  # [vocab, m]
        return self.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:  # [n_ctx, m]; learned or sinusoidal positions only
        if not hasattr(self, "pos_embed"):
            raise AttributeError(f"W_pos: {self.cfg.model_name} has no position table "
                                 f"(positional_embedding_type={self.cfg.positional_embedding_type!r})")
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> torch.Tensor:  # [vocab + n_ctx, m]
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def W_U(self) -> torch.Tensor:  # [m, vocab]
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:  # [vocab]; zeros without an unembedding bias
        return self.unembed.b_U

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str | list[str], prepend_bos: bool | None = None,
                 padding_side: Literal["left", "right"] = "right", truncate: bool = False) -> Tokens:
        """Token ids and attention mask for a text or a batch of texts (padded)."""
        return encode(self.tokenizer, self.cfg, text, prepend_bos, padding_side, truncate)

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None,
                  padding_side: Literal["left", "right"] = "right", truncate: bool = False) -> torch.Tensor:
        """[batch, pos] token ids, as TransformerLens's `to_tokens` (padded with pad id)."""
        return self.tokenize(text, prepend_bos, padding_side, truncate).ids.to(self.device)

    def to_str_tokens(self, input: str | list | torch.Tensor | Any, prepend_bos: bool | None = None,
                      padding_side: Literal["left", "right"] | None = None) -> list[str] | list[list[str]]:
        """One string per token of a text or an id sequence (1-D, or [1, pos]); a list of
        texts (or of id lists) gives one list per item, as TransformerLens's `to_str_tokens`.
        A bare list of ints is one sequence (TransformerLens would treat it as items)."""
        if isinstance(input, list) and input and not all(isinstance(t, int) for t in input):
            return [self.to_str_tokens(item, prepend_bos, padding_side) for item in input]  # type: ignore[misc]
        if isinstance(input, str):
            ids = self.tokenize(input, prepend_bos, padding_side or "right").ids[0].tolist()
        else:
            ids = _one_sequence(input)
        return str_tokens(self.tokenizer, ids)

    def to_string(self, tokens: torch.Tensor | list | Any) -> str | list[str]:
        """Decode ids: a 1-D sequence to a string, a [batch, pos] batch to a list of strings
        (TransformerLens's `to_string`; special tokens and padding are kept, as there)."""
        t = torch.as_tensor(tokens)
        if t.dim() == 2:
            return self.tokenizer.batch_decode(t.tolist(), clean_up_tokenization_spaces=False)
        if t.dim() <= 1:
            return self.tokenizer.decode(t.reshape(-1).tolist(), clean_up_tokenization_spaces=False)
        raise InputError(f"to_string takes [pos] or [batch, pos] ids, got shape {tuple(t.shape)}")

    def get_token_position(self, single_token: str | int | torch.Tensor, input: str | torch.Tensor,
                           mode: Literal["first", "last"] = "first", prepend_bos: bool | None = None,
                           padding_side: Literal["left", "right"] | None = None) -> int:
        """The position of ``single_token`` (a one-token string or an id) in a text or a [pos] /
        [1, pos] id tensor (TransformerLens's `get_token_position`): its first or last occurrence."""
        if mode not in ("first", "last"):
            raise InputError(f"mode must be 'first' or 'last', not {mode!r}")
        tokens = self.to_tokens(input, prepend_bos, padding_side or "right")[0] if isinstance(input, str) else input
        ids = torch.as_tensor(_one_sequence(tokens))
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        where = (ids == token).nonzero().flatten()
        if len(where) == 0:
            raise InputError(f"token {token} ({self.to_string([token])!r}) does not occur in the input")
        return int(where[0] if mode == "first" else where[-1])

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """The unembedding columns of ``tokens`` ([*tokens.shape, d_model]; [d_model] for one):
        the residual directions whose dot product is each token's logit (before the final norm)."""
        from .cache_analysis import tokens_to_residual_directions

        return tokens_to_residual_directions(self, tokens)

    def loss_fn(self, logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
        """TransformerLens's `loss_fn`: next-token cross-entropy of ``logits`` [b, p, vocab] on
        ``tokens`` [b, p] (`models.utils.lm_cross_entropy_loss`); ``per_token`` gives [b, p-1]."""
        from .utils import lm_cross_entropy_loss

        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    def to_single_token(self, string: str) -> int:
        """The id of a string that must be exactly one token (as TransformerLens's
        `to_single_token`): an answer whose logit a metric reads."""
        ids = self.tokenize(string, prepend_bos=False).ids[0].tolist()
        if len(ids) != 1:
            raise InputError(f"the answer {string!r} is {len(ids)} tokens ({self.to_str_tokens(ids)}); the logit "
                             "difference needs one-token answers (with GPT-2-style tokenizers, mind the leading space)")
        return ids[0]

    def _prepare(self, input: ModelInput, attention_mask: torch.Tensor | None, prepend_bos: bool | None = None,
                 padding_side: Literal["left", "right"] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(input, (str, list)):
            tok = self.tokenize(input, prepend_bos, padding_side or "right")
            ids, mask = tok.ids, tok.attention_mask
            if bool(mask.all()):
                mask = None
        elif isinstance(input, torch.Tensor):
            if input.dtype not in (torch.long, torch.int32, torch.int64):
                raise InputError(f"token ids must be an integer tensor, got {input.dtype}")
            ids = input if input.dim() == 2 else input[None]
            if ids.shape[-1] == 0:
                raise InputError("empty input: the token tensor has no positions")
            mask = attention_mask
        else:
            raise InputError(f"input must be a str, a list of str or a LongTensor of token ids, got {type(input).__name__}")
        if int(ids.max()) >= self.cfg.d_vocab or int(ids.min()) < 0:
            raise InputError(f"token ids must lie in [0, {self.cfg.d_vocab}); got {int(ids.min())}..{int(ids.max())}")
        return ids.to(self.device), (mask.to(self.device) if mask is not None else None)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input: ModelInput,
        attention_mask: torch.Tensor | None = None,  # [b, p], 1 for real tokens
        token_type_ids: torch.Tensor | None = None,  # [b, p]
        position_ids: torch.Tensor | None = None,  # [b, p]
        return_type: ReturnType = "logits",
        stop_at_layer: int | None = None,
        kv_cache: KVCache | None = None,
        start_at_layer: int | None = None,
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        """Run the model (TransformerLens's arguments and defaults). Returns logits [b, p, vocab]
        (decoders), final hidden states [b, p, m] (encoders without an LM head, or
        ``return_type="hidden"``), the mean next-token loss over real tokens (``"loss"``;
        ``loss_per_token``: [b, p-1], 0 where the target or its context is padding), both, or
        None (``return_type=None``, for a run whose hooks are the point). ``stop_at_layer``
        returns the residual stream [b, p, m] entering that block, as TransformerLens.
        With ``start_at_layer``, ``input`` is the residual stream [b, p, m] entering that block
        (e.g. a cached ``resid_pre``), and the embedding and earlier blocks are skipped; give
        the same ``attention_mask`` as the original run. ``prepend_bos``/``padding_side`` apply
        to text input. Unlike TransformerLens, a padded query attends to nothing but itself
        and its pattern row is zero (components.AttentionMask), so padding never leaks into sums."""
        tokens, resid, mask = self._inputs(input, attention_mask, return_type, kv_cache, start_at_layer,
                                           prepend_bos, padding_side)
        src = tokens if tokens is not None else resid  # ids [b, p] or residual [b, p, m]
        key_valid, past_len = self._key_valid(src, mask, kv_cache)  # [b, past + p] | None
        if position_ids is None:
            position_ids = self._positions(src, key_valid, past_len)  # [b, p]
        attn_mask = AttentionMask.build(key_valid, src.shape[1], past_len, self.cfg.causal)

        x = resid if tokens is None else self._embed(tokens, position_ids, token_type_ids)  # [b, p, m]
        x = self._blocks(x, attn_mask, position_ids, kv_cache, start_at_layer, stop_at_layer)
        if stop_at_layer is not None:
            return x
        out = self._unembed(x, tokens, key_valid, return_type, loss_per_token)
        return None if return_type is None else out

    def _inputs(
        self,
        input: ModelInput,
        attention_mask: torch.Tensor | None,
        return_type: str | None,
        kv_cache: KVCache | None,
        start_at_layer: int | None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(tokens [b, p], None, mask [b, p] | None), or with ``start_at_layer``
        (None, residual stream [b, p, m], mask [b, p] | None)."""
        if start_at_layer is None:
            tokens, mask = self._prepare(input, attention_mask, prepend_bos, padding_side)
            return tokens, None, mask
        if not (isinstance(input, torch.Tensor) and input.is_floating_point() and input.dim() == 3):
            raise InputError("with start_at_layer, the input is the residual stream [batch, pos, d_model]")
        # No token ids: nothing to embed, to predict, or to append to a cache's positions.
        if kv_cache is not None or return_type in ("loss", "both"):
            raise InputError("start_at_layer works without a KV cache and without a loss (no token ids)")
        return None, input, (attention_mask.to(input.device) if attention_mask is not None else None)

    def _key_valid(
        self, x: torch.Tensor, mask: torch.Tensor | None, kv_cache: KVCache | None
    ) -> tuple[torch.Tensor | None, int]:
        """Which keys are real tokens, [b, past + p] bool (None: all of them, no cache), and
        the number of cached positions. Checks the context length, then records the new
        positions' validity in ``kv_cache``. ``x``: token ids [b, p] or residual [b, p, m]."""
        cfg = self.cfg
        b, p = x.shape[:2]
        past_len = kv_cache.past_len if kv_cache is not None else 0
        # Only absolute position tables have a hard end; rotary models run past n_ctx.
        if past_len + p > cfg.n_ctx and cfg.positional in ("learned", "sinusoidal"):
            raise InputError(f"input is {past_len + p} tokens long but {cfg.model_name} takes at most {cfg.n_ctx}")
        if kv_cache is None:
            return (mask.bool() if mask is not None else None), past_len
        # With a cache, keep validity for every position so far: later steps mask old padding too.
        new_valid = mask.bool() if mask is not None else torch.ones(b, p, dtype=torch.bool, device=x.device)
        key_valid = new_valid if kv_cache.key_valid is None else torch.cat((kv_cache.key_valid, new_valid), 1)
        kv_cache.key_valid = key_valid
        return key_valid, past_len

    def _positions(self, x: torch.Tensor, key_valid: torch.Tensor | None, past_len: int) -> torch.Tensor:
        """Default position ids [b, p] of the new positions (after ``past_len`` cached ones)."""
        b, p = x.shape[:2]
        if key_valid is not None:
            # Count only real tokens, so left padding does not shift positions.
            return (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        return torch.arange(past_len, past_len + p, device=x.device).expand(b, p)

    def _embed(
        self, tokens: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Token ids [b, p] -> residual stream [b, p, m]: token, positional and token-type
        embeddings (each through its hook), then the embedding norm where the family has one."""
        cfg = self.cfg
        x = self.hook_embed(self.embed(tokens))
        if cfg.positional in ("learned", "sinusoidal"):  # rotary positions act inside attention instead
            x = x + self.hook_pos_embed(self.pos_embed(position_ids))
        if cfg.n_token_types:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(tokens)
            x = x + self.hook_token_type_embed(self.token_type_embed(token_type_ids))
        if cfg.embed_norm:
            x = self.ln_embed(x)
        return x

    def _blocks(
        self,
        x: torch.Tensor,
        attn_mask: AttentionMask,
        position_ids: torch.Tensor,
        kv_cache: KVCache | None,
        start_at_layer: int | None,
        stop_at_layer: int | None,
    ) -> torch.Tensor:
        """Residual [b, p, m] through blocks ``start_at_layer:stop_at_layer``; the rotary
        tables (shared by every layer) are computed once for these positions."""
        rotary = self.rotary.cos_sin(position_ids, x.dtype) if self.rotary is not None else None
        for block in self.blocks[start_at_layer:stop_at_layer]:
            x = block(x, attn_mask, rotary, kv_cache)
        return x

    def _unembed(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor | None,
        key_valid: torch.Tensor | None,
        return_type: str | None,
        loss_per_token: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Final norm, then hidden [b, p, m], logits [b, p, vocab], loss [] or (logits, loss)."""
        cfg = self.cfg
        if cfg.final_norm:
            x = self.ln_final(x)
        if return_type == "hidden" or not cfg.has_unembed:
            # Without an LM head the answer is the hidden states; a loss is refused only
            # here, after the blocks ran (and their hooks fired), as it always was.
            if return_type in ("loss", "both"):
                raise InputError(f"{cfg.model_name} has no LM head, so it has no next-token loss")
            return x
        logits = self.unembed(x)
        if return_type in ("loss", "both"):
            assert tokens is not None  # _inputs refuses a loss without token ids
            loss = _per_token_loss(logits, tokens, key_valid) if loss_per_token else lm_loss(logits, tokens, key_valid)
            return loss if return_type == "loss" else (logits, loss)
        return logits

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input: str | list[str] | torch.Tensor = "", max_new_tokens: int = 10,
                 stop_at_eos: bool = True, eos_token_id: int | list[int] | tuple[int, ...] | None = None,
                 do_sample: bool = True, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0, freq_penalty: float = 0.0, use_past_kv_cache: bool = True,
                 prepend_bos: bool | None = None, padding_side: Literal["left", "right"] | None = None,
                 return_type: Literal["input", "str", "tokens"] | None = "input", verbose: bool = True, *,
                 seed: int | None = None, attention_mask: torch.Tensor | None = None,
                 use_kv_cache: bool | None = None) -> str | list[str] | torch.Tensor:
        """Sample up to ``max_new_tokens`` tokens, with TransformerLens's arguments and defaults:
        it samples unless ``do_sample=False`` (greedy, as is ``temperature=0``), from the logits
        divided by ``temperature``, minus ``freq_penalty`` times each token's count so far, then
        top-k or else top-p filtered (TransformerLens's ``sample_logits``). Stops a row at
        ``eos_token_id`` (an id or a list; default the model's EOS) and pads finished rows with
        EOS. ``return_type="input"`` answers a str for a str, a list of str for a list and token
        ids for ids; "str" or "tokens" choose. ``verbose`` shows a progress bar. Hooks fire at
        every step; with the KV cache a step's hooks see only the new position.

        Where this differs from TransformerLens, on purpose:
        - a list of texts is a batch, left-padded with a padding mask (TransformerLens 2 takes
          one text); ``padding_side="right"`` is refused, a padded id tensor takes
          ``attention_mask``; the frequency penalty does not count padding;
        - ``temperature`` other than 1.0 or 0 with ``do_sample=False``, negative temperatures
          and ``top_k`` together with ``top_p`` raise `InputError` (TransformerLens ignores
          the temperature, and ``top_p``, silently);
        - ``seed`` draws from a private generator, reproducible without touching torch's
          global one; without it the draw is TransformerLens's (``torch.manual_seed`` works);
        - with no EOS known (a toy vocabulary) ``stop_at_eos`` has nothing to stop at;
        - ``use_kv_cache`` is an alias of ``use_past_kv_cache``."""
        from .generation import generate

        if use_kv_cache is not None:
            if not use_past_kv_cache and use_kv_cache:
                raise InputError("use_kv_cache=True contradicts use_past_kv_cache=False; pass one")
            use_past_kv_cache = use_kv_cache
        return generate(self, input, max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p,
                        temperature, freq_penalty, use_past_kv_cache, prepend_bos, padding_side, return_type,
                        verbose, seed=seed, attention_mask=attention_mask)

    # ------------------------------------------------------------------ factored circuits
    # TransformerLens's model-level OV / QK: every head's circuit stacked, [l, h, m, m] (built from
    # the stacked views on each access, so they follow the weights).
    @property
    def OV(self):  # FactoredMatrix(W_V, W_O), [l, h, m, m]
        from .factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self):  # FactoredMatrix(W_Q, W_K^T), [l, h, m, m]
        from .factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))


def _one_sequence(tokens: Any) -> list[int]:
    """Ids of one sequence from a [pos] / [1, pos] tensor or array, a list of ints, or one id."""
    t = torch.as_tensor(tokens)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() > 1:
        raise InputError(f"one sequence expected ([pos] or [1, pos]), got shape {tuple(t.shape)}; index the batch first")
    return t.reshape(-1).tolist()


def _per_token_loss(logits: torch.Tensor, tokens: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """[b, p-1] next-token loss (TransformerLens's ``loss_per_token``), 0 where the target or
    the token predicting it is padding."""
    nll = next_token_nll(logits, tokens)
    if key_valid is None:
        return nll
    valid = key_valid[:, -tokens.shape[1]:]
    return nll * (valid[:, 1:] & valid[:, :-1])
