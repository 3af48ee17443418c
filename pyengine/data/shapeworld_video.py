"""ShapeWorld clips: one shape of one colour moving left, right, up or down, with a caption.

A clip is ``[T, S, S, 3]`` float32 in **[-1, 1]** (the diffusion models' range; ``to_uint8`` maps
it to bytes for GIF/MP4), ``T = 16`` frames of ``S x S`` pixels, channels last. Its caption reads
``"a red cube moving left"`` and its labels are indices into ``SHAPES``, ``COLORS`` and
``DIRECTIONS``.

Rendering: the shape (``pyengine.data.shapeworld``: random yaw and proportions, scale
``OBJECT_SCALE``) sits at the origin and is seen from a fixed camera (elevation 25 degrees,
azimuth 30, 40 degree field of view, 4 units away, white background, one directional light).
Motion is made by moving the *camera* in its own image plane, the opposite way, which gives the
same images as moving the object at that depth: all ``T`` frames are then one batched
``shapeworld.render`` call of ``T`` cameras (60 to 80 ms a clip at 32 x 32 with 4 samples per
pixel on one core), and the shading and perspective of every frame are exact. ``"left"`` is the
image's -x, ``"up"`` its +y (rows decrease). The object travels ``TRAVEL`` world units (times a
speed factor in [0.8, 1.2]) centred on a start jitter, and is offset across the motion by up to
``CROSS_JITTER``: about a quarter of the frame over a clip. The object (at most 0.73 units from its
centre in the image plane: a cone seen from 25 degrees) never leaves the frame.

Why 24 x 24 (``DEFAULT_SIZE``): the resolution trades the prior's training time against how well
the shape can be read. The same small classifier (``pyengine.engines.video``, 1500 steps, no
augmentation) names the shape of 280 held-out real clips with accuracy 0.961 at 16, 0.971 at 24
and 0.986 at 32 (colour and direction: 1.0 at every size; the errors are cubes and cylinders seen
face on), while a training step of the 3D U-Net of ``configs/video_shapeworld.yaml`` (batch 8,
one thread) took 0.7 s at 16, 1.5 s at 24 and 3.0 s at 32, measured side by side. At 24 an hour
of training is about 2400 steps, twice the steps of 32, with a judge almost as good; at 16 the
object is about 6 pixels across and its silhouette differs between cube, cylinder and cone by a
pixel or two.

Splits are fixed by seeds as in ``pyengine.engines.points``: clip ``i`` of the training split is
drawn from seed ``data_seed + i``, of the held-out split from ``data_seed + HELDOUT_OFFSET + i``;
its (shape, colour, direction) is ``combos[i % len(combos)]`` for a fixed permutation of all
combinations (seeded by ``data_seed``), so every combination appears once in each run of
``len(combos)`` clips.

Example:
    >>> clip, labels = make_clip(ClipSpec.random(0, "cube", "red", "left"), size=24)
    >>> clip.shape, caption("cube", "red", "left")
    (torch.Size([16, 24, 24, 3]), 'a red cube moving left')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from pyengine.data import shapeworld
from pyengine.render.camera import Cameras, look_at

SHAPES: tuple[str, ...] = shapeworld.SHAPES
COLORS: tuple[str, ...] = tuple(shapeworld.COLORS)
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
#: Image-plane unit vector (x right, y up) of each direction.
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, 1.0),
                                                    "down": (0.0, -1.0)}
FRAMES = 16
DEFAULT_SIZE = 24
HELDOUT_OFFSET = 1_000_000

OBJECT_SCALE = 0.6  # about 12 of 32 pixels across (9 of 24)
TRAVEL = 0.75  # world units on the object's plane (the frame is 2.9 units wide there): about 8 of 32 pixels
SPEED_JITTER = 0.2  # travel times U[1 - j, 1 + j]
START_JITTER = 0.08  # the path's centre moves along the motion by up to this
CROSS_JITTER = 0.25  # ... and across it by up to this
SIZE_JITTER = 0.15  # each shape dimension times U[1 - j, 1 + j]
CAMERA = {"radius": 4.0, "elevation_deg": 25.0, "azimuth_deg": 30.0, "fov_deg": 40.0}
LIGHT_DIR = (0.5, 0.3, 1.0)
BACKGROUND = (1.0, 1.0, 1.0)


def caption(shape: str, color: str, direction: str) -> str:
    """``"a red cube moving left"`` (``"an orange ..."`` before a vowel)."""
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape} moving {direction}"


def vocabulary() -> list[str]:
    """Every word of every caption, in a fixed order (the text encoder's vocabulary)."""
    return ["a", "an", "moving", *SHAPES, *COLORS, *DIRECTIONS]


def parse_caption(text: str) -> tuple[str | None, str | None, str | None]:
    """``(shape, colour, direction)`` named in a caption, each None when it names none.

    Raises ValueError when it names two of one kind (``"a red blue cube"``).
    """
    return shapeworld.parse_words(text, (("shape", SHAPES), ("colour", COLORS), ("direction", DIRECTIONS)))


@dataclass(frozen=True)
class ClipSpec:
    """Everything that defines one clip.

    Args:
        shape, color, direction: a ``SHAPES``, ``COLORS`` and ``DIRECTIONS`` name.
        yaw_deg: the object's turn about +z.
        dims: the shape's dimensions (``shapeworld.SHAPE_DIMS`` keys), as a tuple of items.
        center: (x, y) image-plane world position of the path's midpoint.
        travel: world units the object moves over the clip.
    """

    shape: str
    color: str
    direction: str
    yaw_deg: float = 0.0
    dims: tuple = ()
    center: tuple[float, float] = (0.0, 0.0)
    travel: float = TRAVEL

    def __post_init__(self):
        for value, names, arg in ((self.shape, SHAPES, "shape"), (self.color, COLORS, "color"),
                                  (self.direction, DIRECTIONS, "direction")):
            if value not in names:
                raise ValueError(f"ClipSpec: {arg} must be one of {names}, got {value!r}")

    @classmethod
    def random(cls, seed: int, shape: str, color: str, direction: str) -> ClipSpec:
        """The clip of ``(shape, color, direction)`` whose yaw, proportions and path come from ``seed``."""
        g = torch.Generator().manual_seed(int(seed))
        u = lambda: float(torch.rand((), generator=g, dtype=torch.float64))
        dims = []
        for name, value in shapeworld.SHAPE_DIMS[shape].items():
            jit = lambda v: v * (1 + SIZE_JITTER * (2 * u() - 1))
            dims.append((name, tuple(jit(v) for v in value) if isinstance(value, tuple) else jit(value)))
        yaw = 360.0 * u()
        along, across = START_JITTER * (2 * u() - 1), CROSS_JITTER * (2 * u() - 1)
        travel = TRAVEL * (1 + SPEED_JITTER * (2 * u() - 1))
        dx, dy = DIRECTION_VECTORS[direction]
        center = (along * dx - across * dy, along * dy + across * dx)
        return cls(shape, color, direction, yaw, tuple(dims), center, travel)

    def positions(self, frames: int = FRAMES) -> torch.Tensor:
        """[frames, 2] image-plane (x right, y up) world positions of the object, evenly spaced."""
        s = torch.linspace(-0.5, 0.5, frames, dtype=torch.float64) * self.travel
        d = torch.tensor(DIRECTION_VECTORS[self.direction], dtype=torch.float64)
        return torch.tensor(self.center, dtype=torch.float64) + s[:, None] * d


def clip_cameras(positions: torch.Tensor, size: int) -> Cameras:
    """The ``CAMERA`` view moved by ``-positions`` [T, 2] in its image plane (the object then
    appears at ``positions``), one camera per frame, ``size`` x ``size`` pixels."""
    c, el, az = CAMERA["radius"], math.radians(CAMERA["elevation_deg"]), math.radians(CAMERA["azimuth_deg"])
    eye = torch.tensor([[c * math.cos(el) * math.cos(az), c * math.cos(el) * math.sin(az), c * math.sin(el)]])
    c2w = look_at(eye)[0]  # [3, 4]: right, up, backward, position
    right, up = c2w[:, 0].double(), c2w[:, 1].double()
    c2w = c2w.expand(len(positions), 3, 4).clone()
    shift = positions[:, :1] * right + positions[:, 1:] * up  # [T, 3]
    c2w[:, :, 3] = c2w[:, :, 3] - shift.float()
    return Cameras.from_fov(c2w, CAMERA["fov_deg"], size, size)


def make_clip(spec: ClipSpec, size: int = DEFAULT_SIZE, frames: int = FRAMES, spp: int = 4) -> tuple[torch.Tensor,
                                                                                                         torch.Tensor]:
    """Render one clip.

    Args:
        spec: the clip.
        size: frame width and height in pixels.
        frames: frames in the clip.
        spp: samples per pixel (4: anti-aliased edges).

    Returns:
        clip: [frames, size, size, 3] float32 in [-1, 1].
        labels: [3] int64 (shape, colour, direction) indices into ``SHAPES``, ``COLORS``, ``DIRECTIONS``.
    """
    if size < 8:
        raise ValueError(f"make_clip: size must be >= 8, got {size}")
    if frames < 2:
        raise ValueError(f"make_clip: frames must be >= 2, got {frames}")
    obj = shapeworld.SceneObject(spec.shape, spec.color, scale=OBJECT_SCALE, yaw_deg=spec.yaw_deg,
                                 dims=dict(spec.dims))
    out = shapeworld.render(shapeworld.Scene([obj]), clip_cameras(spec.positions(frames), size), background=BACKGROUND,
                            light_dir=LIGHT_DIR, spp=spp, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([SHAPES.index(spec.shape), COLORS.index(spec.color), DIRECTIONS.index(spec.direction)])
    return out["image"] * 2 - 1, labels


def combinations(shapes=SHAPES, colors=COLORS, directions=DIRECTIONS, seed: int = 0) -> list[tuple[str, str, str]]:
    """Every (shape, colour, direction), in an order fixed by ``seed`` (a random permutation)."""
    for names, allowed, arg in ((shapes, SHAPES, "shapes"), (colors, COLORS, "colors"),
                                (directions, DIRECTIONS, "directions")):
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise ValueError(f"shapeworld_video: {arg} must be a non-empty list of {allowed}, got {list(names)}")
    combos = [(s, c, d) for s in shapes for c in colors for d in directions]
    perm = torch.randperm(len(combos), generator=torch.Generator().manual_seed(int(seed))).tolist()
    return [combos[i] for i in perm]


@lru_cache(maxsize=4)
def _split_uint8(split: str, n: int, size: int, frames: int, shapes: tuple, colors: tuple, directions: tuple,
                 data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    combos = combinations(shapes, colors, directions, data_seed)
    base = data_seed + (HELDOUT_OFFSET if split == "heldout" else 0)
    clips = torch.empty(n, frames, size, size, 3, dtype=torch.uint8)
    labels = torch.empty(n, 3, dtype=torch.long)
    for i in range(n):
        clip, labels[i] = make_clip(ClipSpec.random(base + i, *combos[i % len(combos)]), size, frames)
        clips[i] = to_uint8(clip)
    return clips, labels


def dataset(split: str, n: int, size: int = DEFAULT_SIZE, frames: int = FRAMES, shapes=SHAPES, colors=COLORS,
            directions=DIRECTIONS, data_seed: int = 0, dtype=torch.uint8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips of the ``"train"`` or ``"heldout"`` split (cached per arguments).

    Returns:
        clips: [n, frames, size, size, 3], uint8 (``dtype=torch.uint8``, 8 times smaller: convert
            batches with ``from_uint8``) or a float dtype in [-1, 1].
        labels: [n, 3] int64 indices into ``SHAPES``, ``COLORS``, ``DIRECTIONS`` (the full tuples,
            whatever subset was asked for).

    Example:
        >>> clips, labels = dataset("heldout", 2, size=16, frames=4)
        >>> clips.shape, clips.dtype, labels.shape
        (torch.Size([2, 4, 16, 16, 3]), torch.uint8, torch.Size([2, 3]))
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"shapeworld_video.dataset: split must be 'train' or 'heldout', got {split!r}")
    if n < 0:
        raise ValueError(f"shapeworld_video.dataset: n must be >= 0, got {n}")
    clips, labels = _split_uint8(split, int(n), int(size), int(frames), tuple(shapes), tuple(colors),
                                 tuple(directions), int(data_seed))
    return (clips if dtype == torch.uint8 else from_uint8(clips, dtype)), labels


def to_uint8(clip: torch.Tensor) -> torch.Tensor:
    """[..., 3] values in [-1, 1] (clamped) -> uint8 in [0, 255]."""
    return ((clip.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(clip: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [..., 3] -> ``dtype`` in [-1, 1]."""
    return clip.to(dtype) / 127.5 - 1
