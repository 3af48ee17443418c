"""Backend selection for every op, in one place.

Order of precedence:
  1. the op's ``backend=`` argument,
  2. the ``PYENGINE_BACKEND`` environment variable, a preference for a whole program: it applies
     to the ops that have that backend and can run it on these inputs; every other op chooses
     automatically, with one warning per op saying why,
  3. the innermost ``pyengine.use_backend(...)`` context,
  4. the device's default order (``DEFAULT_ORDER``, or the op's own from ``set_order``).

1 and 3 are strict: a backend that cannot run the inputs (or that the op does not have) raises
``BackendError`` saying why.

The automatic choice walks the default order; when it has to skip a faster backend it warns once
per (op, backend) with the reason, and when nothing fits the error lists every backend and why.
Each op registers, per backend, a ``check(**facts) -> reason | None`` and its implementation (a
namespace with one function per kernel; see ``_define``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyengine import _ext

BACKENDS = ("cuda", "triton", "cpu", "reference")

# Default order per device type; an op may override it for a device type (``set_order``), with
# the reason next to the call. On CPU the OpenMP kernel is the fast path; Triton only runs on CPU
# under its interpreter (tests), so it is never chosen there automatically.
DEFAULT_ORDER = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
_op_order: dict[tuple[str, str], tuple[str, ...]] = {}

# use_backend() blocks, innermost last: a plain list (not a ContextVar, which torch.compile cannot
# trace), so the preference is per process, not per thread or task.
_context: list[str | None] = []
_warned: set = set()


class BackendError(RuntimeError):
    """No backend (or not the requested one) can run these inputs."""


@dataclass
class Backend:
    name: str
    check: Callable[..., str | None]
    impl: object  # whatever the op needs: a module, a namespace of functions, ...


_registry: dict[str, dict[str, Backend]] = {}


def register(op: str, name: str, check: Callable[..., str | None], impl: object) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    _registry.setdefault(op, {})[name] = Backend(name, check, impl)


def set_order(op: str, device_type: str, order: tuple[str, ...]) -> None:
    """Automatic-choice order of ``op``'s backends on ``device_type``, replacing DEFAULT_ORDER's."""
    bad = [b for b in order if b not in BACKENDS]
    if bad:
        raise ValueError(f"set_order: unknown backends {bad}")
    _op_order[(op, device_type)] = tuple(order)


def order(op: str, device_type: str) -> tuple[str, ...]:
    return _op_order.get((op, device_type), DEFAULT_ORDER.get(device_type, ("reference",)))


def ops() -> list[str]:
    return sorted(_registry)


@contextlib.contextmanager
def use_backend(name: str | None):
    """Prefer ``name`` for every op called inside the block (``None`` restores automatic choice).

    Example:
        >>> with pyengine.use_backend("reference"):
        ...     y = pyengine.ops.hash_encode(x, params, cfg)
    """
    if name is not None and name not in BACKENDS:
        raise ValueError(f"use_backend: expected one of {BACKENDS} or None, got {name!r}")
    _context.append(name)
    try:
        yield
    finally:
        _context.pop()


def requested(backend: str | None = None) -> tuple[str | None, str]:
    """The requested backend and where the request came from."""
    if backend is not None and backend != "auto":
        return backend, "backend= argument"
    env = os.environ.get("PYENGINE_BACKEND", "").strip()
    if env and env != "auto":
        return env, "PYENGINE_BACKEND"
    ctx = _context[-1] if _context else None
    if ctx is not None:
        return ctx, "pyengine.use_backend()"
    return None, ""


# Checks shared by ops ----------------------------------------------------------------------------

def check_cpu_ext(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"runs on CPU tensors, got {device.type}"
    if _ext.load() is None:
        return _ext.error()
    return None


def check_cuda_ext(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"runs on CUDA tensors, got {device.type}"
    if _ext.load() is None:
        return _ext.error()
    if not _ext.has_cuda():
        return "pyengine._C was built without CUDA (reinstall with PYENGINE_CUDA=1 on a CUDA machine)"
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_triton(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton is not importable ({exc})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    if device.type == "cpu":
        return "runs on CUDA tensors, or on CPU only under TRITON_INTERPRET=1"
    return f"does not run on {device.type}"


# Selection -------------------------------------------------------------------------------------

def select(op: str, device: torch.device, backend: str | None = None, **facts) -> Backend:
    """The backend that runs ``op`` for inputs on ``device`` with the given facts."""
    table = _registry.get(op)
    if table is None:
        raise KeyError(f"no op named {op!r} is registered; known: {ops()}")
    name, source = requested(backend)
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"{op}: unknown backend {name!r} (from {source}); expected one of {BACKENDS}")
        if name not in table:
            reason = f"is not implemented for this op; it has {sorted(table)}"
        else:
            reason = table[name].check(device=device, **facts)
            reason = None if reason is None else f"cannot run these inputs: {reason}"
        if reason is None:
            return table[name]
        if source != "PYENGINE_BACKEND":
            raise BackendError(f"{op}: backend {name!r} (from {source}) {reason}")
        if (op, source, name) not in _warned:
            _warned.add((op, source, name))
            warnings.warn(f"pyengine.{op}: the {name!r} backend preferred by {source} {reason}; "
                          "choosing automatically", RuntimeWarning, stacklevel=3)
    rejected = []
    for cand in order(op, device.type):
        b = table.get(cand)
        if b is None:
            continue
        reason = b.check(device=device, **facts)
        if reason is None:
            if rejected and (op, rejected[0][0]) not in _warned:
                _warned.add((op, rejected[0][0]))
                warnings.warn(f"pyengine.{op}: using the {cand!r} backend because "
                              f"{rejected[0][0]!r} cannot run: {rejected[0][1]}", RuntimeWarning,
                              stacklevel=3)
            return b
        rejected.append((cand, reason))
    for cand, b in table.items():
        if cand not in [r[0] for r in rejected]:
            rejected.append((cand, b.check(device=device, **facts) or "not in the default order for this device"))
    lines = "\n".join(f"  {n}: {r}" for n, r in rejected)
    raise BackendError(f"{op}: no backend can run inputs on {device}:\n{lines}")


def availability(op: str, device: torch.device, **facts) -> dict[str, str | None]:
    """For `pyengine doctor`: each backend of ``op`` and why it cannot run (None if it can)."""
    return {name: b.check(device=device, **facts) for name, b in _registry[op].items()}
