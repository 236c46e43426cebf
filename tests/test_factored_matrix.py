"""models.factored_matrix.FactoredMatrix against transformer_lens.FactoredMatrix, by value on the same random
factors (so notebook code using either gives the same numbers), and the OV / QK circuits of attention and of
the model against ``A @ B`` formed by hand from the stacked weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import randomize, tiny_gqa_model
from transformer_lens import FactoredMatrix as TLFactoredMatrix

from models import HookedTransformer, TransformerConfig
from models.factored_matrix import FactoredMatrix

TOL = dict(atol=1e-4, rtol=1e-4)


def factors(*shape_a: int, shape_b: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape_a, generator=g), torch.randn(*shape_b, generator=g)


def both(a: torch.Tensor, b: torch.Tensor) -> tuple[FactoredMatrix, TLFactoredMatrix]:
    return FactoredMatrix(a, b), TLFactoredMatrix(a, b)


def same(ours, theirs) -> None:
    """Equal FactoredMatrix (shape and product) or tensors, within 1e-4."""
    if isinstance(theirs, TLFactoredMatrix):
        assert isinstance(ours, FactoredMatrix)
        assert tuple(ours.shape) == tuple(theirs.shape) and ours.mdim == theirs.mdim
        torch.testing.assert_close(ours.AB, theirs.AB, **TOL)
    else:
        assert not isinstance(ours, FactoredMatrix)
        torch.testing.assert_close(ours, theirs, **TOL)


# A square batch of heads ([2, 3, 10, 4] @ [2, 3, 4, 10]), a wide one, and broadcast leading dims.
SHAPES = [((2, 3, 10, 4), (2, 3, 4, 10)), ((10, 4), (4, 7)), ((3, 1, 8, 5), (4, 5, 8))]


@pytest.mark.parametrize("shape_a,shape_b", SHAPES)
def test_products_shape_and_svd_match_transformer_lens(shape_a, shape_b):
    ours, theirs = both(*factors(*shape_a, shape_b=shape_b))
    assert tuple(ours.shape) == tuple(theirs.shape) and ours.ndim == theirs.ndim
    assert (ours.ldim, ours.mdim, ours.rdim) == (theirs.ldim, theirs.mdim, theirs.rdim)
    same(ours.AB, theirs.AB)
    same(ours.T, theirs.T)
    same(ours.S, theirs.S)
    same(ours.norm(), theirs.norm())
    torch.testing.assert_close(ours.norm(), torch.linalg.matrix_norm(ours.AB), **TOL)
    same(ours.get_corner(), theirs.get_corner())
    same(ours.get_corner(2), theirs.get_corner(2))
    U, S, V = ours.svd()
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), ours.AB, **TOL)
    # the same algorithm on the same factors: the singular vectors agree too, signs included
    same(ours.U, theirs.U)
    same(ours.V, theirs.V)
    same(ours.collapse_l(), theirs.collapse_l())
    same(ours.collapse_r(), theirs.collapse_r())
    torch.testing.assert_close(ours.U @ ours.collapse_l(), ours.AB, **TOL)
    torch.testing.assert_close(ours.collapse_r() @ ours.V.transpose(-2, -1), ours.AB, **TOL)
    same(ours.make_even(), theirs.make_even())
    even = ours.make_even()
    torch.testing.assert_close(even.A.transpose(-2, -1) @ even.A, even.B @ even.B.transpose(-2, -1), **TOL)
    assert ours.pair[0].shape == theirs.pair[0].shape and ours.pair[1].shape == theirs.pair[1].shape
    same(ours.unsqueeze(0), theirs.unsqueeze(0))
    assert repr(ours) == repr(theirs)


def test_vh_is_v_with_transformer_lens_warning():
    ours, theirs = both(*factors(6, 3, shape_b=(3, 6)))
    with pytest.warns(DeprecationWarning, match="returns V"):
        vh = ours.Vh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert vh.shape == theirs.Vh.shape == (6, 3)
    assert torch.equal(vh, ours.V)


def test_eigenvalues_match_transformer_lens():
    ours, theirs = both(*factors(4, 9, 3, shape_b=(4, 3, 9)))
    mine, ref = ours.eigenvalues, theirs.eigenvalues
    assert mine.shape == ref.shape == (4, 3) and mine.is_complex()
    key = lambda e: torch.sort(e.real * 1e3 + e.imag, dim=-1).values  # noqa: E731  (order is not part of it)
    torch.testing.assert_close(key(mine), key(ref), **TOL)
    # they are AB's own nonzero eigenvalues (AB [9, 9] has rank 3)
    full = torch.linalg.eigvals(ours.AB)
    biggest = lambda e: torch.sort(e.abs(), dim=-1, descending=True).values[..., :3]  # noqa: E731
    torch.testing.assert_close(biggest(full), biggest(mine), **TOL)
    with pytest.raises(ValueError):
        _ = FactoredMatrix(*factors(5, 2, shape_b=(2, 4))).BA


@pytest.mark.parametrize("other_shape", [(10, 6), (10, 2), (2, 3, 10, 5), (10,)])
def test_matmul_with_tensors_matches_transformer_lens(other_shape):
    ours, theirs = both(*factors(2, 3, 10, 4, shape_b=(2, 3, 4, 10)))
    other = torch.randn(other_shape, generator=torch.Generator().manual_seed(3))
    same(ours @ other, theirs @ other)
    left = other.transpose(-2, -1) if other.ndim >= 2 else other
    same(left @ ours, left @ theirs)


def test_matmul_of_factored_matrices_and_scalars():
    a, b = factors(3, 8, 4, shape_b=(3, 4, 8))
    c, d = factors(3, 8, 2, shape_b=(3, 2, 6), seed=1)
    (x, tx), (y, ty) = both(a, b), both(c, d)
    same(x @ y, tx @ ty)
    same(y.T @ x, ty.T @ tx)
    same(x * 2.5, tx * 2.5)
    same(2.5 * x, 2.5 * tx)
    same(x * torch.tensor(0.5), tx * torch.tensor(0.5))
    with pytest.raises(ValueError):
        x @ torch.randn(5, 3)


@pytest.mark.parametrize("idx", [0, -1, (1, 2), (slice(0, 2),), (1, slice(None), 3), (0, 1, slice(2, 5), 7),
                                 (Ellipsis, 2), (Ellipsis, slice(1, 4), -1), (1, Ellipsis)])
def test_indexing_matches_transformer_lens(idx):
    ours, theirs = both(*factors(2, 3, 10, 4, shape_b=(2, 3, 4, 9)))
    same(ours[idx], theirs[idx])


def test_indexing_too_long_or_with_new_axes_is_refused():
    m = FactoredMatrix(*factors(3, 5, 2, shape_b=(3, 2, 5)))
    with pytest.raises(IndexError):
        m[0, 1, 2, 3]
    with pytest.raises(IndexError):
        m[None]
    with pytest.raises(ValueError):
        FactoredMatrix(torch.randn(4, 3), torch.randn(2, 4))


def gpt2_shaped() -> HookedTransformer:
    """A random model with GPT-2's layout (LayerNorm, learned positions, biases, gelu_new), tiny."""
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_layers=3, n_heads=4, d_vocab=50, n_ctx=16, family="gpt2",
                            model_name="tiny-gpt2")
    model = HookedTransformer(cfg).eval()
    randomize(model, seed=1)
    return model


@pytest.mark.parametrize("build", [gpt2_shaped, tiny_gqa_model], ids=["gpt2", "gqa"])
def test_ov_and_qk_circuits_equal_the_products_of_the_stacked_weights(build):
    model = build()
    cfg = model.cfg
    m, h, L = cfg.d_model, cfg.n_heads, cfg.n_layers
    W_Q, W_K, W_V, W_O = model.W_Q, model.W_K, model.W_V, model.W_O
    OV, QK = model.OV, model.QK
    assert isinstance(OV, FactoredMatrix) and tuple(OV.shape) == (L, h, m, m) and OV.mdim == cfg.d_head
    assert tuple(QK.shape) == (L, h, m, m) and QK.mdim == cfg.d_head
    for layer in range(L):
        for head in range(h):
            torch.testing.assert_close(OV.AB[layer, head], W_V[layer, head] @ W_O[layer, head], **TOL)
            torch.testing.assert_close(QK.AB[layer, head], W_Q[layer, head] @ W_K[layer, head].T, **TOL)
        attn = model.blocks[layer].attn
        assert tuple(attn.OV.shape) == (h, m, m)
        torch.testing.assert_close(attn.OV.AB, OV.AB[layer], **TOL)
        torch.testing.assert_close(attn.QK.AB, QK.AB[layer], **TOL)
        same(attn.OV[1], TLFactoredMatrix(attn.W_V, attn.W_O)[1])
    # the QK circuit scores a query against a key as the attention does (before scaling), biases aside
    x = torch.randn(2, m)
    q, k = x[0] @ W_Q[0, 1], x[1] @ W_K[0, 1]
    torch.testing.assert_close(x[0] @ QK[0, 1] @ x[1], q @ k, **TOL)
    # per-head norms, as TransformerLens notebooks plot them, from the factored form
    torch.testing.assert_close(OV.norm(), torch.linalg.matrix_norm(OV.AB), **TOL)
