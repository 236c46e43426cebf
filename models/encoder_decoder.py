"""`HookedEncoderDecoder`: the Transformer of Vaswani et al. (2017), an encoder and a decoder
joined by source-target (cross-)attention, configured by `TransformerConfig` (T5, BART, Marian,
the original's sinusoidal post-norm ReLU model) and built from the same blocks as
`HookedTransformer`.

Read top to bottom: embed the source, run the encoder's blocks (bidirectional), its final norm
where the family has one; embed the target, run the decoder's blocks (causal self-attention, then
cross-attention reading the encoder's output, then the MLP), its final norm, the unembedding.

Hook names follow TransformerLens's `HookedEncoderDecoder` (T5): ``encoder.{l}.*`` and
``decoder.{l}.*`` per block, the decoder's source-target attention under
``decoder.{l}.cross_attn.*`` (hook_q, hook_k, hook_v, hook_attn_scores, hook_pattern
[b, head, target_pos, source_pos], hook_z, hook_result), ``decoder.{l}.hook_cross_attn_out`` and
``decoder.{l}.hook_resid_mid_cross`` (the stream after cross-attention). docs/encoder-decoder.md
maps them to TransformerLens's bridge names (``encoder_blocks.{l}``, ``decoder_blocks.{l}``).

Positions, as the families define them (and `transformers` computes them): 0, 1, ... from the
start of each sequence whatever the padding, so a left-padded source shifts; T5's relative
position bias is shift-invariant anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    RelativePositionBias,
    SinusoidalPosEmbed,
    TransformerBlock,
    Unembed,
    make_norm,
)
from .config import TransformerConfig
from .hooked_model import HookedModel
from .loss import lm_loss
from .tokens import Tokens, encode, str_tokens

Side = Literal["source", "target"]
TextOrIds = str | list[str] | torch.Tensor


@dataclass
class Seq2SeqCache:
    """What generation keeps between steps: the encoder's output and which source positions are
    real (computed once), the decoder's self-attention keys and values (growing), and the
    cross-attention keys and values of the source (computed at the first step, then reused)."""

    encoder_out: torch.Tensor  # [b, s, m]
    source_valid: torch.Tensor | None  # [b, s] bool; None when nothing is padded
    self_attn: KVCache
    cross_attn: KVCache

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the batch rows ``rows`` (in that order): beam search's reordering of its beams."""
        self.encoder_out = self.encoder_out[rows]
        if self.source_valid is not None:
            self.source_valid = self.source_valid[rows]
        for cache in (self.self_attn, self.cross_attn):
            cache.layers = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in cache.layers]
            if cache.key_valid is not None:
                cache.key_valid = cache.key_valid[rows]


class HookedEncoderDecoder(HookedModel):
    def __init__(self, cfg: TransformerConfig, tokenizer: Any = None):
        super().__init__()
        if not cfg.encoder_decoder:
            raise InputError(f"{cfg.model_name} is not an encoder-decoder config (encoder_decoder is false); "
                             "use HookedTransformer")
        if cfg.positional == "rotary":
            raise InputError("rotary positions are not implemented for encoder-decoder models")
        self.cfg = cfg
        self.tokenizer = tokenizer
        # One token table for source, target and (tied) unembedding, as T5, BART and Marian share.
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [b, s, m] source token embeddings
        self.hook_decoder_embed = HookPoint()  # [b, t, m] target token embeddings
        if cfg.positional == "learned":
            self.pos_embed, self.decoder_pos_embed = PosEmbed(cfg), PosEmbed(cfg)
        elif cfg.positional == "sinusoidal":
            self.pos_embed, self.decoder_pos_embed = SinusoidalPosEmbed(cfg), SinusoidalPosEmbed(cfg)
        elif cfg.positional == "relative":
            self.encoder_rel_pos = RelativePositionBias(cfg, bidirectional=True)
            self.decoder_rel_pos = RelativePositionBias(cfg, bidirectional=False)
        if cfg.positional in ("learned", "sinusoidal"):
            self.hook_pos_embed = HookPoint()  # [b, s, m]
            self.hook_decoder_pos_embed = HookPoint()  # [b, t, m]
        if cfg.embed_norm:
            self.encoder_ln_embed, self.decoder_ln_embed = make_norm(cfg), make_norm(cfg)
        self.encoder = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        if cfg.final_norm:
            self.encoder_final_ln = make_norm(cfg)
        assert cfg.n_decoder_layers is not None
        self.decoder = nn.ModuleList(TransformerBlock(cfg, layer, cross_attention=True)
                                     for layer in range(cfg.n_decoder_layers))
        if cfg.final_norm:
            self.decoder_final_ln = make_norm(cfg)
        self.unembed = Unembed(cfg.d_model, cfg.d_vocab, bias=cfg.unembed_bias)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.W_E
        self.setup_hooks()
        self._record_placement()

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str | list[str], side: Side = "source", padding_side: Literal["left", "right"] = "right",
                 truncate: bool = False, prepend_bos: bool | None = None) -> Tokens:
        """Token ids and padding mask of source texts, or of target texts as the decoder reads them:
        the tokenizer's target ids (``text_target``) after the decoder start token, so position t
        predicts target token t."""
        if side not in ("source", "target"):
            raise InputError(f"side must be 'source' or 'target', not {side!r}")
        if side == "source":
            return encode(self.tokenizer, self.cfg, text, False, padding_side, truncate)
        start = self.decoder_start_id()
        tokens = encode(_TargetSide(self.tokenizer) if self.tokenizer is not None else None, self.cfg, text, False,
                        "right", truncate)
        ids = torch.cat([torch.full_like(tokens.ids[:, :1], start), tokens.ids], dim=1)
        mask = torch.cat([torch.ones_like(tokens.attention_mask[:, :1]), tokens.attention_mask], dim=1)
        if ids.shape[1] > self.cfg.n_ctx:
            raise InputError(f"a target is {ids.shape[1]} tokens long with the start token; "
                             f"{self.cfg.model_name} takes at most {self.cfg.n_ctx}")
        return Tokens(ids, mask, tokens.truncated)

    def to_tokens(self, text: str | list[str], side: Side = "source", padding_side: Literal["left", "right"] = "right",
                  truncate: bool = False) -> torch.Tensor:
        """[batch, pos] ids of source texts, or (``side="target"``) of targets as the decoder reads them."""
        return self.tokenize(text, side, padding_side, truncate).ids.to(self.device)

    def to_str_tokens(self, input: str | torch.Tensor | list[int], side: Side = "source") -> list[str]:
        ids = self.tokenize(input, side).ids[0].tolist() if isinstance(input, str) else torch.as_tensor(input).reshape(-1).tolist()
        return str_tokens(self.tokenizer, ids)

    def to_string(self, tokens: torch.Tensor | list) -> str | list[str]:
        t = torch.as_tensor(tokens)
        if t.dim() == 2:
            return self.tokenizer.batch_decode(t.tolist(), skip_special_tokens=True)
        return self.tokenizer.decode(t.reshape(-1).tolist(), skip_special_tokens=True)

    def decoder_start_id(self) -> int:
        start = self.cfg.decoder_start_token_id
        if start is None:
            raise InputError(f"{self.cfg.model_name} has no decoder_start_token_id; pass the target as token ids "
                             "beginning with its start token")
        return start

    def _ids(self, input: TextOrIds | None, mask: torch.Tensor | None, side: Side) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ids [b, p] on the model's device and a padding mask (None when nothing is padded)."""
        if input is None:
            raise InputError("an encoder-decoder model needs a source: pass the source text or ids first, "
                             "the target second")
        if isinstance(input, (str, list)):
            tok = self.tokenize(input, side)
            ids, mask = tok.ids, tok.attention_mask
        elif isinstance(input, torch.Tensor):
            if input.dtype not in (torch.long, torch.int32, torch.int64):
                raise InputError(f"{side} token ids must be an integer tensor, got {input.dtype}")
            ids = input if input.dim() == 2 else input[None]
            if ids.shape[-1] == 0:
                raise InputError(f"empty {side}: the token tensor has no positions")
        else:
            raise InputError(f"the {side} must be a str, a list of str or a LongTensor of ids, not {type(input).__name__}")
        if int(ids.max()) >= self.cfg.d_vocab or int(ids.min()) < 0:
            raise InputError(f"{side} token ids must lie in [0, {self.cfg.d_vocab}); got {int(ids.min())}..{int(ids.max())}")
        if mask is not None:
            if mask.shape != ids.shape:
                raise InputError(f"the {side} attention mask is {tuple(mask.shape)}, its ids {tuple(ids.shape)}")
            empty = (~mask.bool()).all(-1).nonzero().flatten().tolist()
            if empty:
                raise InputError(f"{side} row {empty[0]} is all padding (its attention mask has no 1); every "
                                 f"{side} needs at least one real token")
            mask = None if bool(mask.all()) else mask.to(self.device).bool()
        return ids.to(self.device), mask

    # ------------------------------------------------------------------ forward
    def forward(self, input: TextOrIds | None, decoder_input: TextOrIds | None = None,
                attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                return_type: Literal["logits", "hidden", "loss", "both"] | None = "logits") -> Any:
        """Run source [b, s] and target [b, t] (text or ids; the target as the decoder reads it, from
        the start token) through both stacks. Returns logits [b, t, vocab], the decoder's final
        hidden states [b, t, m] ("hidden"), the mean next-token loss on the target ("loss"), both,
        or None. A target is required: use `encode` for the encoder alone, `generate` to decode."""
        if decoder_input is None:
            raise InputError("no target given: pass decoder_input (the target text or ids from the start token); "
                             "encode(source) runs the encoder alone and generate(source) decodes")
        source, source_valid = self._ids(input, attention_mask, "source")
        target, target_valid = self._ids(decoder_input, decoder_attention_mask, "target")
        if source.shape[0] != target.shape[0]:
            raise InputError(f"{source.shape[0]} sources but {target.shape[0]} targets; pass one target per source")
        encoder_out = self.encode(source, source_valid)
        x = self.decode(target, encoder_out, source_valid, target_valid)
        if return_type is None:  # a run for its hooks
            return None
        if return_type == "hidden":
            return x
        logits = self.logits_from(x)
        if return_type in ("loss", "both"):
            loss = lm_loss(logits, target, target_valid)
            return loss if return_type == "loss" else (logits, loss)
        return logits

    def encode(self, source: TextOrIds, source_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output [b, s, m] (after its final norm), what cross-attention reads."""
        if not isinstance(source, torch.Tensor) or source_valid is not None and source_valid.dtype != torch.bool:
            source, source_valid = self._ids(source, source_valid, "source")
        cfg = self.cfg
        x = self._embed(source, 0, self.hook_embed, "pos_embed", "hook_pos_embed", "encoder_ln_embed")
        mask = AttentionMask.build(source_valid, source.shape[1], 0, causal=False)
        bias = self.encoder_rel_pos(source.shape[1], source.shape[1]) if cfg.positional == "relative" else None
        for block in self.encoder:
            x = block(x, mask, None, position_bias=bias)
        return self.encoder_final_ln(x) if cfg.final_norm else x

    def decode(self, target: torch.Tensor, encoder_out: torch.Tensor, source_valid: torch.Tensor | None,
               target_valid: torch.Tensor | None = None, cache: Seq2SeqCache | None = None) -> torch.Tensor:
        """The decoder's final stream [b, t, m] (after its final norm, before the logit scale) for
        target ids [b, t] (the new ones only, with a ``cache``)."""
        cfg = self.cfg
        past = cache.self_attn.past_len if cache is not None else 0
        t = target.shape[1]
        if past + t > cfg.n_ctx and cfg.positional in ("learned", "sinusoidal"):
            raise InputError(f"the target is {past + t} tokens long but {cfg.model_name} takes at most {cfg.n_ctx}")
        key_valid = target_valid
        if cache is not None:
            new = target_valid if target_valid is not None else torch.ones_like(target, dtype=torch.bool)
            key_valid = new if cache.self_attn.key_valid is None else torch.cat((cache.self_attn.key_valid, new), 1)
            cache.self_attn.key_valid = key_valid
        x = self._embed(target, past, self.hook_decoder_embed, "decoder_pos_embed", "hook_decoder_pos_embed",
                        "decoder_ln_embed")
        mask = AttentionMask.build(key_valid, t, past, causal=True)
        cross_mask = AttentionMask.cross(source_valid, key_valid[:, past:] if key_valid is not None else None)
        bias = self.decoder_rel_pos(t, past + t, past) if cfg.positional == "relative" else None
        for block in self.decoder:
            x = block(x, mask, None, cache.self_attn if cache else None, source=encoder_out, cross_mask=cross_mask,
                      position_bias=bias, cross_cache=cache.cross_attn if cache else None)
        return self.decoder_final_ln(x) if cfg.final_norm else x

    def _embed(self, tokens: torch.Tensor, past: int, hook: HookPoint, pos: str, pos_hook: str, norm: str) -> torch.Tensor:
        """Token ids [b, p] -> stream [b, p, m]: scaled token embedding, absolute positions from
        ``past`` (learned or sinusoidal families), the embedding norm where the family has one."""
        cfg = self.cfg
        x = self.embed(tokens)
        x = hook(x * cfg.embed_scale if cfg.embed_scale != 1.0 else x)
        if cfg.positional in ("learned", "sinusoidal"):
            positions = torch.arange(past, past + tokens.shape[1], device=tokens.device).expand(tokens.shape)
            x = x + getattr(self, pos_hook)(getattr(self, pos)(positions))
        if cfg.embed_norm:
            x = getattr(self, norm)(x)
        return x

    def new_cache(self, source: torch.Tensor, source_valid: torch.Tensor | None) -> Seq2SeqCache:
        """Encode the source once and start an empty decoding cache for it."""
        assert self.cfg.n_decoder_layers is not None
        return Seq2SeqCache(self.encode(source, source_valid), source_valid, KVCache(self.cfg.n_decoder_layers),
                            KVCache(self.cfg.n_decoder_layers))

    def logits_from(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's final stream [b, t, m] to logits [b, t, vocab]."""
        return self.unembed(x * self.cfg.logit_scale if self.cfg.logit_scale != 1.0 else x)

    def _tokenize_for_cache(self, input: Any, kwargs: dict[str, Any]) -> Any:
        return input  # forward tokenizes both sides itself

    # ------------------------------------------------------------------ weights (TransformerLens's views)
    @property
    def W_E(self) -> torch.Tensor:  # [vocab, m]
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:  # [m, vocab]
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:  # [vocab]
        return self.unembed.b_U

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input: TextOrIds, max_new_tokens: int = 20, *, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> Any:
        """Translate ``input`` (see `models.seq2seq_generation.generate`: greedy, sampling, beam search)."""
        from .seq2seq_generation import generate

        return generate(self, input, max_new_tokens, attention_mask=attention_mask, **kwargs)


class _TargetSide:
    """A tokenizer seen from the target side: ``tok(text)`` gives the target ids (transformers'
    ``text_target``, which some tokenizers, Marian's, encode with a different vocabulary)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.bos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        try:
            return self.tokenizer(text_target=text, add_special_tokens=add_special_tokens)
        except TypeError:  # a tokenizer without a target side: the same encoding
            return self.tokenizer(text, add_special_tokens=add_special_tokens)

    def __bool__(self) -> bool:
        return self.tokenizer is not None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)
