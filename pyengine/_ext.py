"""Lazy loader for the compiled extension ``pyengine._C``.

Importing pyengine never fails because of the extension: ``load()`` returns the module or
``None``, and ``error()`` says why it is missing. Ops then fall back to the other backends.

``PYENGINE_EXT=<module>`` loads another build of the same sources instead (tests/cuda_emu uses
it for the CUDA kernels compiled for the CPU).
"""

from __future__ import annotations

import importlib
import os

_mod = None
_error: str | None = None
_tried = False


def load():
    """The compiled module, or None when it is not built or fails to load."""
    global _mod, _error, _tried
    if not _tried:
        _tried = True
        try:
            _mod = importlib.import_module(os.environ.get("PYENGINE_EXT") or "pyengine._C")
        except Exception as exc:  # ImportError, or an undefined symbol from a stale build
            _error = f"pyengine._C could not be loaded ({type(exc).__name__}: {exc})"
    return _mod


def error() -> str | None:
    load()
    return _error


def has_cuda() -> bool:
    mod = load()
    return bool(mod is not None and mod.built_with_cuda())
