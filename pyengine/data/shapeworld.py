"""ShapeWorld: pyengine's procedural dataset of simple coloured shapes, rendered analytically.

A scene holds one or more objects, each a shape (sphere, cube, cylinder, cone, torus) in a named
colour, placed by a position, a uniform scale and a rotation. Shapes are signed distance functions
(SDFs); ``render`` sphere-traces the union SDF from ``pyengine.render.camera`` cameras, takes
normals by central differences of the SDF and shades them with one directional light
(Lambertian plus ambient). Everything is plain PyTorch and deterministic for a seed.

Conventions:

- World +z is up (as in ``orbit_cameras``). At scale 1 every shape is centred on the origin and,
  at any yaw, fits in [-1, 1]^3 with a largest half-extent of 0.8 to 0.98 (``SHAPE_DIMS``); the
  axis of the cylinder, the cone (apex up) and the torus (lying flat) is +z.
- ``render`` returns ``depth`` as the distance along the unit ray from the camera centre to the
  surface (not z-depth), and **0 where the ray misses**; ``mask`` says where it is valid.

Example:
    >>> from pyengine.render.camera import orbit_cameras
    >>> scene = sample_scene(0)
    >>> caption(scene)
    'a purple sphere'
    >>> out = render(scene, orbit_cameras(4, width=64, height=64))
    >>> out["image"].shape, out["mask"].shape
    (torch.Size([4, 64, 64, 3]), torch.Size([4, 64, 64]))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from pyengine.render.camera import (
    Cameras,
    generate_rays,
    orbit_cameras,
    random_orbit_cameras,
)

__all__ = [
    "COLORS",
    "SHAPES",
    "SHAPE_DIMS",
    "Scene",
    "SceneObject",
    "caption",
    "make_heldout_views",
    "make_multiview_dataset",
    "render",
    "sample_scene",
    "sample_surface_points",
    "scene_sdf",
]

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")

#: Palette: name -> linear RGB in [0, 1]. No white: the default background is white.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.12),
    "green": (0.16, 0.66, 0.22),
    "blue": (0.16, 0.34, 0.88),
    "yellow": (0.96, 0.84, 0.12),
    "purple": (0.56, 0.24, 0.78),
    "orange": (0.98, 0.52, 0.10),
    "grey": (0.50, 0.50, 0.50),
}

#: Default dimensions of each shape at scale 1 (override per object with ``SceneObject.dims``).
#: cube: half-extents along x, y, z; cylinder and cone: radius of the disc(s) and half of the
#: height along z (the cone's base at z = -half_height, apex at +half_height); torus: distance
#: from the centre to the tube's centre line and the tube's radius.
SHAPE_DIMS: dict[str, dict[str, float | tuple[float, float, float]]] = {
    "sphere": {"radius": 0.9},
    "cube": {"half_extents": (0.65, 0.65, 0.65)},
    "cylinder": {"radius": 0.7, "half_height": 0.8},
    "cone": {"radius": 0.8, "half_height": 0.8},
    "torus": {"major_radius": 0.7, "minor_radius": 0.28},
}


# Shapes: SDF, bounding radius, surface area and area-uniform surface sampling, in object space ------

def _sdf_sphere(p, radius):
    return torch.linalg.vector_norm(p, dim=-1) - radius


def _sdf_cube(p, half_extents):
    q = p.abs() - p.new_tensor(half_extents)
    return torch.linalg.vector_norm(q.clamp_min(0), dim=-1) + q.amax(dim=-1).clamp_max(0)


def _sdf_cylinder(p, radius, half_height):
    d = torch.stack([torch.linalg.vector_norm(p[..., :2], dim=-1) - radius, p[..., 2].abs() - half_height], -1)
    return d.amax(dim=-1).clamp_max(0) + torch.linalg.vector_norm(d.clamp_min(0), dim=-1)


def _sdf_cone(p, radius, half_height):
    # Exact SDF of a capped cone (Inigo Quilez's sdCappedCone with top radius 0), in the (radial,
    # axial) half-plane: `ca` is the offset to the base disc, `cb` the offset to the slanted side.
    qx, qy = torch.linalg.vector_norm(p[..., :2], dim=-1), p[..., 2]
    h, r = half_height, radius
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qx, r), torch.zeros_like(qx)))
    ca_y = qy.abs() - h
    k2x, k2y = -r, 2.0 * h  # from the base rim to the apex
    s = ((-qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)
    s = s.clamp(0.0, 1.0)
    cb_x, cb_y = qx + k2x * s, qy - h + k2y * s
    inside = (cb_x < 0) & (ca_y < 0)
    d2 = torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y)
    return torch.where(inside, -1.0, 1.0) * d2.sqrt()


def _sdf_torus(p, major_radius, minor_radius):
    q = torch.stack([torch.linalg.vector_norm(p[..., :2], dim=-1) - major_radius, p[..., 2]], -1)
    return torch.linalg.vector_norm(q, dim=-1) - minor_radius


_SDF = {"sphere": _sdf_sphere, "cube": _sdf_cube, "cylinder": _sdf_cylinder, "cone": _sdf_cone, "torus": _sdf_torus}


def _bound_radius(shape: str, d: dict) -> float:
    if shape == "sphere":
        return d["radius"]
    if shape == "cube":
        return math.hypot(*d["half_extents"])
    if shape in ("cylinder", "cone"):
        return math.hypot(d["radius"], d["half_height"])
    return d["major_radius"] + d["minor_radius"]


def _area(shape: str, d: dict) -> float:
    if shape == "sphere":
        return 4 * math.pi * d["radius"] ** 2
    if shape == "cube":
        a, b, c = d["half_extents"]
        return 8 * (a * b + b * c + c * a)
    if shape == "cylinder":
        r, h = d["radius"], d["half_height"]
        return 4 * math.pi * r * h + 2 * math.pi * r * r
    if shape == "cone":
        r, h = d["radius"], d["half_height"]
        return math.pi * r * math.hypot(r, 2 * h) + math.pi * r * r
    return 4 * math.pi ** 2 * d["major_radius"] * d["minor_radius"]


def _disc(n, radius, g):
    """[n, 2] points uniform on a disc."""
    rho = radius * torch.rand(n, generator=g).sqrt()
    phi = 2 * math.pi * torch.rand(n, generator=g)
    return torch.stack([rho * phi.cos(), rho * phi.sin()], -1)


def _sample_local(shape: str, d: dict, n: int, g: torch.Generator) -> torch.Tensor:
    """[n, 3] points uniform (by area) on a shape's surface, in object space."""
    if shape == "sphere":
        v = torch.randn(n, 3, generator=g)
        return d["radius"] * v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)
    if shape == "cube":
        half = torch.tensor(d["half_extents"])
        a, b, c = d["half_extents"]
        face = torch.multinomial(torch.tensor([b * c, b * c, a * c, a * c, a * b, a * b]), n, True, generator=g)
        p = (2 * torch.rand(n, 3, generator=g) - 1) * half
        axis = face // 2
        sign = 1.0 - 2.0 * (face % 2)
        p[torch.arange(n), axis] = sign * half[axis]
        return p
    if shape == "cylinder":
        r, h = d["radius"], d["half_height"]
        part = torch.multinomial(torch.tensor([2 * h, r / 2, r / 2]), n, True, generator=g)  # side, top, bottom
        phi = 2 * math.pi * torch.rand(n, generator=g)
        side = torch.stack([r * phi.cos(), r * phi.sin(), h * (2 * torch.rand(n, generator=g) - 1)], -1)
        cap = torch.cat([_disc(n, r, g), torch.where(part == 1, h, -h)[:, None]], -1)
        return torch.where((part == 0)[:, None], side, cap)
    if shape == "cone":
        r, h = d["radius"], d["half_height"]
        lateral, base = math.pi * r * math.hypot(r, 2 * h), math.pi * r * r
        on_side = torch.rand(n, generator=g) < lateral / (lateral + base)
        s = torch.rand(n, generator=g).sqrt()  # fraction of the way from the apex: density grows with s
        phi = 2 * math.pi * torch.rand(n, generator=g)
        side = torch.stack([r * s * phi.cos(), r * s * phi.sin(), h - 2 * h * s], -1)
        bottom = torch.cat([_disc(n, r, g), torch.full((n, 1), -h)], -1)
        return torch.where(on_side[:, None], side, bottom)
    # torus: the angle around the tube has density proportional to the distance from the z axis
    R, r = d["major_radius"], d["minor_radius"]
    phis = []
    while sum(len(x) for x in phis) < n:
        phi = 2 * math.pi * torch.rand(2 * n, generator=g)
        accept = torch.rand(2 * n, generator=g) * (R + r) < R + r * phi.cos()
        phis.append(phi[accept])
    phi = torch.cat(phis)[:n]
    theta = 2 * math.pi * torch.rand(n, generator=g)
    rho = R + r * phi.cos()
    return torch.stack([rho * theta.cos(), rho * theta.sin(), r * phi.sin()], -1)


# Scenes --------------------------------------------------------------------------------------------

@dataclass
class SceneObject:
    """One shape in a scene.

    Args:
        shape: one of ``SHAPES``.
        color: a ``COLORS`` name, or an (r, g, b) tuple in [0, 1].
        position: (x, y, z) of the object's centre in world coordinates.
        scale: uniform scale (1 fits the shape in [-1, 1]^3).
        yaw_deg: rotation about the world +z axis, in degrees.
        tilt_deg: rotation about the object's own x axis, applied before the yaw (0 keeps the
            shape's axis vertical).
        dims: overrides of ``SHAPE_DIMS[shape]`` (e.g. ``{"half_extents": (0.9, 0.4, 0.3)}``).
    """

    shape: str
    color: str | tuple[float, float, float] = "red"
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    yaw_deg: float = 0.0
    tilt_deg: float = 0.0
    dims: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"SceneObject: shape must be one of {SHAPES}, got {self.shape!r}")
        if isinstance(self.color, str):
            if self.color not in COLORS:
                raise ValueError(f"SceneObject: color must be one of {tuple(COLORS)} or an RGB tuple, "
                                 f"got {self.color!r}")
        elif len(self.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.color):
            raise ValueError(f"SceneObject: an RGB color must be 3 values in [0, 1], got {self.color!r}")
        unknown = set(self.dims) - set(SHAPE_DIMS[self.shape])
        if unknown:
            raise ValueError(f"SceneObject: unknown dims {sorted(unknown)} for a {self.shape} "
                             f"(it has {sorted(SHAPE_DIMS[self.shape])})")
        if not self.scale > 0:
            raise ValueError(f"SceneObject: scale must be positive, got {self.scale}")
        self.position = tuple(float(x) for x in self.position)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLORS[self.color] if isinstance(self.color, str) else tuple(float(c) for c in self.color)

    @property
    def color_name(self) -> str | None:
        """The palette name of the colour (None for an RGB colour not in the palette)."""
        if isinstance(self.color, str):
            return self.color
        return next((k for k, v in COLORS.items() if v == self.rgb), None)

    @property
    def shape_dims(self) -> dict:
        return {**SHAPE_DIMS[self.shape], **self.dims}

    def rotation(self) -> torch.Tensor:
        """[3, 3] object-to-world rotation: tilt about x, then yaw about z."""
        a, b = math.radians(self.yaw_deg), math.radians(self.tilt_deg)
        rz = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
        return rz @ rx

    def bounding_radius(self) -> float:
        """Radius of a sphere about ``position`` that holds the object."""
        return self.scale * _bound_radius(self.shape, self.shape_dims)

    def area(self) -> float:
        return self.scale ** 2 * _area(self.shape, self.shape_dims)


@dataclass
class Scene:
    """A ShapeWorld scene: a list of objects (their union is the surface).

    Example:
        >>> scene = Scene.single("cube", "red", yaw_deg=30.0)
        >>> caption(scene)
        'a red cube'
    """

    objects: list[SceneObject]

    def __post_init__(self):
        if isinstance(self.objects, SceneObject):
            self.objects = [self.objects]
        self.objects = list(self.objects)
        if not self.objects:
            raise ValueError("Scene: needs at least one object")

    @classmethod
    def single(cls, shape: str, color="red", **kwargs) -> Scene:
        """One object (at the origin unless ``position`` is given)."""
        return cls([SceneObject(shape, color, **kwargs)])

    def bounding_sphere(self) -> tuple[tuple[float, float, float], float]:
        """(centre, radius) of a sphere holding every object."""
        c = torch.tensor([o.position for o in self.objects]).mean(0)
        r = max(float(torch.linalg.vector_norm(torch.tensor(o.position) - c)) + o.bounding_radius()
                for o in self.objects)
        return tuple(c.tolist()), r


class _Compiled:
    """A scene's per-object tensors on one device, so the tracing loop builds nothing."""

    def __init__(self, scene: Scene, device, dtype):
        objs = scene.objects
        self.fns = [_SDF[o.shape] for o in objs]
        self.dims = [o.shape_dims for o in objs]
        self.pos = [torch.tensor(o.position, device=device, dtype=dtype) for o in objs]
        self.rot = [o.rotation().to(device=device, dtype=dtype) for o in objs]
        self.scale = [float(o.scale) for o in objs]
        self.rgb = torch.tensor([o.rgb for o in objs], device=device, dtype=dtype)

    def distances(self, p: torch.Tensor) -> list[torch.Tensor]:
        # world -> object space: R^T (p - position) / scale, written with row vectors as (p - pos) @ R
        return [fn((p - pos) @ rot / s, **d) * s
                for fn, d, pos, rot, s in zip(self.fns, self.dims, self.pos, self.rot, self.scale)]

    def sdf(self, p: torch.Tensor) -> torch.Tensor:
        ds = self.distances(p)
        out = ds[0]
        for d in ds[1:]:
            out = torch.minimum(out, d)
        return out

    def sdf_and_index(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.distances(p), -1).min(dim=-1)

    def normal(self, p: torch.Tensor, h: float = 5e-4) -> torch.Tensor:
        offsets = torch.eye(3, device=p.device, dtype=p.dtype) * h
        grad = torch.stack([self.sdf(p + e) - self.sdf(p - e) for e in offsets], -1)
        return grad / torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(1e-12)


def scene_sdf(scene: Scene, points: torch.Tensor, return_index: bool = False):
    """Signed distance from points to the scene's surface (the union of its objects).

    Args:
        scene: the scene.
        points: [..., 3] world points.
        return_index: also return which object is nearest.

    Returns:
        sdf: [...] signed distance (negative inside an object); exact outside the objects, a
        bound inside where objects overlap.
        index: [...] int64 index into ``scene.objects`` of the nearest object (if asked).
    """
    points = torch.as_tensor(points)
    if points.shape[-1:] != (3,):
        raise ValueError(f"scene_sdf: points must be [..., 3], got {tuple(points.shape)}")
    if not points.is_floating_point():
        points = points.float()
    compiled = _Compiled(scene, points.device, points.dtype)
    if return_index:
        return compiled.sdf_and_index(points)
    return compiled.sdf(points)


def _generator(generator_or_seed) -> torch.Generator:
    if isinstance(generator_or_seed, torch.Generator):
        return generator_or_seed
    return torch.Generator().manual_seed(int(generator_or_seed))


def _rand(g) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def sample_scene(generator_or_seed: torch.Generator | int = 0, n_objects: int = 1, shapes=None, colors=None,
                 size_jitter: float = 0.0, layout_radius: float = 1.0) -> Scene:
    """A random ShapeWorld scene, the same for the same seed.

    One object sits at the origin at scale 1 with a random yaw. Several objects get distinct
    (shape, colour) pairs while there are enough, a smaller scale (``0.78 / sqrt(n)``) and
    non-overlapping positions on the z = 0 plane within ``layout_radius`` of the origin.

    Args:
        generator_or_seed: a ``torch.Generator`` (advanced by the call) or an int seed.
        n_objects: number of objects.
        shapes: the shapes to draw from (default ``SHAPES``).
        colors: the colour names to draw from (default every ``COLORS`` name).
        size_jitter: each dimension is multiplied by a factor uniform in [1 - j, 1 + j].
        layout_radius: radius of the disc the object centres are placed in.

    Example:
        >>> caption(sample_scene(3, n_objects=2))
        'an orange cone and a yellow cylinder'
    """
    g = _generator(generator_or_seed)
    shapes = tuple(SHAPES if shapes is None else shapes)
    colors = tuple(COLORS if colors is None else colors)
    if n_objects < 1:
        raise ValueError(f"sample_scene: n_objects must be >= 1, got {n_objects}")
    if not shapes or not colors:
        raise ValueError("sample_scene: shapes and colors must not be empty")
    if not 0 <= size_jitter < 1:
        raise ValueError(f"sample_scene: size_jitter must be in [0, 1), got {size_jitter}")
    pairs = [(s, c) for s in shapes for c in colors]
    order = torch.cat([torch.randperm(len(pairs), generator=g) for _ in range(-(-n_objects // len(pairs)))])
    objects = []
    for k in order[:n_objects].tolist():
        shape, color = pairs[k]
        dims = {}
        for name, value in SHAPE_DIMS[shape].items():
            if isinstance(value, tuple):
                dims[name] = tuple(v * (1 + size_jitter * (2 * _rand(g) - 1)) for v in value)
            else:
                dims[name] = value * (1 + size_jitter * (2 * _rand(g) - 1))
        objects.append(SceneObject(shape, color, yaw_deg=360.0 * _rand(g), dims=dims if size_jitter else {}))
    if n_objects > 1:
        _layout(objects, g, layout_radius)
    return Scene(objects)


def _layout(objects: list[SceneObject], g: torch.Generator, layout_radius: float, margin: float = 0.05):
    scale = min(1.0, 0.78 / math.sqrt(len(objects)))
    while True:
        for o in objects:
            o.scale = scale
        for _ in range(500):
            placed = []
            for o in objects:
                rho, phi = layout_radius * math.sqrt(_rand(g)), 2 * math.pi * _rand(g)
                xy = (rho * math.cos(phi), rho * math.sin(phi))
                if all(math.dist(xy, q[:2]) > o.bounding_radius() + p.bounding_radius() + margin
                       for p, q in placed):
                    placed.append((o, xy))
                else:
                    break
            if len(placed) == len(objects):
                for o, xy in placed:
                    o.position = (xy[0], xy[1], 0.0)
                return
        scale *= 0.9


def parse_words(text: str, kinds) -> tuple:
    """For each ``(kind, names)`` of ``kinds``, the one word of ``names`` that ``text`` contains, or
    None; a ValueError when it contains two of one kind (``"a red blue cube"``). The captions'
    parser of ``shapeworld_images`` and ``shapeworld_video``."""
    words = re.findall(r"[a-z]+", text.lower())
    found = []
    for kind, names in kinds:
        hits = [w for w in words if w in names]
        if len(set(hits)) > 1:
            raise ValueError(f"parse_caption: {text!r} names more than one {kind} ({', '.join(hits)})")
        found.append(hits[0] if hits else None)
    return tuple(found)


def caption(scene: Scene) -> str:
    """A short description such as ``"a red cube"`` or ``"a red cube and a blue sphere"``."""
    words = []
    for o in scene.objects:
        phrase = f"{o.color_name} {o.shape}" if o.color_name else o.shape
        words.append(("an " if phrase[0] in "aeiou" else "a ") + phrase)
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


# Rendering -----------------------------------------------------------------------------------------

def _trace(compiled: _Compiled, o, d, near, far, n_steps: int, eps: float):
    """Sphere tracing of [M] rays; returns the distance t and the SDF value at the final point."""
    t = near.clone()
    dist = torch.full_like(t, math.inf)
    alive = torch.nonzero(far > near).squeeze(1)
    for _ in range(n_steps):
        if alive.numel() == 0:
            break
        ta = t[alive]
        da = compiled.sdf(o[alive] + ta[:, None] * d[alive])
        dist[alive] = da
        ta = ta + da
        t[alive] = ta
        alive = alive[(da > eps) & (ta < far[alive])]
    return t, dist


def _pixel_offsets(spp: int, n_pixels: int, generator) -> torch.Tensor:
    """[n_pixels, spp, 2] sample offsets in [-0.5, 0.5) from the pixel centre (stratified when spp is k*k)."""
    if spp == 1:
        return torch.zeros(n_pixels, 1, 2)
    g = _generator(0 if generator is None else generator)
    u = torch.rand(n_pixels, spp, 2, generator=g)
    k = math.isqrt(spp)
    if k * k == spp:
        a, b = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        strata = torch.stack([a.reshape(-1), b.reshape(-1)], -1).float()
        u = (strata + u) / k
    return u - 0.5


def render(scene: Scene, cams: Cameras, background=(1.0, 1.0, 1.0), light_dir=(0.5, 0.3, 1.0), ambient: float = 0.3,
           spp: int = 1, generator: torch.Generator | None = None, n_steps: int = 80, eps: float = 1e-4,
           hit_eps: float = 2e-3, chunk: int = 1 << 18) -> dict[str, torch.Tensor]:
    """Render a scene from a batch of cameras by sphere tracing its SDF.

    Each ray starts where it enters the scene's bounding sphere and takes at most ``n_steps``
    steps of the SDF's value, stopping once that is below ``eps``; it hits if the SDF there is
    below ``hit_eps``. Colour is ``albedo * (ambient + (1 - ambient) * max(0, n . l))`` with ``n``
    the SDF's normalised central-difference gradient, and ``background`` where the ray misses.

    Args:
        scene: the scene.
        cams: B cameras (``pyengine.render.camera``), all of one image size H x W.
        background: RGB in [0, 1] where nothing is hit.
        light_dir: world direction towards a directional light (normalised here), or
            ``"camera"`` for a headlight (light from each ray's own camera).
        ambient: ambient fraction in [0, 1].
        spp: samples per pixel; above 1 they are jittered in the pixel (stratified when spp is a
            square) and averaged, which anti-aliases edges. The jitter uses ``generator`` (a fixed
            seed by default, so renders are deterministic).
        n_steps, eps, hit_eps: sphere-tracing budget, convergence and hit thresholds (world units).
        chunk: rays traced at a time, to bound memory.

    Returns:
        dict with
        image: [B, H, W, 3] float in [0, 1].
        mask: [B, H, W] float, the fraction of a pixel's samples that hit (0 or 1 when spp = 1).
        depth: [B, H, W] distance from the camera centre along the unit ray to the hit point,
            averaged over the samples that hit; **0 where nothing is hit**.
        normal: [B, H, W, 3] unit world-space normal (averaged over hits), 0 where nothing is hit.

    Example:
        >>> from pyengine.render.camera import orbit_cameras
        >>> out = render(Scene.single("sphere", "blue"), orbit_cameras(1, radius=4.0))
        >>> round(out["depth"][out["mask"] > 0].min().item(), 3)  # camera distance - sphere radius
        3.1
    """
    if spp < 1:
        raise ValueError(f"render: spp must be >= 1, got {spp}")
    if not 0.0 <= ambient <= 1.0:
        raise ValueError(f"render: ambient must be in [0, 1], got {ambient}")
    device, dtype = cams.device, cams.dtype
    B, H, W = len(cams), cams.height, cams.width
    compiled = _Compiled(scene, device, dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype).reshape(3)
    headlight = isinstance(light_dir, str)
    if headlight and light_dir != "camera":
        raise ValueError(f"render: light_dir must be a 3-vector or 'camera', got {light_dir!r}")
    if not headlight:
        light = torch.as_tensor(light_dir, device=device, dtype=dtype).reshape(3)
        light = light / torch.linalg.vector_norm(light)

    i, j = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    ij = torch.stack([i, j], -1).reshape(H * W, 1, 2) + _pixel_offsets(spp, B * H * W, generator).view(B, H * W, spp, 2)
    rays_o, rays_d = generate_rays(cams, ij.to(device))  # [B, H*W, spp, 3]
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)

    center, radius = scene.bounding_sphere()
    center = torch.tensor(center, device=device, dtype=dtype)
    radius = radius * 1.01 + 1e-3

    M = rays_o.shape[0]
    rgb = torch.empty(M, 3, device=device, dtype=dtype)
    hit = torch.zeros(M, device=device, dtype=torch.bool)
    depth = torch.zeros(M, device=device, dtype=dtype)
    normal = torch.zeros(M, 3, device=device, dtype=dtype)
    for s in range(0, M, chunk):
        o, d = rays_o[s:s + chunk], rays_d[s:s + chunk]
        # entry and exit of the bounding sphere: |o + t d - c|^2 = radius^2 with |d| = 1
        oc = o - center
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - radius * radius)
        root = disc.clamp_min(0).sqrt()
        near = (-b - root).clamp_min(0)
        far = torch.where(disc > 0, -b + root, torch.zeros_like(b))
        t, dist = _trace(compiled, o, d, near, far, n_steps, eps)
        h = (dist < hit_eps) & (t < far)
        color = bg.expand(o.shape[0], 3).clone()
        if h.any():
            p = o[h] + t[h, None] * d[h]
            n = compiled.normal(p)
            _, idx = compiled.sdf_and_index(p)
            lam = (n * (-d[h] if headlight else light)).sum(-1).clamp_min(0)
            color[h] = (compiled.rgb[idx] * (ambient + (1 - ambient) * lam)[:, None]).clamp(0, 1)
            normal[s:s + chunk][h] = n
            depth[s:s + chunk][h] = t[h]
        rgb[s:s + chunk] = color
        hit[s:s + chunk] = h

    rgb, hit, depth, normal = (x.view(B, H, W, spp, -1) for x in (rgb, hit.to(dtype), depth, normal))
    n_hit = hit.sum(3)
    mask = n_hit.squeeze(-1) / spp
    depth = (depth.sum(3) / n_hit.clamp_min(1)).squeeze(-1)
    normal = normal.sum(3)
    normal = normal / torch.linalg.vector_norm(normal, dim=-1, keepdim=True).clamp_min(1e-12)
    return {"image": rgb.mean(3), "mask": mask, "depth": depth, "normal": normal}


# Datasets and point clouds -------------------------------------------------------------------------

def _render_views(scene: Scene, cams: Cameras, **render_kwargs) -> dict:
    out = render(scene, cams, **render_kwargs)
    return {"images": out["image"], "masks": out["mask"], "depths": out["depth"], "normals": out["normal"],
            "cameras": cams, "caption": caption(scene)}


def make_multiview_dataset(scene: Scene, n_views: int = 32, width: int = 64, height: int = 64, seed: int = 0,
                           radius=4.0, elevation_range_deg=(0.0, 40.0), azimuth_range_deg=(0.0, 360.0),
                           fov_deg=40.0, device=None, **render_kwargs) -> dict:
    """Training views of a scene: cameras at random azimuths and elevations around the origin.

    Args:
        scene: the scene.
        n_views: number of views.
        width, height: image size.
        seed: seeds the cameras (and the supersampling jitter, unless a generator is given).
        radius: camera distance, or a (min, max) range.
        elevation_range_deg, azimuth_range_deg: (min, max) ranges, drawn uniformly.
        fov_deg: vertical field of view, or a (min, max) range.
        device: where to render (CPU by default).
        **render_kwargs: passed to ``render`` (``background``, ``light_dir``, ``spp``, ...).

    Returns:
        dict with images [N, H, W, 3], masks [N, H, W], depths [N, H, W] (0 where empty),
        normals [N, H, W, 3], cameras (``Cameras`` of N views) and caption (str).

    Example:
        >>> data = make_multiview_dataset(sample_scene(0), n_views=8, width=32, height=32, seed=1)
        >>> data["images"].shape, len(data["cameras"])
        (torch.Size([8, 32, 32, 3]), 8)
    """
    g = torch.Generator().manual_seed(int(seed))
    cams = random_orbit_cameras(n_views, g, radius_range=radius, elevation_range_deg=elevation_range_deg,
                                azimuth_range_deg=azimuth_range_deg, fov_deg=fov_deg, width=width, height=height,
                                device=device)
    render_kwargs.setdefault("generator", g)
    return _render_views(scene, cams, **render_kwargs)


def make_heldout_views(scene: Scene, n_views: int = 8, width: int = 64, height: int = 64, radius: float = 4.0,
                       elevation_deg=20.0, fov_deg: float = 40.0, start_azimuth_deg: float = 0.0, device=None,
                       **render_kwargs) -> dict:
    """Held-out views for evaluation: a turntable of evenly spaced azimuths (``orbit_cameras``).

    Same returns as ``make_multiview_dataset``. ``elevation_deg`` is a float or a [n_views] tensor.
    """
    cams = orbit_cameras(n_views, radius=radius, elevation_deg=elevation_deg, fov_deg=fov_deg, width=width,
                         height=height, start_azimuth_deg=start_azimuth_deg, device=device)
    return _render_views(scene, cams, **render_kwargs)


def sample_surface_points(scene: Scene, n: int, generator: torch.Generator | int | None = None,
                          return_normals: bool = False):
    """Points uniformly distributed (by area) on the scene's surface.

    Each object's surface is sampled analytically, objects in proportion to their areas. Points of
    one object that lie inside another (overlapping objects) are dropped and redrawn, so every
    point is on the union's surface.

    Args:
        scene: the scene.
        n: number of points.
        generator: a ``torch.Generator`` or int seed (default seed 0).
        return_normals: also return outward unit normals (the SDF's gradient).

    Returns:
        points: [n, 3] float32 world points; and normals: [n, 3] if asked.

    Example:
        >>> pts = sample_surface_points(Scene.single("torus"), 2048, generator=0)
        >>> pts.shape, bool(scene_sdf(Scene.single("torus"), pts).abs().max() < 1e-4)
        (torch.Size([2048, 3]), True)
    """
    g = _generator(0 if generator is None else generator)
    compiled = _Compiled(scene, "cpu", torch.float32)
    areas = torch.tensor([o.area() for o in scene.objects], dtype=torch.float64)
    chunks, have = [], 0
    for _ in range(100):
        if have >= n:
            break
        m = n - have
        which = torch.multinomial(areas, m, replacement=True, generator=g) if len(areas) > 1 else torch.zeros(m)
        pts = torch.empty(m, 3)
        for k, o in enumerate(scene.objects):
            sel = which == k
            if sel.any():
                local = _sample_local(o.shape, o.shape_dims, int(sel.sum()), g)
                pts[sel] = torch.tensor(o.position) + o.scale * local @ o.rotation().T
        if len(scene.objects) > 1:
            pts = pts[compiled.sdf(pts) > -1e-4]
        chunks.append(pts)
        have += len(pts)
    if have < n:
        raise RuntimeError("sample_surface_points: objects overlap too much to sample the union's surface")
    points = torch.cat(chunks)[:n]
    if return_normals:
        return points, compiled.normal(points)
    return points
