"""pyengine: fused kernels and engines for text-to-3D and video diffusion.

Importing pyengine never fails because a compiled backend is missing; ``pyengine doctor``
says which backends each op can use and why not.
"""

from pyengine.ops._dispatch import BackendError, use_backend
from pyengine.ops.antialias import antialias, antialias_topology
from pyengine.ops.ball_query import ball_query
from pyengine.ops.composite import CompositeResult, composite, pack_info
from pyengine.ops.furthest_point_sample import furthest_point_sample
from pyengine.ops.grouping import gather, grouping
from pyengine.ops.hash_encode import HashGridConfig, hash_encode
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate
from pyengine.ops.rasterize import interpolate, rasterize
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from pyengine.ops.ray_march import ray_march
from pyengine.ops.st_attention import st_attention
from pyengine.ops.texture import texture
from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize

__version__ = "0.1.0"

__all__ = ["BackendError", "CompositeResult", "HashGridConfig", "antialias", "antialias_topology", "avg_voxelize",
           "ball_query", "composite", "furthest_point_sample", "gather", "grouping", "hash_encode", "interpolate",
           "nearest_neighbor_interpolate", "normalize_coords", "pack_info", "rasterize", "ray_aabb_intersect",
           "ray_march", "st_attention", "texture", "trilinear_devoxelize", "use_backend", "__version__"]
