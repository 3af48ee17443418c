"""Public ops. The point ops of PVCNN are importable from here by name (the function shadows its
module's attribute of the same name; ``importlib.import_module("pyengine.ops.<op>")`` gives the
module)."""

from pyengine.ops.ball_query import ball_query
from pyengine.ops.furthest_point_sample import furthest_point_sample
from pyengine.ops.grouping import gather, grouping
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate
from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize

__all__ = ["avg_voxelize", "ball_query", "furthest_point_sample", "gather", "grouping", "nearest_neighbor_interpolate",
           "normalize_coords", "trilinear_devoxelize"]
