"""pyengine: fused kernels and engines for text-to-3D and video diffusion.

Importing pyengine never fails because a compiled backend is missing; ``pyengine doctor``
says which backends each op can use and why not.
"""

from pyengine.ops._dispatch import BackendError, use_backend
from pyengine.ops.hash_encode import HashGridConfig, hash_encode

__version__ = "0.1.0"

__all__ = ["BackendError", "HashGridConfig", "hash_encode", "use_backend", "__version__"]
