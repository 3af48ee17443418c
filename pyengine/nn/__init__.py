"""Modules built on pyengine's ops."""

from pyengine.nn.hash_grid import HashGrid
from pyengine.nn.nerf_field import NeRFField
from pyengine.nn.occupancy_grid import OccupancyGrid
from pyengine.nn.pvcnn import (
    PVCNN2,
    Attention,
    BallQuery,
    PointNetAModule,
    PointNetFPModule,
    PointNetSAModule,
    PVCNN2Base,
    PVConv,
    SE3d,
    SharedMLP,
    Swish,
    Voxelization,
)
from pyengine.nn.video import (
    Pseudo3DConv,
    SpaceConv3d,
    SpatialAttention,
    TemporalAttention,
    TemporalMix,
    UNet3D,
)

__all__ = ["PVCNN2", "SE3d", "Attention", "BallQuery", "HashGrid", "NeRFField", "OccupancyGrid", "PVCNN2Base",
           "PVConv", "PointNetAModule", "PointNetFPModule", "PointNetSAModule", "SharedMLP", "Swish", "Voxelization"]
__all__ += ["Pseudo3DConv", "SpaceConv3d", "SpatialAttention", "TemporalAttention", "TemporalMix", "UNet3D"]
