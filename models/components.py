"""The pieces of a transformer, each a short module with its hook points.

Attention is written as the textbook formulas (Q = X W_Q, scores = Q K^T / sqrt(d_head),
pattern = softmax(scores), z = pattern V, out = concat_heads(z) W_O). When nothing is hooked
on the scores or the pattern, the same maths runs through PyTorch's fused
`scaled_dot_product_attention`, so an unhooked model costs what the bare model costs.

Shapes: b = batch, p = position (q/k for query/key positions), h = head, d = d_head,
m = d_model, f = d_mlp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from torch import nn

from probe.errors import InputError
from probe.hooks import HookPoint

from .config import TransformerConfig


# ---------------------------------------------------------------- attention context
@dataclass
class AttentionMask:
    """What every attention layer of one forward pass needs to know about masking.

    ``allowed`` is None when the fused kernel can mask by itself (no padding: causal via
    ``is_causal``, or bidirectional with nothing to hide); otherwise a boolean
    [b, 1, q, k] tensor, True where a query may attend to a key. A query at a padded
    position may attend to itself only, so no row is empty (no NaN) and no real query ever
    sees a padded key.
    """

    allowed: torch.Tensor | None  # [b, 1, q, k] bool
    is_causal: bool  # use the fused kernel's own causal mask (only when allowed is None)
    query_valid: torch.Tensor | None  # [b, q] bool, None when there is no padding

    def future(self, n: int, device: torch.device) -> torch.Tensor:
        """[n, n] True above the diagonal (keys after the query), built once per forward."""
        cached = getattr(self, "_future", None)
        if cached is None or cached.shape[0] != n or cached.device != device:
            cached = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
            self._future = cached
        return cached

    @classmethod
    def build(
        cls, key_valid: torch.Tensor | None, q_len: int, past_len: int, causal: bool
    ) -> AttentionMask:
        k_len = past_len + q_len
        if key_valid is None or bool(key_valid.all()):
            if not causal or q_len == 1:
                return cls(None, False, None)
            if past_len == 0:
                return cls(None, True, None)
            # all keys real: one row stands for the batch, on the inputs' device
            key_valid = key_valid[:1] if key_valid is not None else torch.ones(1, k_len, dtype=torch.bool)
        device = key_valid.device
        q_pos = torch.arange(past_len, k_len, device=device)[:, None]  # [q, 1]
        k_pos = torch.arange(k_len, device=device)[None, :]  # [1, k]
        allowed = key_valid[:, None, :]  # [b, 1, k]
        if causal:
            allowed = allowed & (k_pos <= q_pos)  # [b, q, k]
        allowed = allowed | (k_pos == q_pos)
        query_valid = key_valid[:, past_len:]
        return cls(allowed[:, None], False, query_valid if not bool(query_valid.all()) else None)


    @classmethod
    def cross(cls, source_valid: torch.Tensor | None, target_valid: torch.Tensor | None) -> AttentionMask:
        """Cross-attention's mask: every target query may read every real source key
        (``source_valid`` [b, k]); rows of padded targets are zeroed (``target_valid`` [b, q])."""
        allowed = None if source_valid is None or bool(source_valid.all()) else source_valid[:, None, None, :]
        query_valid = None if target_valid is None or bool(target_valid.all()) else target_valid
        return cls(allowed, False, query_valid)


# ---------------------------------------------------------------- embeddings
class Embed(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        # initialised as GPT-2 (and TransformerLens) do: torch.empty would leave garbage (1e35)
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [b, p] -> [b, p, m]
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    """Learned absolute positions (GPT-2, BERT)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        # BART's table has pos_offset unused rows in front (its learned positions start at 2)
        self.offset = cfg.pos_offset
        self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx + cfg.pos_offset, cfg.d_model) * 0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # [b, p] -> [b, p, m]
        return F.embedding(positions + self.offset if self.offset else positions, self.W_pos)


class SinusoidalPosEmbed(nn.Module):
    """Fixed sinusoidal positions of Vaswani et al. (2017), section 3.5:
    PE[pos, 2i] = sin(pos / 10000^(2i/m)), PE[pos, 2i+1] = cos(pos / 10000^(2i/m)); with
    ``cfg.sinusoidal_layout == "halves"`` (Marian) the same sines fill the first half of the
    row and the cosines the second."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        pos = torch.arange(cfg.n_ctx, dtype=torch.float64)[:, None]
        inv = 10000.0 ** (-torch.arange(0, cfg.d_model, 2, dtype=torch.float64) / cfg.d_model)
        table = torch.zeros(cfg.n_ctx, cfg.d_model, dtype=torch.float64)
        if cfg.sinusoidal_layout == "halves":
            half = (cfg.d_model + 1) // 2
            table[:, :half] = torch.sin(pos * inv)
            table[:, half:] = torch.cos(pos * inv)[:, : cfg.d_model // 2]
        else:
            table[:, 0::2] = torch.sin(pos * inv)
            table[:, 1::2] = torch.cos(pos * inv)[:, : cfg.d_model // 2]
        self.register_buffer("W_pos", table.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(positions, self.W_pos)


class TokenTypeEmbed(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_token_type = nn.Parameter(torch.randn(cfg.n_token_types, cfg.d_model) * 0.02)

    def forward(self, token_type_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_type_ids, self.W_token_type)


class Rotary(nn.Module):
    """Rotary positions (Su et al. 2021) in the "rotate half" layout of GPT-NeoX and Llama,
    applied to the first ``rotary_dim`` dimensions of each head (partial rotary)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        dim = cfg.rotary_dim
        assert dim is not None
        inv_freq = 1.0 / (cfg.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rotary_dim = dim

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [b, p, dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # [b, p, 1, dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [b, p, h, d]
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        half = self.rotary_dim // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class RelativePositionBias(nn.Module):
    """T5's relative position bias (Raffel et al. 2020): a learned scalar per head for each bucket
    of key position minus query position, added to the attention scores of every layer of a
    stack. Buckets are exact for small distances and logarithmic up to ``relative_max_distance``;
    the encoder's are bidirectional (half the buckets for keys after the query), the decoder's
    look back only."""

    def __init__(self, cfg: TransformerConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.W_rel = nn.Parameter(torch.randn(cfg.relative_buckets, cfg.n_heads) * 0.02)  # [buckets, h]
        self.hook_position_bias = HookPoint()  # [1, h, q, k]

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:  # [q, k] key - query -> bucket ids
        n, buckets = self.n_buckets, torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            buckets = buckets + (relative > 0).long() * n
            distance = relative.abs()
        else:
            distance = (-relative).clamp(min=0)
        exact = n // 2
        # log-spaced buckets from `exact` to max_distance (clamped: the log of 0 is never taken)
        far = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
                       * (n - exact)).long()
        return buckets + torch.where(distance < exact, distance, far.clamp(max=n - 1))

    def forward(self, q_len: int, k_len: int, past_len: int = 0) -> torch.Tensor:  # -> [1, h, q, k]
        device = self.W_rel.device
        query = torch.arange(past_len, past_len + q_len, device=device)[:, None]
        key = torch.arange(k_len, device=device)[None, :]
        bias = F.embedding(self.bucket(key - query), self.W_rel)  # [q, k, h]
        return self.hook_position_bias(bias.permute(2, 0, 1)[None])


# ---------------------------------------------------------------- norms
# As in TransformerLens (and its TransformerBridge), ``hook_normalized`` is the
# standardised input before the learned affine map: (x - mean) / scale for LayerNorm,
# x / scale for RMSNorm. ``hook_scale`` is the divisor, [b, p, 1].
class LayerNorm(nn.Module):
    """LayerNorm; without ``cfg.norm_affine`` only the standardisation (TransformerLens's
    LNPre: after `fold_layer_norm` its weight and bias live in the layers that read it)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model)) if cfg.norm_affine else None
        self.b = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.norm_affine else None
        self.hook_scale = HookPoint()  # [b, p, 1]
        self.hook_normalized = HookPoint()  # [b, p, m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return x * self.w + self.b if self.w is not None else x


class RMSNorm(nn.Module):
    """RMSNorm; without ``cfg.norm_affine`` only the division by the RMS (TransformerLens's
    RMSPre, after `fold_layer_norm`)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model)) if cfg.norm_affine else None
        self.hook_scale = HookPoint()  # [b, p, 1]
        self.hook_normalized = HookPoint()  # [b, p, m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # as Llama does: the statistic in float32 whatever the model dtype
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale).to(dtype)
        return x * self.w if self.w is not None else x


def make_norm(cfg: TransformerConfig) -> nn.Module:
    return RMSNorm(cfg) if cfg.norm == "rmsnorm" else LayerNorm(cfg)


# ---------------------------------------------------------------- attention
class KVCache:
    """Keys and values of past positions for generation, one (k, v) per layer, each
    [b, p, n_kv_heads, d] (keys after rotary), plus which past positions are real."""

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.key_valid: torch.Tensor | None = None  # [b, past] bool

    @property
    def past_len(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[1]


SplitInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # q, k, v inputs [b, p, h or kv, m]


def config_switch(name: str) -> property:
    """A component attribute that reads and writes the model config's run-time switch ``name``
    (TransformerLens's `set_use_*` flags live on the config; components share one config)."""
    return property(lambda self: getattr(self.cfg, name), lambda self, value: setattr(self.cfg, name, value))


class Attention(nn.Module):
    """Self-attention, or with ``cross`` the decoder's source-target attention of Vaswani et al.:
    queries from the decoder's stream, keys and values from the encoder's output (``source``),
    so its scores and pattern are [b, h, target_pos, source_pos]."""

    def __init__(self, cfg: TransformerConfig, layer: int, cross: bool = False):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.cross = cross
        h, kv, d, m = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
        assert d is not None and kv is not None
        # Stored as nn.Linear ([out, in]) so the unhooked path is three GEMMs, as in the
        # bare model; W_Q etc. below give TransformerLens's per-head views.
        self.q_proj = nn.Linear(m, h * d, bias=cfg.attn_qkv_bias)
        self.k_proj = nn.Linear(m, kv * d, bias=cfg.attn_qkv_bias)
        self.v_proj = nn.Linear(m, kv * d, bias=cfg.attn_qkv_bias)
        self.o_proj = nn.Linear(h * d, m, bias=cfg.attn_out_bias)
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(d)
        self.rotary = Rotary(cfg) if cfg.positional == "rotary" and not cross else None

        self.hook_q = HookPoint()  # [b, p, h, d]
        self.hook_k = HookPoint()  # [b, p, kv, d]
        self.hook_v = HookPoint()  # [b, p, kv, d]
        if self.rotary is not None:
            self.hook_rot_q = HookPoint()  # [b, p, h, d]
            self.hook_rot_k = HookPoint()  # [b, p, kv, d]
        self.hook_attn_scores = HookPoint()  # [b, h, q, k]
        self.hook_pattern = HookPoint()  # [b, h, q, k]
        self.hook_z = HookPoint()  # [b, p, h, d]
        self.hook_result = HookPoint()  # [b, p, h, m], computed only when hooked or use_attn_result

    # TransformerLens's `cfg.use_attn_result`: compute hook_result (and cache it by default) on
    # every pass. Unlike TransformerLens, hooking hook_result computes it without the flag.
    use_attn_result = config_switch("use_attn_result")

    # TransformerLens-shaped views of the weights (read-only conveniences; the storage is
    # the nn.Linear above). As in TransformerLens's HookedTransformer (GroupedQueryAttention),
    # W_K/W_V/b_K/b_V have one entry per *query* head, the key/value heads repeated
    # (repeat_interleave: query head h reads kv head h // (n_heads // n_kv_heads)), so
    # W_Q @ W_K^T and W_V @ W_O line up head by head; _W_K/_W_V/_b_K/_b_V are the stored
    # kv heads. (TransformerBridge's stacked W_K is the kv heads; we follow HookedTransformer.)
    # A projection without a bias reads as zeros, as HookedTransformer's always-present biases.
    @property
    def W_Q(self) -> torch.Tensor:  # [h, m, d]
        return einops.rearrange(self.q_proj.weight, "(h d) m -> h m d", h=self.cfg.n_heads)

    @property
    def _W_K(self) -> torch.Tensor:  # [kv, m, d]
        return einops.rearrange(self.k_proj.weight, "(h d) m -> h m d", h=self.cfg.n_kv_heads)

    @property
    def _W_V(self) -> torch.Tensor:  # [kv, m, d]
        return einops.rearrange(self.v_proj.weight, "(h d) m -> h m d", h=self.cfg.n_kv_heads)

    @property
    def W_K(self) -> torch.Tensor:  # [h, m, d]
        return self._per_query_head(self._W_K)

    @property
    def W_V(self) -> torch.Tensor:  # [h, m, d]
        return self._per_query_head(self._W_V)

    @property
    def W_O(self) -> torch.Tensor:  # [h, d, m]
        return einops.rearrange(self.o_proj.weight, "m (h d) -> h d m", h=self.cfg.n_heads)

    @property
    def b_Q(self) -> torch.Tensor:  # [h, d]
        return self._head_bias(self.q_proj, self.cfg.n_heads)

    @property
    def _b_K(self) -> torch.Tensor:  # [kv, d]
        return self._head_bias(self.k_proj, self.cfg.n_kv_heads)

    @property
    def _b_V(self) -> torch.Tensor:  # [kv, d]
        return self._head_bias(self.v_proj, self.cfg.n_kv_heads)

    @property
    def b_K(self) -> torch.Tensor:  # [h, d]
        return self._per_query_head(self._b_K)

    @property
    def b_V(self) -> torch.Tensor:  # [h, d]
        return self._per_query_head(self._b_V)

    @property
    def b_O(self) -> torch.Tensor:  # [m]
        bias = self.o_proj.bias
        return bias if bias is not None else self.o_proj.weight.new_zeros(self.cfg.d_model)

    def _head_bias(self, proj: nn.Linear, n: int) -> torch.Tensor:  # [n, d]
        if proj.bias is None:
            return proj.weight.new_zeros(n, self.cfg.d_head)
        return proj.bias.view(n, self.cfg.d_head)

    def _per_query_head(self, x: torch.Tensor) -> torch.Tensor:  # [kv, ...] -> [h, ...]
        group = self.cfg.n_heads // self.cfg.n_kv_heads  # type: ignore[operator]
        return x.repeat_interleave(group, dim=0) if group > 1 else x

    def _project(self, x: torch.Tensor | SplitInputs,
                 source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [b, p, h, d], k and v [b, p, kv, d] from the residual [b, p, m] (three GEMMs), or
        from per-head inputs (TransformerLens's split qkv input: each head reads its own copy,
        [b, p, h or kv, m], so a hook can change one head's input alone). Cross-attention's keys
        and values come from ``source`` [b, s, m] (the encoder's output) instead."""
        cfg = self.cfg
        if isinstance(x, torch.Tensor):
            kv_in = x if source is None else source
            q = einops.rearrange(self.q_proj(x), "b p (h d) -> b p h d", h=cfg.n_heads)
            k = einops.rearrange(self.k_proj(kv_in), "b p (h d) -> b p h d", h=cfg.n_kv_heads)
            v = einops.rearrange(self.v_proj(kv_in), "b p (h d) -> b p h d", h=cfg.n_kv_heads)
            return q, k, v
        q_in, k_in, v_in = x
        q = einops.einsum(q_in, self.W_Q, "b p h m, h m d -> b p h d") + self.b_Q
        k = einops.einsum(k_in, self._W_K, "b p h m, h m d -> b p h d") + self._b_K
        v = einops.einsum(v_in, self._W_V, "b p h m, h m d -> b p h d") + self._b_V
        return q, k, v

    def forward(
        self,
        x: torch.Tensor | SplitInputs,  # [b, p, m], or per-head (q, k, v) inputs
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None = None,
        source: torch.Tensor | None = None,  # [b, s, m]: the encoder's output, for cross-attention
        position_bias: torch.Tensor | None = None,  # [1 or b, h, q, k] added to the scores (T5)
    ) -> torch.Tensor:
        cfg = self.cfg
        cached = kv_cache.layers[self.layer] if kv_cache is not None else None
        if self.cross and cached is not None:
            # Generation: the source's keys and values are the same at every step, computed once
            # (their hooks fired then); only the query is new.
            q = self.hook_q(einops.rearrange(self.q_proj(x), "b p (h d) -> b p h d", h=cfg.n_heads))
            k, v = cached
        else:
            if self.cross and source is None:
                raise InputError("cross-attention needs the encoder's output (source)")
            q, k, v = self._project(x, source if self.cross else None)
            q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
            if self.rotary is not None:
                assert rotary is not None
                q = self.hook_rot_q(self.rotary.apply(q, *rotary))
                k = self.hook_rot_k(self.rotary.apply(k, *rotary))
            if kv_cache is not None:
                if cached is not None:
                    k, v = torch.cat((cached[0], k), dim=1), torch.cat((cached[1], v), dim=1)
                kv_cache.layers[self.layer] = (k, v)

        group = cfg.n_heads // cfg.n_kv_heads  # type: ignore[operator]
        if self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            if group > 1:
                k = k.repeat_interleave(group, dim=2)
                v = v.repeat_interleave(group, dim=2)
            # scores is a fresh temporary, so scale and mask it in place (no extra copies)
            scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k").mul_(self.scale)
            if position_bias is not None:
                scores = scores + position_bias
            if mask.is_causal:
                scores.masked_fill_(mask.future(scores.shape[-1], scores.device), float("-inf"))
            elif mask.allowed is not None:
                scores.masked_fill_(~mask.allowed, float("-inf"))
            scores = self.hook_attn_scores(scores)
            pattern = scores.softmax(dim=-1)
            if mask.query_valid is not None:
                # Rows of padded queries carry no information; zero them so sums over a
                # pattern (head metrics, caches) never count padding.
                pattern = pattern * mask.query_valid[:, None, :, None]
            pattern = self.hook_pattern(pattern)
            z = einops.einsum(pattern, v, "b h q k, b k h d -> b q h d")
        else:
            attn_mask, is_causal = mask.allowed, mask.is_causal
            if position_bias is not None:  # an additive float mask: the bias, -inf where masked
                hide = mask.future(q.shape[1], q.device) if is_causal else (
                    ~attn_mask if attn_mask is not None else None)
                attn_mask = position_bias if hide is None else position_bias.masked_fill(hide, float("-inf"))
                is_causal = False
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=attn_mask,
                is_causal=is_causal,
                scale=self.scale,
                enable_gqa=group > 1,
            ).transpose(1, 2)
        z = self.hook_z(z)

        if self.use_attn_result or self.hook_result.has_hooks():
            result = self.hook_result(einops.einsum(z, self.W_O, "b p h d, h d m -> b p h m"))
            out = result.sum(dim=2)
            return out + self.o_proj.bias if self.o_proj.bias is not None else out
        return self.o_proj(einops.rearrange(z, "b p h d -> b p (h d)"))

    # TransformerLens's factored circuits of each head (AbstractAttention.OV / .QK), [h, m, m] as
    # FactoredMatrix: rank d_head, so kept factored rather than formed (models.factored_matrix says why).
    @property
    def OV(self):  # FactoredMatrix(W_V, W_O), [h, m, m]
        from .factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self):  # FactoredMatrix(W_Q, W_K^T), [h, m, m]
        from .factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))


# ---------------------------------------------------------------- MLP
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        m, f = cfg.d_model, cfg.d_mlp
        assert f is not None
        self.act = ACTIVATIONS[cfg.act_fn]
        self.gated = cfg.gated_mlp
        self.w_in = nn.Linear(m, f, bias=cfg.mlp_bias)
        if cfg.gated_mlp:
            self.w_gate = nn.Linear(m, f, bias=cfg.mlp_bias)
            self.hook_pre_linear = HookPoint()  # [b, p, f]: x W_in, the ungated branch
        self.w_out = nn.Linear(f, m, bias=cfg.mlp_bias)
        self.hook_pre = HookPoint()  # [b, p, f]: pre-activation (the gate's, if gated)
        self.hook_post = HookPoint()  # [b, p, f]

    # TransformerLens's views ([in, out]); a layer without a bias reads as zeros.
    @property
    def W_in(self) -> torch.Tensor:  # [m, f]
        return self.w_in.weight.T

    @property
    def W_gate(self) -> torch.Tensor:  # [m, f], gated MLPs only
        return self.w_gate.weight.T

    @property
    def W_out(self) -> torch.Tensor:  # [f, m]
        return self.w_out.weight.T

    @property
    def b_in(self) -> torch.Tensor:  # [f]
        return _bias(self.w_in)

    @property
    def b_gate(self) -> torch.Tensor:  # [f], gated MLPs only
        return _bias(self.w_gate)

    @property
    def b_out(self) -> torch.Tensor:  # [m]
        return _bias(self.w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            pre = self.hook_pre(self.w_gate(x))
            post = self.hook_post(self.act(pre) * self.hook_pre_linear(self.w_in(x)))
        else:
            post = self.hook_post(self.act(self.hook_pre(self.w_in(x))))
        return self.w_out(post)


def _bias(linear: nn.Linear) -> torch.Tensor:  # [out]
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


class Unembed(nn.Linear):
    """The LM head: an nn.Linear (state dict ``unembed.weight``/``unembed.bias``, one GEMM)
    with TransformerLens's ``W_U`` [m, vocab] and ``b_U`` [vocab] (zeros without a bias)."""

    @property
    def W_U(self) -> torch.Tensor:  # [m, vocab]
        return self.weight.T

    @property
    def b_U(self) -> torch.Tensor:  # [vocab]
        return _bias(self)


# ---------------------------------------------------------------- block
class TransformerBlock(nn.Module):
    """One layer. Pre-norm: x + attn(ln1 x), then + mlp(ln2 x) (or both from x in
    parallel). Post-norm (BERT): ln1(x + attn x), then ln2(. + mlp .), so resid_mid and
    resid_post are the normalised stream that flows on and resid_post of layer l is
    resid_pre of layer l+1 in every family."""

    def __init__(self, cfg: TransformerConfig, layer: int, cross_attention: bool = False):
        super().__init__()
        self.cfg = cfg
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.has_cross = cross_attention
        if cross_attention:
            # The decoder's source-target attention, between self-attention and the MLP (names as
            # TransformerLens's T5Block: cross_attn, hook_cross_attn_out, hook_resid_mid_cross;
            # its norm is ln_cross here, so ln2 is the MLP's norm in every block of the project).
            self.ln_cross = make_norm(cfg)
            self.cross_attn = Attention(cfg, layer, cross=True)
            self.hook_cross_attn_out = HookPoint()  # [b, p, m]
            self.hook_resid_mid_cross = HookPoint()  # [b, p, m]
        self.hook_resid_pre = HookPoint()  # [b, p, m]
        # TransformerLens's opt-in inputs (each fires when its set_use_* flag is on or it is
        # hooked; cached by default only with the flag): per-head copies of the stream attention reads.
        self.hook_attn_in = HookPoint()  # [b, p, h, m]
        self.hook_q_input = HookPoint()  # [b, p, h, m]
        self.hook_k_input = HookPoint()  # [b, p, kv, m]
        self.hook_v_input = HookPoint()  # [b, p, kv, m]
        self.hook_attn_out = HookPoint()  # [b, p, m]
        self.hook_resid_post = HookPoint()  # [b, p, m]
        if not cfg.attn_only:
            self.ln2 = make_norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_mlp_in = HookPoint()  # [b, p, m]: the stream the MLP's norm reads
            self.hook_mlp_out = HookPoint()  # [b, p, m]
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()  # [b, p, m]

    # The set_use_* switches are the config's (one set per model, as in TransformerLens), read
    # and written here under the names TransformerLens's components have.
    use_attn_in = config_switch("use_attn_in")
    use_split_qkv_input = config_switch("use_split_qkv_input")
    use_hook_mlp_in = config_switch("use_hook_mlp_in")

    def _split_qkv(self) -> bool:
        return self.use_split_qkv_input or any(
            hp.has_hooks() for hp in (self.hook_q_input, self.hook_k_input, self.hook_v_input))

    def _attention_input(self, resid: torch.Tensor, norm: nn.Module | None) -> torch.Tensor | SplitInputs:
        """What attention reads: ``norm(resid)`` [b, p, m], or (split qkv input / attn_in, as
        TransformerLens) per-head copies of ``resid`` [b, p, heads, m], each through its hook
        and then the norm, so a hook on one head's copy changes that head alone. As in
        TransformerLens the copies are of the stream *before* the norm; with grouped-query
        attention hook_attn_in has a copy per query head and keys/values read the first kv copies
        (as the bridge). The norm then runs per copy, so ln1's hooks see [b, p, heads, ...], as in
        TransformerLens's HookedTransformer (the bridge keeps ln1.hook_scale at [b, p, 1])."""
        split, attn_in = self._split_qkv(), self.use_attn_in or self.hook_attn_in.has_hooks()
        if not (split or attn_in):
            return norm(resid) if norm is not None else resid
        h, kv = self.cfg.n_heads, self.cfg.n_kv_heads
        if split:
            q_in = self.hook_q_input(_per_head(resid, h))
            k_in, v_in = self.hook_k_input(_per_head(resid, kv)), self.hook_v_input(_per_head(resid, kv))
        else:
            q_in = self.hook_attn_in(_per_head(resid, h))
            k_in = v_in = q_in[:, :, :kv]
        if norm is None:
            return q_in, k_in, v_in
        return norm(q_in), norm(k_in), norm(v_in)

    def forward(self, x, mask: AttentionMask, rotary, kv_cache: KVCache | None = None,
                source: torch.Tensor | None = None, cross_mask: AttentionMask | None = None,
                position_bias: torch.Tensor | None = None, cross_cache: KVCache | None = None):
        """``source`` [b, s, m], ``cross_mask`` and ``cross_cache`` feed cross-attention (decoder
        blocks of encoder-decoder models only); ``position_bias`` is T5's, for self-attention."""
        cfg = self.cfg
        post = cfg.norm_position == "post"
        resid_pre = self.hook_resid_pre(x)
        attn_in = self._attention_input(resid_pre, None if post else self.ln1)
        attn_out = self.hook_attn_out(self.attn(attn_in, mask, rotary, kv_cache, position_bias=position_bias))
        if cfg.attn_only:
            return self.hook_resid_post(self.ln1(resid_pre + attn_out) if post else resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(resid_pre))))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        # Post-norm (BERT, BART): each sublayer's sum is normalised and flows on; pre-norm: the
        # sublayer reads the normalised stream and its output is added.
        resid_mid = self.hook_resid_mid(self.ln1(resid_pre + attn_out) if post else resid_pre + attn_out)
        if self.has_cross:
            assert cross_mask is not None
            cross_in = resid_mid if post else self.ln_cross(resid_mid)
            cross_out = self.hook_cross_attn_out(self.cross_attn(cross_in, cross_mask, None, cross_cache, source=source))
            summed = resid_mid + cross_out
            resid_mid = self.hook_resid_mid_cross(self.ln_cross(summed) if post else summed)
        mlp_in = self.hook_mlp_in(resid_mid)
        mlp_out = self.hook_mlp_out(self.mlp(mlp_in if post else self.ln2(mlp_in)))
        return self.hook_resid_post(self.ln2(resid_mid + mlp_out) if post else resid_mid + mlp_out)


def _per_head(x: torch.Tensor, n: int) -> torch.Tensor:
    """[b, p, m] -> [b, p, n, m], a real copy per head (a hook may edit one in place)."""
    return x.unsqueeze(2).repeat(1, 1, n, 1)
