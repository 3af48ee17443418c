"""pyengine: fused kernels and engines for text-to-3D and video diffusion.

Importing pyengine never fails because a compiled backend is missing; ``pyengine doctor``
says which backends each op can use and why not.
"""

from pyengine.ops._dispatch import BackendError, use_backend
from pyengine.ops.composite import CompositeResult, composite, pack_info
from pyengine.ops.hash_encode import HashGridConfig, hash_encode
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from pyengine.ops.ray_march import ray_march
from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize

__version__ = "0.1.0"

__all__ = ["BackendError", "CompositeResult", "HashGridConfig", "avg_voxelize", "composite", "hash_encode",
           "normalize_coords", "pack_info", "ray_aabb_intersect", "ray_march", "trilinear_devoxelize", "use_backend",
           "__version__"]
