"""A linear operator given by an explicit matrix, with its exact SVD as the spectral view.

For small sizes (tests, user-defined operators): ``A x = M vec(x)`` with ``M`` ``[m, n]`` and
``vec`` the C, H, W-ordered flattening of an image ``[C, H, W]`` (``n = C H W``); the measurement is
a vector ``[B, m]``. ``torch.linalg.svd(M) = U diag(s) V^T`` (computed once, in float64) gives the
adjoint, the pseudo-inverse and a :class:`~pyengine.inverse.base.SpectralView`.
"""

from __future__ import annotations

import torch

from pyengine.inverse.base import Operator, SpectralView


class _DenseSpectral(SpectralView):
    """``M = U diag(s) V^T``: ``V`` ``[n, n]`` orthogonal, ``U_k`` ``[m, k]`` (``k = min(m, n)``) and the
    first ``k`` of the ``n`` singular values nonzero at most (those below the rank tolerance are 0)."""

    def __init__(self, U_k: torch.Tensor, s: torch.Tensor, V: torch.Tensor, in_shape, out_shape):
        self._U, self._s, self._V = U_k, s, V
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self._k = U_k.shape[1]
        self._keep = s[: self._k] > 0

    def singulars(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return self._s.to(device=device, dtype=dtype)

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self._V.to(x)

    def V(self, c: torch.Tensor) -> torch.Tensor:
        return (c @ self._V.to(c).T).reshape(c.shape[0], *self.in_shape)

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        out = y.new_zeros(y.shape[0], self._V.shape[0])
        out[:, : self._k] = (y.reshape(y.shape[0], -1) @ self._U.to(y)) * self._keep.to(y.device)
        return out

    def U(self, c: torch.Tensor) -> torch.Tensor:
        coef = c[:, : self._k] * self._keep.to(c.device)
        return (coef @ self._U.to(c).T).reshape(c.shape[0], *self.out_shape)


class DenseOperator(Operator):
    """``y = M vec(x)``: a linear operator from an explicit matrix.

    Args:
        matrix: ``[m, n]`` floating matrix, ``n = prod(in_shape)``.
        in_shape: ``(C, H, W)`` of the images it takes.
        name: the operator's name (``"dense"``).
        rtol: singular values at most ``rtol * s_max`` count as 0 (rank deficiency); default
            ``max(m, n) * eps(matrix.dtype)``, NumPy's ``matrix_rank`` rule.

    ``forward`` maps ``[B, C, H, W]`` to ``[B, m]``, ``adjoint`` and ``pinv`` map back; everything
    follows the input's device and dtype.

    Example:
        >>> op = DenseOperator(torch.randn(5, 16, dtype=torch.float64), (1, 4, 4))
        >>> x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
        >>> bool(torch.allclose(op.forward(op.pinv(op.forward(x))), op.forward(x)))
        True
    """

    def __init__(self, matrix: torch.Tensor, in_shape: tuple[int, int, int], name: str = "dense",
                 rtol: float | None = None):
        if not isinstance(matrix, torch.Tensor) or not matrix.is_floating_point() or matrix.dim() != 2:
            raise ValueError(f"DenseOperator: matrix must be a floating [m, n] tensor, got "
                             f"{tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__}")
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError(f"DenseOperator: in_shape must be (C, H, W), got {in_shape}")
        m, n = matrix.shape
        if n != in_shape[0] * in_shape[1] * in_shape[2] or m < 1:
            raise ValueError(f"DenseOperator: matrix must be [m >= 1, {in_shape[0] * in_shape[1] * in_shape[2]}] "
                             f"for in_shape {in_shape}, got {tuple(matrix.shape)}")
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("DenseOperator: matrix has non-finite entries")
        self.name, self.in_shape, self.out_shape = str(name), in_shape, (int(m),)
        self.matrix = matrix.detach().clone()
        U, S, Vh = torch.linalg.svd(self.matrix.to(torch.float64), full_matrices=True)
        if rtol is None:
            rtol = max(m, n) * torch.finfo(matrix.dtype).eps
        k = min(m, n)
        s = torch.zeros(n, dtype=torch.float64)
        s[:k] = torch.where(S > float(rtol) * S.max(), S, torch.zeros_like(S))
        self._view = _DenseSpectral(U[:, :k], s, Vh.T.contiguous(), in_shape, self.out_shape)
        self.rank = int((s > 0).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x.reshape(x.shape[0], -1) @ self.matrix.to(x).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y.reshape(y.shape[0], -1) @ self.matrix.to(y)).reshape(y.shape[0], *self.in_shape)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``A^+ y = V diag(1 / s) U^T y`` over the nonzero singular values."""
        v = self._view
        s = v.singulars(y.device, y.dtype)
        c = v.Ut(y)
        return v.V(torch.where(s > 0, c / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(c)))

    @property
    def spectral(self) -> SpectralView:
        return self._view
