"""Drop-in surfaces for code written against other libraries.

Each shim lives in its own module and is imported only when installed, so importing
``pyengine.compat`` stays cheap.

Example:
    >>> import pyengine.compat
    >>> _ = pyengine.compat.install_tinycudann()  # before threestudio & co. import tinycudann
    >>> import tinycudann as tcnn
    >>> enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 8, "log2_hashmap_size": 15})
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["install_nerfacc", "install_nvdiffrast", "install_pvcnn", "install_tinycudann"]


def _install(name: str, shim: str, force: bool, submodules=()) -> ModuleType:
    """Registers module ``shim`` as ``sys.modules[name]`` unless a working ``name`` is importable."""
    if not force:
        if name in sys.modules:
            return sys.modules[name]
        if importlib.util.find_spec(name) is not None:
            try:
                return importlib.import_module(name)
            except (ImportError, OSError, RuntimeError):
                pass  # installed but unusable here, e.g. tinycudann without a CUDA device: use the shim
    module = importlib.import_module(shim)
    sys.modules[name] = module
    for sub in submodules:
        sys.modules[f"{name}.{sub}"] = module
    return module


def install_tinycudann(force: bool = False, strict: bool | None = None) -> ModuleType:
    """Makes ``import tinycudann`` return ``pyengine.compat.tcnn``, the drop-in for tiny-cuda-nn.

    Args:
        force: install the shim even when a real ``tinycudann`` imports fine (or another module
            is already registered under that name). Without it, a working real one wins.
        strict: if given, sets ``pyengine.compat.tcnn.STRICT``: True (default there) raises on
            config keys that tiny-cuda-nn does not know, False only warns, as threestudio's
            ``ProgressiveBandHashGrid`` needs (it passes ``start_level`` & co. to tcnn).

    Returns:
        The module that ``import tinycudann`` now gives (the real one or the shim). Also
        registered as ``tinycudann.modules``.

    Example:
        >>> import pyengine.compat
        >>> tcnn = pyengine.compat.install_tinycudann()
        >>> import tinycudann
        >>> tinycudann is tcnn
        True
    """
    module = _install("tinycudann", "pyengine.compat.tcnn", force, submodules=("modules",))
    if strict is not None and module.__name__ == "pyengine.compat.tcnn":
        module.STRICT = bool(strict)
    return module


def install_nerfacc(force: bool = False) -> ModuleType:
    """Makes ``import nerfacc`` return ``pyengine.compat.nerfacc``, the drop-in for nerfacc 0.5.

    Args:
        force: install the shim even when a real ``nerfacc`` imports fine (or another module is
            already registered under that name). Without it, a working real one wins.

    Returns:
        The module that ``import nerfacc`` now gives (the real one or the shim). The shim is also
        registered as ``nerfacc.volrend``, ``nerfacc.estimators``, ``nerfacc.estimators.occ_grid``,
        ``nerfacc.grid``, ``nerfacc.pack`` and ``nerfacc.scan``.

    Example:
        >>> import pyengine.compat
        >>> shim = pyengine.compat.install_nerfacc(force=True)
        >>> from nerfacc.estimators.occ_grid import OccGridEstimator
        >>> OccGridEstimator is shim.OccGridEstimator
        True
    """
    submodules = ("volrend", "estimators", "estimators.occ_grid", "grid", "pack", "scan")
    return _install("nerfacc", "pyengine.compat.nerfacc", force, submodules=submodules)


def install_nvdiffrast(force: bool = False) -> ModuleType:
    """Makes ``import nvdiffrast.torch as dr`` return ``pyengine.compat.nvdiffrast``, the drop-in
    for nvdiffrast's PyTorch API (``rasterize``, ``interpolate``, ``antialias``, ``texture``, the
    context classes) on pyengine's ops: no OpenGL, EGL or CUDA build.

    Args:
        force: install the shim even when a real ``nvdiffrast.torch`` imports fine (or another
            module is already registered under that name). Without it, a working real one wins.

    Returns:
        The module that ``import nvdiffrast.torch`` now gives. With the shim, ``nvdiffrast`` is a
        bare package whose ``torch`` attribute is the shim.

    Example:
        >>> import pyengine.compat
        >>> shim = pyengine.compat.install_nvdiffrast(force=True)
        >>> import nvdiffrast.torch as dr
        >>> dr is shim
        True
    """
    if not force:
        if "nvdiffrast.torch" in sys.modules:
            return sys.modules["nvdiffrast.torch"]
        if importlib.util.find_spec("nvdiffrast") is not None:
            try:
                return importlib.import_module("nvdiffrast.torch")
            except (ImportError, OSError, RuntimeError):
                pass  # installed but unusable here (no GPU, no EGL): use the shim
    shim = importlib.import_module("pyengine.compat.nvdiffrast")
    parent = ModuleType("nvdiffrast")
    parent.__path__ = []  # a package, so that `import nvdiffrast.torch` resolves through sys.modules
    parent.torch = shim
    sys.modules["nvdiffrast"] = parent
    sys.modules["nvdiffrast.torch"] = shim
    return shim


def install_pvcnn(name: str = "modules.functional", force: bool = False) -> ModuleType:
    """Makes ``import <name>`` return ``pyengine.compat.pvcnn.functional``, the drop-in for PVCNN's ops.

    PVD and PVCNN import their ops as ``modules.functional`` (the default ``name``), LION as
    ``third_party.pvcnn.functional``; the real package compiles a CUDA extension when imported,
    the drop-in compiles nothing and runs on any device. The drop-in is registered under ``name``
    and under ``name``'s submodules (``ball_query``, ``devoxelization``, ``grouping``,
    ``interpolatation``, ``loss``, ``sampling``, ``voxelization``). Parent packages that are
    importable (a PVD or LION checkout on ``sys.path``) are imported after that, so their layers
    use the drop-in; a missing direct parent becomes ``pyengine.compat.pvcnn`` (PVD's layers,
    so ``from modules import PVConv`` works without PVD's files), and missing higher ones empty
    packages. The real package is never imported.

    Args:
        name: the dotted import name of PVCNN's ``functional`` package in the code to run.
        force: replace a module already registered under ``name``; without it that one wins.

    Returns:
        The module that ``import <name>`` now gives.

    Example:
        >>> import pyengine.compat
        >>> F = pyengine.compat.install_pvcnn()
        >>> import modules.functional
        >>> modules.functional is F
        True
    """
    if not force and name in sys.modules:
        return sys.modules[name]
    module = importlib.import_module("pyengine.compat.pvcnn.functional")
    sys.modules[name] = module
    for sub in module.SUBMODULES:
        sys.modules[f"{name}.{sub}"] = module
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            try:
                found = importlib.util.find_spec(parent) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                importlib.import_module(parent)
            elif i == len(parts) - 1:
                sys.modules[parent] = importlib.import_module("pyengine.compat.pvcnn")
            else:
                sys.modules[parent] = ModuleType(parent)
                sys.modules[parent].__path__ = []
    for i in range(1, len(parts)):
        setattr(sys.modules[".".join(parts[:i])], parts[i], sys.modules[".".join(parts[:i + 1])])
    return module
