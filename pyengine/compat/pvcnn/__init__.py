"""Drop-in for PVD's ``modules`` package (PVCNN's layers with PVD's timestep embedding).

``pyengine.compat.pvcnn.functional`` replaces PVCNN's ``modules.functional`` (see there);
this package exports the layers that PVD's ``modules/__init__.py`` exports, from
``pyengine.nn.pvcnn``, with PVD's parameter layout: ``SharedMLP``, ``Voxelization``, ``SE3d``,
``Swish``, ``Attention``, ``PVConv``, ``BallQuery``, ``PointNetAModule``, ``PointNetSAModule``,
``PointNetFPModule``, ``KLLoss``. ``install_pvcnn`` registers it as the parent package
``modules`` when no such package is importable, so PVD's ``model/pvcnn_generation.py`` runs
without PVD's ``modules`` directory. Not provided: ``PVConvReLU`` and
``FrustumPointNetLoss``.

Example:
    >>> import pyengine.compat
    >>> F = pyengine.compat.install_pvcnn()  # before importing PVD's or LION's model files
    >>> import modules.functional
    >>> modules.functional is F
    True
"""

from torch import nn

from pyengine.compat.pvcnn import functional
from pyengine.nn.pvcnn import (
    Attention,
    BallQuery,
    PointNetAModule,
    PointNetFPModule,
    PointNetSAModule,
    PVConv,
    SE3d,
    SharedMLP,
    Swish,
    Voxelization,
)

__all__ = ["SE3d", "Attention", "BallQuery", "KLLoss", "PVConv", "PointNetAModule", "PointNetFPModule",
           "PointNetSAModule", "SharedMLP", "Swish", "Voxelization", "functional"]


class KLLoss(nn.Module):
    """``functional.kl_loss(x, y)`` as a module."""

    def forward(self, x, y):
        return functional.kl_loss(x, y)
