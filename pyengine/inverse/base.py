"""The interfaces every measurement operator and every posterior solver in ``pyengine.inverse`` keeps.

Images are ``[B, C, H, W]`` in **[0, 1] pixel units**, and so is the measurement noise: ``y = A(x) +
sigma_y * n`` with ``n ~ N(0, I)`` and ``sigma_y`` in [0, 1] units, for every operator and every
method. (DPS's code adds sigma to images in [-1, 1], which is sigma / 2 in these units; DDRM and
RED-diff double sigma in code. Here sigma_y is stated once, in [0, 1] units, and converted once,
in :meth:`Problem.prior_space`.)

- :class:`Operator`: ``forward`` (``A``), ``adjoint`` (the true ``A^T``, for linear operators),
  ``pinv`` (``A^+``) and, where the operator has one, ``spectral``: a :class:`SpectralView` that
  applies ``A = U diag(s) V^T`` implicitly, never as a dense matrix.
- :class:`Problem`: an operator, a measurement ``y`` and ``sigma_y``; ``prior_space()`` restates it
  for a pixel diffusion prior whose images live in [-1, 1] (``x_prior = 2 x - 1``).
"""

from __future__ import annotations

import dataclasses

import torch


class SpectralView:
    """``A = U diag(s) V^T`` of a linear operator, applied implicitly.

    ``V^T`` maps an image ``[B, *in_shape]`` to its spectral coefficients ``[B, n]`` (``n = prod(in_shape)``,
    orthonormal: ``V`` is square); ``s`` ``[n]`` holds the singular values in that order, 0 for the
    directions the operator discards; ``U^T`` maps a measurement ``[B, *out_shape]`` to ``[B, n]``
    coefficients (the entries with ``s = 0`` are 0) and ``U`` maps ``[B, n]`` back (ignoring those
    entries). Then ``A x = U(s * V^T x)`` and ``A^+ y = V(U^T y / s)`` where ``s > 0``.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def singulars(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """``[n]`` singular values, ``n = prod(in_shape)``, 0 where the operator discards a direction."""
        raise NotImplementedError

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *in_shape] -> [B, n]``."""
        raise NotImplementedError

    def V(self, c: torch.Tensor) -> torch.Tensor:
        """``[B, n] -> [B, *in_shape]``."""
        raise NotImplementedError

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, *out_shape] -> [B, n]`` (zeros where ``s = 0``)."""
        raise NotImplementedError

    def U(self, c: torch.Tensor) -> torch.Tensor:
        """``[B, n] -> [B, *out_shape]`` (entries where ``s = 0`` ignored)."""
        raise NotImplementedError


class Operator:
    """A measurement operator on images ``[B, C, H, W]`` in [0, 1] units.

    Attributes:
        name: the task's short name (``"sr4"``, ``"inpaint_box"``, ...).
        linear: whether ``forward`` is linear (then ``adjoint`` is its true adjoint and ``pinv`` its
            pseudo-inverse); methods that need linearity or a spectral view refuse nonlinear ones.
        in_shape: ``(C, H, W)`` of the images it takes.
        out_shape: the shape of one measurement (without the batch dimension).
    """

    name: str = "operator"
    linear: bool = True
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: a nonlinear operator has no adjoint")

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: no pseudo-inverse")

    @property
    def spectral(self) -> SpectralView | None:
        """The operator's SVD, applied implicitly, or None where it has none."""
        return None

    def check_image(self, x: torch.Tensor, what: str = "x") -> None:
        """ValueError naming ``what`` unless ``x`` is a floating ``[B, *in_shape]`` tensor."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.name}: {what} must be a floating-point torch.Tensor, got "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.in_shape):
            raise ValueError(f"{self.name}: {what} must be [B, {', '.join(map(str, self.in_shape))}], "
                             f"got {tuple(x.shape)}")


def require_linear(op: Operator, method: str) -> None:
    """ValueError unless ``op`` is linear (methods built on the adjoint or a projection)."""
    if not isinstance(op, Operator):
        raise TypeError(f"{method}: operator must be a pyengine.inverse Operator, got {type(op).__name__}")
    if not op.linear:
        raise ValueError(f"{method} needs a linear operator; {op.name!r} is nonlinear")


def require_spectral(op: Operator, method: str) -> SpectralView:
    """The operator's spectral view; ValueError if it is nonlinear or has none."""
    require_linear(op, method)
    view = op.spectral
    if view is None:
        raise ValueError(f"{method} needs an operator with a spectral view (its SVD); {op.name!r} has none")
    return view


@dataclasses.dataclass
class Problem:
    """``y = A(x) + sigma_y n``, every quantity in [0, 1] image units.

    ``prior_space()`` restates it for a pixel prior whose images are ``2 x - 1`` in [-1, 1]: for a
    linear ``A``, ``A(2x - 1) = 2 A(x) - A(1)``, so ``y' = 2 y - A(1)`` and ``sigma' = 2 sigma_y``
    with the same operator; a nonlinear operator is wrapped instead (``A'(x') = A((x' + 1) / 2)``,
    ``y' = y``, ``sigma' = sigma_y``). This is the one place where the noise level is converted.
    """

    operator: Operator
    y: torch.Tensor
    sigma_y: float

    def __post_init__(self):
        if not isinstance(self.operator, Operator):
            raise TypeError(f"Problem: operator must be a pyengine.inverse Operator, got "
                            f"{type(self.operator).__name__}")
        if not isinstance(self.y, torch.Tensor) or not self.y.is_floating_point():
            raise TypeError("Problem: y must be a floating-point torch.Tensor")
        s = float(self.sigma_y)
        if not (s >= 0.0 and s < float("inf")):
            raise ValueError(f"Problem: sigma_y must be a finite number >= 0 (in [0, 1] image units), "
                             f"got {self.sigma_y}")
        self.sigma_y = s

    def prior_space(self) -> Problem:
        op = self.operator
        if op.linear:
            ones = torch.ones((1, *op.in_shape), device=self.y.device, dtype=self.y.dtype)
            return Problem(op, 2 * self.y - op.forward(ones), 2 * self.sigma_y)
        return Problem(_Rescaled(op), self.y, self.sigma_y)


class _Rescaled(Operator):
    """``A'(x') = A((x' + 1) / 2)``: a nonlinear operator seen from [-1, 1] images."""

    linear = False

    def __init__(self, op: Operator):
        self.op, self.name, self.in_shape = op, op.name, op.in_shape
        self.out_shape = getattr(op, "out_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward((x + 1) / 2)
