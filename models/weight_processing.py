"""Weight processing as TransformerLens applies it at load (`HookedTransformer.from_pretrained`).

Each function rewrites a `HookedTransformer`'s weights *in place* (as TransformerLens's
`process_weights_` does to its model) into an equivalent model that is easier to read:

- `fold_layer_norm`: a norm's weight (and a LayerNorm's bias) moves into the layers that read
  the norm (W_Q/W_K/W_V and b_*, the MLP's W_in/W_gate and b_*, W_U and b_U); the norm keeps
  only its normalisation (``cfg.norm_affine = False``: TransformerLens's LNPre / RMSPre). After
  a LayerNorm, whose output has mean zero over d_model, those reading weights are also centred
  over d_model.
- `center_writing_weights`: every weight writing to the residual stream (W_E, W_pos, W_O/b_O,
  W_out/b_out) loses its mean over d_model. Only LayerNorm's centring makes this exact, so
  RMSNorm models are skipped with a warning, as TransformerLens does.
- `center_unembed`: W_U and b_U lose their mean over the vocabulary (logits shift by a constant
  per position; log-probabilities are unchanged).
- `fold_value_biases`: attention patterns sum to one, so b_V only adds the constant
  sum_h b_V[h] @ W_O[h]; it moves into b_O.
- `refactor_factored_attn_matrices`: W_Q/W_K (with their biases) and W_V/W_O refactored by SVD
  into an even, orthogonal factorisation of the same W_QK and W_OV (absolute positions only).

Why: direct logit attribution (the residual stream as a sum of component outputs, divided by
the final norm's scale, projected on W_U) adds up to the logits only once the final norm's
affine map lives in W_U and every component writes a mean-zero vector.

Where the project differs from TransformerLens on purpose: a query at a padded position
attends to nothing in the hooked path (its pattern row is zero), so after `fold_value_biases`
its attention output changes by the folded b_V; real positions are unchanged.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import einops
import torch
from torch import nn

if TYPE_CHECKING:
    from .hooked_transformer import HookedTransformer

__all__ = ["center_unembed", "center_writing_weights", "fold_layer_norm", "fold_value_biases", "process_weights",
           "refactor_factored_attn_matrices"]


# ---------------------------------------------------------------- the whole pipeline
@torch.no_grad()
def process_weights(model: HookedTransformer, fold_ln: bool = True, center_writing_weights: bool = True,
                    center_unembed: bool = True, fold_value_biases: bool = True,
                    refactor_factored_attn_matrices: bool = False) -> HookedTransformer:
    """All the steps in TransformerLens's order (its `ProcessWeights.process_weights`), in
    place; returns the model. What was done is recorded in ``cfg.extra["weight_processing"]``
    (provenance; the forward pass reads only ``cfg.norm_affine`` and the bias flags)."""
    cfg = model.cfg
    dtype = model.dtype
    if dtype != torch.float32:  # TransformerLens processes in float32, then casts back
        model.float()
    done = dict(cfg.extra.get("weight_processing", {}))
    if fold_ln:
        done["fold_ln"] = _STEPS["fold_ln"](model) or done.get("fold_ln", False)
    centred = False
    if center_writing_weights:
        centred = _STEPS["center_writing_weights"](model)
        done["center_writing_weights"] = centred or done.get("center_writing_weights", False)
    if center_unembed:
        done["center_unembed"] = _STEPS["center_unembed"](model) or done.get("center_unembed", False)
    if fold_value_biases:
        done["fold_value_biases"] = _STEPS["fold_value_biases"](model) or done.get("fold_value_biases", False)
        if centred:  # the folded b_V @ W_O is not mean-zero; TransformerLens centres b_O again
            for block in model.blocks:
                _center_bias(block.attn.o_proj)
    if refactor_factored_attn_matrices:
        _STEPS["refactor_factored_attn_matrices"](model)
        done["refactor_factored_attn_matrices"] = True
    cfg.extra["weight_processing"] = done
    if dtype != torch.float32:
        model.to(dtype)
    return model


# ---------------------------------------------------------------- fold_layer_norm
@torch.no_grad()
def fold_layer_norm(model: HookedTransformer) -> bool:
    """Fold every norm's weight (and LayerNorm's bias) into the layers reading it; the norms
    keep only their normalisation. For LayerNorm the reading weights are then centred over
    d_model (TransformerLens's ``fold_biases`` and ``center_weights``, both off for RMSNorm).
    Returns whether it folded (False: already folded, or a model it cannot fold, with a warning)."""
    cfg = model.cfg
    if not cfg.norm_affine:
        return False  # already folded: nothing left to move
    reason = _cannot_fold(model)
    if reason:
        warnings.warn(f"fold_ln skipped: {reason}; the norms keep their weights", stacklevel=3)
        return False
    layer_norm = cfg.norm == "layernorm"  # a bias to fold, and a mean-zero output to centre readers on
    if layer_norm:
        _add_biases(model, qkv=True, mlp=not cfg.attn_only)
    for block in model.blocks:
        for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
            _fold_norm_into(proj, block.ln1, centre=layer_norm)
        if not cfg.attn_only:
            # Every family here has its own ln2, parallel blocks (NeoX) included.
            readers = (block.mlp.w_in, block.mlp.w_gate) if cfg.gated_mlp else (block.mlp.w_in,)
            for linear in readers:
                _fold_norm_into(linear, block.ln2, centre=layer_norm)
    if cfg.final_norm:
        _untie(model)
        if layer_norm:
            _add_bias(model.unembed)
            cfg.unembed_bias = True
        _fold_norm_into(model.unembed, model.ln_final, centre=layer_norm)
    for norm in _norms(model):
        norm.w = None  # nn.Module keeps the slot, state_dict() drops it
        if hasattr(norm, "b"):
            norm.b = None
    cfg.norm_affine = False
    return True


def _cannot_fold(model: HookedTransformer) -> str | None:
    """Why the norms cannot give their weights away, or None."""
    cfg = model.cfg
    if cfg.norm_position == "post":
        # TransformerLens refuses too (post-LN adapters: supports_fold_ln = False): a post-norm's
        # output *is* the residual stream, so no single reader can absorb its affine map.
        return "post-norm blocks write the normalised stream itself (TransformerLens does not fold them either)"
    if cfg.embed_norm:
        return "the embedding norm's output is the residual stream, not the input of one layer"
    if cfg.final_norm and not cfg.has_unembed:
        return "the final norm's output is the model's output (no unembedding to fold it into)"
    return None


def _norms(model: HookedTransformer) -> list[nn.Module]:
    """The pre-norms that `fold_layer_norm` empties: ln1, ln2 of every block, ln_final."""
    norms = []
    for block in model.blocks:
        norms.append(block.ln1)
        if hasattr(block, "ln2"):
            norms.append(block.ln2)
    if model.cfg.final_norm:
        norms.append(model.ln_final)
    return norms


def _fold_norm_into(linear: nn.Linear, norm: nn.Module, centre: bool) -> None:
    """``linear(norm(x))`` with the norm's affine map moved into ``linear`` (weight [out, m]):
    bias += weight @ norm.b, weight *= norm.w (per input column), then optionally each row
    centred over the input (exact when the norm's output has mean zero)."""
    weight = linear.weight  # [out, m]
    if getattr(norm, "b", None) is not None:
        linear.bias += weight @ norm.b  # [out]
    weight.mul_(norm.w)
    if centre:
        weight.sub_(weight.mean(-1, keepdim=True))


# ---------------------------------------------------------------- centring
@torch.no_grad()
def center_writing_weights(model: HookedTransformer) -> bool:
    """Remove the mean over d_model from everything that writes to the residual stream: W_E,
    W_pos (learned), token-type embeddings, W_O and b_O, W_out and b_out. Exact only when every
    reader sits behind a LayerNorm, which subtracts the mean anyway; otherwise skipped with a
    warning, as TransformerLens skips RMSNorm and post-norm models. Returns whether it centred."""
    cfg = model.cfg
    reason = _cannot_centre(model)
    if reason:
        warnings.warn(f"center_writing_weights skipped: {reason}", stacklevel=3)
        return False
    _untie(model)  # GPT-2's W_U is W_E's storage; centring W_E must not move W_U
    _center_rows(model.embed.W_E)  # [vocab, m]
    if cfg.positional == "learned":
        _center_rows(model.pos_embed.W_pos)  # [n_ctx, m]
    # Sinusoidal tables are a non-persistent buffer rebuilt at load: centring them would not
    # survive `models.save`. The LayerNorms after them centre them anyway.
    if cfg.n_token_types:
        _center_rows(model.token_type_embed.W_token_type)
    for block in model.blocks:
        _center_columns(block.attn.o_proj)
        if not cfg.attn_only:
            _center_columns(block.mlp.w_out)
    return True


def _cannot_centre(model: HookedTransformer) -> str | None:
    cfg = model.cfg
    if cfg.norm != "layernorm":
        return "RMSNorm does not subtract the mean, so a mean-zero residual stream would change the outputs " \
               "(TransformerLens skips it too)"
    if cfg.norm_position == "post":
        return "post-norm model (TransformerLens does not centre post-LN models either)"
    if cfg.has_unembed and not cfg.final_norm:
        return "the unembedding reads the residual stream without a LayerNorm"
    return None


@torch.no_grad()
def center_unembed(model: HookedTransformer) -> bool:
    """W_U and b_U minus their mean over the vocabulary: every logit at a position moves by the
    same amount, so log-probabilities are unchanged, and a component adding to every logit
    alike no longer looks like it favours any. Returns False (a warning) without an LM head."""
    if not model.cfg.has_unembed:
        warnings.warn("center_unembed skipped: the model has no unembedding", stacklevel=3)
        return False
    _untie(model)
    unembed = model.unembed
    unembed.weight.sub_(unembed.weight.mean(0, keepdim=True))  # [vocab, m]: mean over the vocabulary
    if unembed.bias is not None:
        unembed.bias.sub_(unembed.bias.mean())
    return True


def _center_rows(w: torch.Tensor) -> None:  # [n, m]: each row mean-zero over d_model
    w.sub_(w.mean(-1, keepdim=True))


def _center_columns(linear: nn.Linear) -> None:
    """A layer writing d_model (weight [m, in]): each output vector mean-zero over d_model."""
    linear.weight.sub_(linear.weight.mean(0, keepdim=True))
    _center_bias(linear)


def _center_bias(linear: nn.Linear) -> None:
    if linear.bias is not None:
        linear.bias.sub_(linear.bias.mean())


# ---------------------------------------------------------------- value biases
@torch.no_grad()
def fold_value_biases(model: HookedTransformer) -> bool:
    """b_O += sum_h b_V[h] @ W_O[h], then b_V = 0: a head's pattern sums to one, so its value
    bias adds a constant that belongs to the layer, not to the head. With grouped-query
    attention, each query head's share uses its kv head's b_V (TransformerLens repeats _b_V
    the same way). Returns whether any bias moved."""
    moved = False
    for block in model.blocks:
        attn = block.attn
        if attn.v_proj.bias is None:
            continue
        folded = einops.einsum(attn.b_V, attn.W_O, "h d, h d m -> m")  # b_V per query head
        if attn.o_proj.bias is None:
            _add_bias(attn.o_proj)
            model.cfg.attn_out_bias = True
        attn.o_proj.bias += folded
        attn.v_proj.bias.zero_()
        moved = True
    return moved


# ---------------------------------------------------------------- refactoring W_QK and W_OV
@torch.no_grad()
def refactor_factored_attn_matrices(model: HookedTransformer) -> None:
    """TransformerLens's experimental refactoring: with W_QK = [W_Q; b_Q] [W_K; b_K]^T (an
    input of d_model + 1, its last coordinate 1) and W_OV = W_V W_O per head, set
    W_Q, W_K = U sqrt(S), V sqrt(S) and W_V, W_O = U S, V^T from their SVDs; b_V is folded into
    b_O first. Scores and head outputs are unchanged. Refused for rotary positions (W_QK then
    depends on the positions, as TransformerLens asserts) and for grouped-query attention
    (query heads share one W_K, so no per-head refactoring keeps them shared)."""
    from probe.errors import InputError

    cfg = model.cfg
    if cfg.positional == "rotary":
        raise InputError("refactor_factored_attn_matrices needs absolute positions: with rotary embeddings "
                         "W_QK depends on the query and key positions (TransformerLens refuses this too)")
    if cfg.n_kv_heads != cfg.n_heads:
        raise InputError("refactor_factored_attn_matrices is not defined for grouped-query attention: query heads "
                         "share their key and value weights, which a per-head refactoring would split")
    _add_biases(model, qkv=True, mlp=False)
    fold_value_biases(model)
    for block in model.blocks:
        _refactor_qk(block.attn)
        _refactor_ov(block.attn)


def _refactor_qk(attn: nn.Module) -> None:
    q_eff = torch.cat([attn.W_Q, attn.b_Q[:, None, :]], dim=1)  # [h, m+1, d]
    k_eff = torch.cat([attn.W_K, attn.b_K[:, None, :]], dim=1)  # [h, m+1, d]
    u, s, v = _factored_svd(q_eff, k_eff.transpose(-1, -2))  # [h, m+1, d], [h, d], [h, m+1, d]
    q_new, k_new = u * s.sqrt()[:, None, :], v * s.sqrt()[:, None, :]  # [h, m+1, d] each
    _set_heads(attn.q_proj, q_new[:, :-1], q_new[:, -1])
    _set_heads(attn.k_proj, k_new[:, :-1], k_new[:, -1])


def _refactor_ov(attn: nn.Module) -> None:
    u, s, v = _factored_svd(attn.W_V, attn.W_O)  # [h, m, d], [h, d], [h, m, d]
    _set_heads(attn.v_proj, u * s[:, None, :], None)
    attn.o_proj.weight.copy_(einops.rearrange(v, "h m d -> m (h d)"))  # W_O = V^T per head


def _set_heads(proj: nn.Linear, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """Write per-head weights [h, m, d] (and biases [h, d]) into an nn.Linear [(h d), m]."""
    proj.weight.copy_(einops.rearrange(w, "h m d -> (h d) m"))
    if b is not None:
        proj.bias.copy_(b.reshape(-1))


def _factored_svd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD (U, S, V) of a @ b [..., l, r] through its factors a [..., l, k] and b [..., k, r],
    as TransformerLens's FactoredMatrix computes it (so the factors, signs included, agree)."""
    ua, sa, vha = torch.linalg.svd(a, full_matrices=False)
    ub, sb, vhb = torch.linalg.svd(b, full_matrices=False)
    middle = sa[..., :, None] * vha @ ub * sb[..., None, :]
    um, sm, vhm = torch.linalg.svd(middle, full_matrices=False)
    return ua @ um, sm, vhb.transpose(-1, -2) @ vhm.transpose(-1, -2)


# ---------------------------------------------------------------- structural helpers
def _untie(model: HookedTransformer) -> None:
    """Give the unembedding its own copy of a tied W_E, so processing one leaves the other."""
    if model.cfg.tie_embeddings and model.cfg.has_unembed:
        model.unembed.weight = nn.Parameter(model.embed.W_E.detach().clone())
        model.cfg.tie_embeddings = False


def _add_bias(linear: nn.Linear) -> None:
    """A zero bias where a layer has none, to absorb a folded constant."""
    if linear.bias is None:
        linear.bias = nn.Parameter(linear.weight.new_zeros(linear.out_features))


def _add_biases(model: HookedTransformer, qkv: bool, mlp: bool) -> None:
    """Zero biases for all of q/k/v (and all MLP layers), keeping the config's flags, which
    say which biases every layer has, true (a saved model then loads)."""
    cfg = model.cfg
    for block in model.blocks:
        if qkv:
            for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                _add_bias(proj)
        if mlp:
            for name in ("w_in", "w_gate", "w_out"):
                if hasattr(block.mlp, name):
                    _add_bias(getattr(block.mlp, name))
    cfg.attn_qkv_bias = cfg.attn_qkv_bias or qkv
    cfg.mlp_bias = cfg.mlp_bias or mlp


# process_weights takes TransformerLens's flag names, which are the steps' own names, so it
# calls the steps through this table.
_STEPS = {"fold_ln": fold_layer_norm, "center_writing_weights": center_writing_weights,
          "center_unembed": center_unembed, "fold_value_biases": fold_value_biases,
          "refactor_factored_attn_matrices": refactor_factored_attn_matrices}
