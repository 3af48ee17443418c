"""Diffusion solvers for inverse problems: measurement operators (forward, adjoint, pseudo-inverse,
spectral view) and posterior solvers on the :class:`~pyengine.diffusion.prior.Prior` interface.
Images and the measurement noise sigma_y are in [0, 1] units throughout (see ``base``)."""

from pyengine.inverse.base import Operator, Problem, SpectralView, require_linear, require_spectral
from pyengine.inverse.baselines import baseline, bicubic_upsample, grey_replicate, harmonic_fill, hio, wiener_deconvolve
from pyengine.inverse.dense import DenseOperator
from pyengine.inverse.operators import (
                                        TASKS,
                                        AvgPoolSR,
                                        BicubicSR,
                                        CircularBlur,
                                        Colorize,
                                        Inpaint,
                                        LinearOperator,
                                        PhaseRetrieval,
                                        gaussian_kernel,
                                        make_operator,
                                        motion_kernel,
)
from pyengine.inverse.solvers import (
                                        DEFAULT_STEPS,
                                        METHODS,
                                        NEEDS,
                                        SolverResult,
                                        ddrm,
                                        dps,
                                        ilvr,
                                        mcg,
                                        pigdm,
                                        reddiff,
                                        scoresde,
                                        snips,
                                        solve,
                                        supports,
)

__all__ = ["DEFAULT_STEPS", "METHODS", "DenseOperator", "SolverResult", "ddrm", "dps", "ilvr", "mcg", "pigdm",
           "reddiff", "scoresde", "snips", "solve", "NEEDS", "supports",
           "TASKS", "AvgPoolSR", "BicubicSR", "CircularBlur", "Colorize", "Inpaint", "LinearOperator", "Operator",
           "PhaseRetrieval", "Problem", "SpectralView", "baseline", "bicubic_upsample", "gaussian_kernel",
           "grey_replicate", "harmonic_fill", "hio", "make_operator", "motion_kernel", "require_linear",
           "require_spectral", "wiener_deconvolve"]
