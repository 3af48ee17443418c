"""Diffusion solvers for inverse problems: measurement operators (forward, adjoint, pseudo-inverse,
spectral view) and posterior solvers on the :class:`~pyengine.diffusion.prior.Prior` interface.
Images and the measurement noise sigma_y are in [0, 1] units throughout (see ``base``)."""

from pyengine.inverse.base import Operator, Problem, SpectralView, require_linear, require_spectral

__all__ = ["Operator", "Problem", "SpectralView", "require_linear", "require_spectral"]
