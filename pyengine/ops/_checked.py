"""Which tensors have already passed a value check, so that ops need not check them again.

A value check (indices in range, ranges that do not overlap) reads a result back from the device.
On a GPU that synchronisation can cost more than the kernel it guards, and in a loop it is paid on
every call although the tensor (a mesh's faces, a ray layout) has not changed. So an op remembers a
tensor once it has passed a check, and a producer marks what it made valid by construction
(``pack_info`` and ``ray_march`` mark their ``packed_info``, ``rasterize`` its ids). The op then
skips the check while the tensor is unchanged.

"Unchanged" means the same tensor object at the same version counter. Every in-place write bumps
the counter, also through a view, so a tensor edited after its check is checked again. A mark is
keyed by what the check depended on, e.g. ``("packed_info", n_samples)``: the same faces checked
against 100 vertices say nothing about 50. Marks hold the tensor weakly and go with it. Inference
tensors have no version counter and are always checked. Under ``torch.compile`` nothing is
remembered (the op checks as it always did).

Example:
    >>> t = torch.tensor([0, 1, 2])
    >>> mark(t, ("indices", 3)); passed(t, ("indices", 3)), passed(t, ("indices", 2))
    (True, False)
    >>> t[0] = 5  # an in-place write: checked again
    >>> passed(t, ("indices", 3))
    False
"""

from __future__ import annotations

import weakref

import torch

# id(tensor) -> (weak reference, version when marked, keys that passed at that version)
_marks: dict[int, tuple[weakref.ref, int, set]] = {}


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors track no version
        return None


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def passed(t: torch.Tensor, key: tuple) -> bool:
    """True if ``t``, unchanged since, was marked with ``key``."""
    if _compiling():
        return False
    entry = _marks.get(id(t))
    if entry is None or entry[0]() is not t:
        return False
    return entry[1] == _version(t) and key in entry[2]


def mark(t: torch.Tensor, key: tuple) -> None:
    """Record that ``t`` at its present version passed the check named by ``key``."""
    if _compiling():
        return
    version = _version(t)
    if version is None:
        return
    tid = id(t)
    entry = _marks.get(tid)
    if entry is None or entry[0]() is not t or entry[1] != version:

        def forget(ref, tid=tid):
            if _marks.get(tid, (None,))[0] is ref:
                del _marks[tid]

        entry = (weakref.ref(t, forget), version, set())
        _marks[tid] = entry
    entry[2].add(key)


def clear() -> None:
    """Forget every mark (tests)."""
    _marks.clear()
