"""ShapeWorld views: one shape of one colour seen from a random camera, with a view-dependent caption.

The training data of the bundled text-to-image prior (``pyengine train-prior images``) and of the
evaluation classifier of the SDS engine. An image is ``[S, S, 3]`` float32 in **[-1, 1]** (the
diffusion models' range; ``to_uint8`` maps it to bytes), ``S = 32`` by default, channels last.
Its caption reads ``"a red cube, side view"`` and its labels are indices into ``SHAPES``,
``COLORS`` and ``VIEWS``.

Scene: the shape (``pyengine.data.shapeworld``: random yaw, each dimension jittered by
``SIZE_JITTER``, scale ``OBJECT_SCALE``) at the origin, inside the SDS engine's NeRF box
[-1, 1]^3; white background. Cameras (``CAMERA``) look at the origin from a random azimuth,
elevation and distance, the distribution the SDS engine samples its training views from.
Lighting as DreamFusion samples it: a directional light near the camera (the camera's direction
turned by a random angle of about ``LIGHT_JITTER``), ``ALBEDO_FRACTION`` of the images with flat
colour (ambient 1: DreamFusion's "albedo" shading) and the rest diffuse with ambient ``AMBIENT``.

View words (``view_of``) follow DreamFusion's view-dependent prompts: ``overhead`` above
``OVERHEAD_DEG`` of elevation, else ``front`` within 45 degrees of azimuth 0, ``back`` within 45
degrees of azimuth 180, ``side`` otherwise. ShapeWorld shapes have no front, so the view word
mostly tells the prior the elevation (overhead or not); it is there because real priors need it.

Splits are fixed by seeds as in ``shapeworld_video``: image ``i`` of the training split is drawn
from seed ``data_seed + i``, of the held-out split from ``data_seed + HELDOUT_OFFSET + i``; its
(shape, colour) is ``combos[i % len(combos)]`` for a fixed permutation of all pairs.

Example:
    >>> img, labels = make_view(ViewSpec.random(0, "cube", "red"), size=16)
    >>> img.shape, caption("cube", "red", view_of(30.0, 100.0))
    (torch.Size([16, 16, 3]), 'a red cube, side view')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from pyengine.data import shapeworld
from pyengine.render.camera import Cameras, cameras_from_spherical

SHAPES: tuple[str, ...] = shapeworld.SHAPES
COLORS: tuple[str, ...] = tuple(shapeworld.COLORS)
VIEWS: tuple[str, ...] = ("front", "side", "back", "overhead")
DEFAULT_SIZE = 32
HELDOUT_OFFSET = 1_000_000

OBJECT_SCALE = 0.7  # the shapes' bounding radius is 0.9 -> 0.63 units: inside [-1, 1]^3 with room to spare
SIZE_JITTER = 0.15  # each shape dimension times U[1 - j, 1 + j]
#: The camera distribution (uniform in each range), shared with the SDS engine's training views.
CAMERA = {"radius_range": (3.2, 3.8), "elevation_range_deg": (-10.0, 70.0), "azimuth_range_deg": (0.0, 360.0),
          "fov_deg": 40.0}
OVERHEAD_DEG = 50.0
LIGHT_JITTER = 0.5  # standard deviation of the Gaussian added to the unit camera direction (about 27 degrees)
AMBIENT = 0.3
ALBEDO_FRACTION = 0.2
BACKGROUND = (1.0, 1.0, 1.0)


def view_of(elevation_deg: float, azimuth_deg: float) -> str:
    """The view word of a camera at ``elevation_deg`` and ``azimuth_deg`` (DreamFusion's rule)."""
    if elevation_deg > OVERHEAD_DEG:
        return "overhead"
    az = azimuth_deg % 360.0
    if az < 45.0 or az >= 315.0:
        return "front"
    if 135.0 <= az < 225.0:
        return "back"
    return "side"


def caption(shape: str, color: str, view: str | None = None) -> str:
    """``"a red cube, side view"`` (``"an orange ..."`` before a vowel; no view part when ``view`` is None)."""
    text = f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"
    return text if view is None else f"{text}, {view} view"


def vocabulary() -> list[str]:
    """Every word of every caption, in a fixed order (the text encoder's vocabulary)."""
    return ["a", "an", "view", *SHAPES, *COLORS, *VIEWS]


def parse_caption(text: str) -> tuple[str | None, str | None, str | None]:
    """``(shape, colour, view)`` named in a caption, each None when it names none.

    Raises ValueError when it names two of one kind (``"a red blue cube"``).
    """
    return shapeworld.parse_words(text, (("shape", SHAPES), ("colour", COLORS), ("view", VIEWS)))


@dataclass(frozen=True)
class ViewSpec:
    """Everything that defines one image.

    Args:
        shape, color: a ``SHAPES`` and ``COLORS`` name.
        yaw_deg: the object's turn about +z.
        dims: the shape's dimensions (``shapeworld.SHAPE_DIMS`` keys), as a tuple of items.
        radius, elevation_deg, azimuth_deg: the camera (looking at the origin).
        light: unit world direction towards the light.
        albedo: flat colour (ambient 1) instead of diffuse shading.
    """

    shape: str
    color: str
    yaw_deg: float = 0.0
    dims: tuple = ()
    radius: float = 3.5
    elevation_deg: float = 20.0
    azimuth_deg: float = 0.0
    light: tuple[float, float, float] = (0.0, 0.0, 1.0)
    albedo: bool = False

    def __post_init__(self):
        for value, names, arg in ((self.shape, SHAPES, "shape"), (self.color, COLORS, "color")):
            if value not in names:
                raise ValueError(f"ViewSpec: {arg} must be one of {names}, got {value!r}")

    @classmethod
    def random(cls, seed: int, shape: str, color: str) -> ViewSpec:
        """The image of ``(shape, color)`` whose proportions, yaw, camera and light come from ``seed``."""
        g = torch.Generator().manual_seed(int(seed))
        u = lambda lo=0.0, hi=1.0: lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))
        dims = []
        for name, value in shapeworld.SHAPE_DIMS[shape].items():
            jit = lambda v: v * (1 + SIZE_JITTER * (2 * u() - 1))
            dims.append((name, tuple(jit(v) for v in value) if isinstance(value, tuple) else jit(value)))
        yaw = u(0.0, 360.0)
        radius = u(*CAMERA["radius_range"])
        el = u(*CAMERA["elevation_range_deg"])
        az = u(*CAMERA["azimuth_range_deg"])
        light = random_light(el, az, g)
        return cls(shape, color, yaw, tuple(dims), radius, el, az, light, u() < ALBEDO_FRACTION)

    @property
    def view(self) -> str:
        return view_of(self.elevation_deg, self.azimuth_deg)

    def camera(self, size: int) -> Cameras:
        return cameras_from_spherical(self.radius, self.elevation_deg, self.azimuth_deg, CAMERA["fov_deg"], size, size)


def camera_direction(elevation_deg, azimuth_deg) -> torch.Tensor:
    """Unit vector(s) from the origin towards cameras at these angles: ``[..., 3]``."""
    el, az = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64)), \
        torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64))
    return torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)


def random_light(elevation_deg: float, azimuth_deg: float, generator: torch.Generator,
                 jitter: float = LIGHT_JITTER) -> tuple[float, float, float]:
    """A light direction near the camera's: its unit direction plus ``jitter`` times a Gaussian, normalised."""
    d = camera_direction(elevation_deg, azimuth_deg) + jitter * torch.randn(3, generator=generator,
                                                                           dtype=torch.float64)
    d = d / d.norm().clamp_min(1e-9)
    return tuple(float(x) for x in d)


def scene_of(spec: ViewSpec) -> shapeworld.Scene:
    return shapeworld.Scene([shapeworld.SceneObject(spec.shape, spec.color, scale=OBJECT_SCALE, yaw_deg=spec.yaw_deg,
                                                    dims=dict(spec.dims))])


def make_view(spec: ViewSpec, size: int = DEFAULT_SIZE, spp: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one image.

    Returns:
        image: [size, size, 3] float32 in [-1, 1].
        labels: [3] int64 (shape, colour, view) indices into ``SHAPES``, ``COLORS``, ``VIEWS``.
    """
    if size < 8:
        raise ValueError(f"make_view: size must be >= 8, got {size}")
    out = shapeworld.render(scene_of(spec), spec.camera(size), background=BACKGROUND, light_dir=spec.light,
                            ambient=1.0 if spec.albedo else AMBIENT, spp=spp,
                            generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([SHAPES.index(spec.shape), COLORS.index(spec.color), VIEWS.index(spec.view)])
    return out["image"][0] * 2 - 1, labels


def combinations(shapes=SHAPES, colors=COLORS, seed: int = 0) -> list[tuple[str, str]]:
    """Every (shape, colour), in an order fixed by ``seed`` (a random permutation)."""
    for names, allowed, arg in ((shapes, SHAPES, "shapes"), (colors, COLORS, "colors")):
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise ValueError(f"shapeworld_images: {arg} must be a non-empty list of {allowed}, got {list(names)}")
    combos = [(s, c) for s in shapes for c in colors]
    perm = torch.randperm(len(combos), generator=torch.Generator().manual_seed(int(seed))).tolist()
    return [combos[i] for i in perm]


@lru_cache(maxsize=4)
def _split_uint8(split: str, n: int, size: int, shapes: tuple, colors: tuple, data_seed: int):
    combos = combinations(shapes, colors, data_seed)
    base = data_seed + (HELDOUT_OFFSET if split == "heldout" else 0)
    images = torch.empty(n, size, size, 3, dtype=torch.uint8)
    labels = torch.empty(n, 3, dtype=torch.long)
    for i in range(n):
        img, labels[i] = make_view(ViewSpec.random(base + i, *combos[i % len(combos)]), size)
        images[i] = to_uint8(img)
    return images, labels


def dataset(split: str, n: int, size: int = DEFAULT_SIZE, shapes=SHAPES, colors=COLORS, data_seed: int = 0,
            dtype=torch.uint8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of the ``"train"`` or ``"heldout"`` split (cached per arguments).

    Returns:
        images: [n, size, size, 3], uint8 (``dtype=torch.uint8``: convert batches with
            ``from_uint8``) or a float dtype in [-1, 1].
        labels: [n, 3] int64 indices into ``SHAPES``, ``COLORS``, ``VIEWS`` (the full tuples,
            whatever subset was asked for).

    Example:
        >>> images, labels = dataset("heldout", 2, size=16)
        >>> images.shape, images.dtype, labels.shape
        (torch.Size([2, 16, 16, 3]), torch.uint8, torch.Size([2, 3]))
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"shapeworld_images.dataset: split must be 'train' or 'heldout', got {split!r}")
    if n < 0:
        raise ValueError(f"shapeworld_images.dataset: n must be >= 0, got {n}")
    images, labels = _split_uint8(split, int(n), int(size), tuple(shapes), tuple(colors), int(data_seed))
    return (images if dtype == torch.uint8 else from_uint8(images, dtype)), labels


def reference_masks(shape: str, cams: Cameras, yaw_deg: float = 0.0, spp: int = 4) -> torch.Tensor:
    """Silhouettes ``[B, H, W]`` in [0, 1] of the canonical ``shape`` (``SHAPE_DIMS``, scale
    ``OBJECT_SCALE``) turned by ``yaw_deg``, seen from ``cams``: the reference of the SDS
    engine's silhouette IoU."""
    obj = shapeworld.SceneObject(shape, "grey", scale=OBJECT_SCALE, yaw_deg=yaw_deg)
    return shapeworld.render(shapeworld.Scene([obj]), cams, spp=spp, generator=torch.Generator().manual_seed(0))["mask"]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[..., 3] values in [-1, 1] (clamped) -> uint8 in [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [..., 3] -> ``dtype`` in [-1, 1]."""
    return x.to(dtype) / 127.5 - 1


__all__ = ["SHAPES", "COLORS", "VIEWS", "CAMERA", "ViewSpec", "caption", "camera_direction", "combinations",
           "dataset", "from_uint8", "make_view", "parse_caption", "random_light", "reference_masks", "to_uint8",
           "view_of", "vocabulary"]
