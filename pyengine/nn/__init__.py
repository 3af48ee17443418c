"""Modules built on pyengine's ops."""

from pyengine.nn.hash_grid import HashGrid
from pyengine.nn.nerf_field import NeRFField
from pyengine.nn.occupancy_grid import OccupancyGrid

__all__ = ["HashGrid", "NeRFField", "OccupancyGrid"]
