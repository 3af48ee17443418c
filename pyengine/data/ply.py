"""Point clouds as PLY files (binary little-endian float32 ``x y z``, optional ``uchar`` colours).

Example:
    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "c.ply")
    >>> write_ply(path, np.zeros((4, 3), np.float32))
    >>> read_ply(path).shape
    (4, 3)
"""

from __future__ import annotations

import numpy as np


def write_ply(path: str, points, colors=None) -> None:
    """Write ``points`` [N, 3] (and ``colors`` [N, 3] uint8, or floats in [0, 1]) to ``path``."""
    pts = np.asarray(points.detach().cpu() if hasattr(points, "detach") else points, dtype="<f4")
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"write_ply: points must be [N, 3], got {pts.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(pts)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        col = np.asarray(colors)
        if col.dtype != np.uint8:
            col = np.clip(np.round(col * 255), 0, 255).astype(np.uint8)
        col = np.broadcast_to(col, pts.shape)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    rec = np.empty(len(pts), dtype=fields)
    rec["x"], rec["y"], rec["z"] = pts.T
    if colors is not None:
        rec["red"], rec["green"], rec["blue"] = col.T
    with open(path, "wb") as f:
        f.write(("\n".join(header + ["end_header"]) + "\n").encode("ascii"))
        f.write(rec.tobytes())


def read_ply(path: str) -> np.ndarray:
    """[N, 3] float32 vertex positions of a binary little-endian PLY with float/uchar vertex properties."""
    types = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1"}
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"read_ply: {path} is not a PLY file")
        n, fields = 0, []
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"read_ply: {path} has no end_header")
            words = line.decode("ascii").split()
            if words[:1] == ["end_header"]:
                break
            if words[:1] == ["format"] and words[1] != "binary_little_endian":
                raise ValueError(f"read_ply: only binary_little_endian is read, {path} is {words[1]}")
            if words[:2] == ["element", "vertex"]:
                n = int(words[2])
            elif words[:1] == ["property"]:
                fields.append((words[2], types[words[1]]))
        rec = np.frombuffer(f.read(n * np.dtype(fields).itemsize), dtype=fields, count=n)
    return np.stack([rec["x"], rec["y"], rec["z"]], -1).astype(np.float32)
