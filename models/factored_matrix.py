"""`FactoredMatrix`: a matrix kept as the product ``A @ B`` of two thin factors, TransformerLens's API.

Why: a head's OV circuit ``W_V @ W_O`` and QK circuit ``W_Q @ W_K^T`` are ``d_model x d_model``
matrices of rank at most ``d_head``. Forming them costs ``d_model^2`` memory per head, and their
SVD, eigenvalues and norms are wasteful to compute from the product. Kept factored, products with
other matrices stay factored (whichever side is thinner is multiplied out), and the SVD comes from
two thin SVDs and one ``d_head x d_head`` one. Notebook code written against
``transformer_lens.FactoredMatrix`` runs unchanged on this class (same names, shapes, and results
within float tolerance; ``tests/test_factored_matrix.py`` compares them).

One TransformerLens quirk is kept on purpose, so ported code gives the same numbers: ``svd()`` and
``Vh`` return **V** (the right singular vectors as columns, ``M == U @ diag(S) @ V^T``), not
``V^H`` as ``torch.linalg.svd`` does. TransformerLens 4 names it ``V`` and keeps ``Vh`` as a
deprecated alias that warns; so does this class.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any

import torch

__all__ = ["FactoredMatrix"]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """torch.linalg has no 16-bit SVD/eig kernels; TransformerLens upcasts to float32 too."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


class FactoredMatrix:
    """The matrix ``A @ B`` (shape ``[..., ldim, rdim]``, inner dimension ``mdim``), never formed
    unless asked for (`AB`). Leading dimensions of A and B broadcast, as in ``A @ B``."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if A.size(-1) != B.size(-2):
            raise ValueError(f"FactoredMatrix factors must match on the inner dimension, got A {tuple(A.shape)} "
                             f"and B {tuple(B.shape)}")
        self.ldim = A.size(-2)
        self.rdim = B.size(-1)
        self.mdim = B.size(-2)
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as e:
            raise ValueError(f"FactoredMatrix factors' leading dimensions do not broadcast: A {tuple(A.shape)}, "
                             f"B {tuple(B.shape)}") from e
        self.shape = torch.Size(leading + (self.ldim, self.rdim))
        # Broadcast views (no copy), so indexing a leading dimension indexes both factors alike.
        self.A = A.broadcast_to(leading + (self.ldim, self.mdim))
        self.B = B.broadcast_to(leading + (self.mdim, self.rdim))

    # ------------------------------------------------------------------ products
    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix | torch.Tensor:
        """``self @ other``: a FactoredMatrix, or a vector for a vector. The thinner side is multiplied out,
        so the inner dimension stays ``min(mdim, rdim)``, as in TransformerLens."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if other.ndim < 2:  # a vector: collapse to a vector, keeping broadcasting over the leading dims
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.size(-2) != self.rdim:
            raise ValueError(f"right matrix must match on the inner dimension: {tuple(self.shape)} @ "
                             f"{tuple(other.shape)}")
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix | torch.Tensor:
        """``other @ self``, the mirror of `__matmul__`."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        if other.size(-1) != self.ldim:
            raise ValueError(f"left matrix must match on the inner dimension: {tuple(other.shape)} @ "
                             f"{tuple(self.shape)}")
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | torch.Tensor) -> FactoredMatrix:
        """Scaling by a scalar scales one factor (the product is linear in each)."""
        if isinstance(scalar, torch.Tensor) and scalar.numel() != 1:
            raise ValueError(f"* takes a scalar, got a tensor of shape {tuple(scalar.shape)}; use @ for products")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    @property
    def AB(self) -> torch.Tensor:
        """The product ``[..., ldim, rdim]`` (expensive: this is what the class avoids forming)."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """The reverse product ``[..., mdim, mdim]``; defined only for a square matrix."""
        if self.rdim != self.ldim:
            raise ValueError(f"BA needs a square FactoredMatrix, got shape {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(_t(self.B), _t(self.A))

    # ------------------------------------------------------------------ spectra
    @cached_property
    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # A = Ua Sa Va^T, B = Ub Sb Vb^T, so A B = Ua (Sa Va^T Ub Sb) Vb^T: the SVD of the small middle
        # [mdim, mdim] matrix gives that of the product. Cached per instance (the factors are fixed).
        Ua, Sa, Vha = torch.linalg.svd(_upcast(self.A), full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(_upcast(self.B), full_matrices=False)
        middle = Sa[..., :, None] * Vha @ Ub * Sb[..., None, :]
        Um, Sm, Vhm = torch.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, Sm, _t(Vhb) @ _t(Vhm)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, S, V)`` with ``M == U @ diag(S) @ V^T``; V, not V^H (TransformerLens's convention)."""
        return self._svd

    @property
    def U(self) -> torch.Tensor:  # [..., ldim, mdim]
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:  # [..., mdim], descending
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:  # [..., rdim, mdim]
        return self.svd()[2]

    @property
    def Vh(self) -> torch.Tensor:
        """Deprecated alias of `V`: TransformerLens's ``Vh`` has always returned V (not its transpose)
        and now warns so; kept so ported code gives the same tensors."""
        warnings.warn("FactoredMatrix.Vh returns V (the right singular vectors), not Vh, as TransformerLens's "
                      "does; use .V, or .V.transpose(-2, -1) for the actual Vh", DeprecationWarning, stacklevel=2)
        return self.svd()[2]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of AB, from the small BA: if ``BA v = k v`` then ``AB (Av) = k (Av)``, so they agree
        apart from AB's extra zeros. Complex, ``[..., mdim]``."""
        return torch.linalg.eig(_upcast(self.BA)).eigenvalues

    def norm(self) -> torch.Tensor:
        """Frobenius norm, ``[...]``: the root of the sum of the squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U sqrt(S), sqrt(S) V^T)``: each factor carries half the singular values and
        has orthogonal columns / rows, the factorisation TransformerLens's weight refactoring uses."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _t(self.V))

    def collapse_l(self) -> torch.Tensor:
        """``diag(S) V^T``, ``[..., mdim, rdim]``: the matrix with its left orthogonal factor U removed."""
        return self.S[..., :, None] * _t(self.V)

    def collapse_r(self) -> torch.Tensor:
        """``U diag(S)``, ``[..., ldim, mdim]``: the matrix with its right orthogonal factor V^T removed."""
        return self.U * self.S[..., None, :]

    # ------------------------------------------------------------------ shape and indexing
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A, self.B

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """A new leading axis at ``k`` (counted on the factors, as TransformerLens does)."""
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The top-left ``k`` corner of every axis of AB (leading dims too), forming only ``k x k`` of it."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index without forming the product: leading dimensions index both factors; a row index goes to A,
        a column index to B. An integer row or column index keeps its axis (length one), as in
        TransformerLens, so the result is still a matrix. Ellipsis expands over the matrix's axes."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(item is None for item in idx):
            raise IndexError("FactoredMatrix indexing with None (new axes) is not supported; use unsqueeze")
        if sum(item is Ellipsis for item in idx) > 1:
            raise IndexError("an index can only have a single ellipsis")
        if Ellipsis in idx:
            at = idx.index(Ellipsis)
            idx = idx[:at] + (slice(None),) * (self.ndim - len(idx) + 1) + idx[at + 1:]
        lead = self.ndim - 2
        if len(idx) <= lead:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if len(idx) == lead + 1:
            return FactoredMatrix(self.A[idx[:-1] + (_keep(idx[-1]),)], self.B[idx[:-1]])
        if len(idx) == lead + 2:
            rows, cols = _keep(idx[-2]), _keep(idx[-1])
            return FactoredMatrix(self.A[idx[:-2] + (rows,)], self.B[idx[:-2] + (slice(None), cols)])
        raise IndexError(f"{idx} is too long an index for a FactoredMatrix of shape {tuple(self.shape)}")

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"


def _keep(item: Any) -> Any:
    """An integer row/column index as a length-one slice (TransformerLens's `_convert_to_slice`)."""
    if isinstance(item, int) and not isinstance(item, bool):
        return slice(item, item + 1 if item != -1 else None)
    return item
