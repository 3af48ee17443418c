import time

import pytest
import torch

from pyengine.data import shapeworld
from pyengine.data import shapeworld_video as V


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def object_mask(clip: torch.Tensor) -> torch.Tensor:
    """[T, S, S] pixels that are clearly not the white background (clip in [-1, 1])."""
    return ((1 - (clip + 1) / 2).amax(-1)) > 0.3


def centroids(clip: torch.Tensor) -> torch.Tensor:
    """[T, 2] (x right, y up) pixel centroid of the object in each frame."""
    m = object_mask(clip).float()
    S = clip.shape[1]
    rows, cols = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                                indexing="ij")
    n = m.sum((1, 2))
    return torch.stack([(m * cols).sum((1, 2)) / n, -(m * rows).sum((1, 2)) / n], -1)


@pytest.mark.parametrize("direction", V.DIRECTIONS)
def test_the_object_moves_in_the_captioned_direction(direction):
    for seed in range(3):
        clip, labels = V.make_clip(V.ClipSpec.random(seed, "cube", "blue", direction), size=32)
        assert clip.shape == (16, 32, 32, 3) and clip.dtype == torch.float32
        assert clip.min() >= -1 and clip.max() <= 1
        assert labels.tolist() == [V.SHAPES.index("cube"), V.COLORS.index("blue"), V.DIRECTIONS.index(direction)]
        c = centroids(clip)
        step = c[1:] - c[:-1]
        want = torch.tensor(V.DIRECTION_VECTORS[direction])
        along, across = step @ want, step @ torch.tensor([-want[1], want[0]])
        assert (along > 0).all() and along.sum() > 5.5, (direction, along)  # about 8 pixels over the clip
        assert across.sum().abs() < 1.5, (direction, across)


def test_colour_and_shape_are_the_captioned_ones():
    palette = torch.tensor([shapeworld.COLORS[c] for c in V.COLORS])
    palette = palette / palette.norm(dim=-1, keepdim=True)
    sizes = {}
    for k, (shape, color) in enumerate(zip(V.SHAPES * 2, V.COLORS + V.COLORS[:3])):
        clip, _ = V.make_clip(V.ClipSpec.random(k, shape, color, "right"), size=32, frames=2)
        m = object_mask(clip)
        rgb = ((clip + 1) / 2)[m].mean(0)
        assert V.COLORS[int((palette @ (rgb / rgb.norm())).argmax())] == color  # shading scales, keeps the hue
        sizes.setdefault(shape, []).append(float(m[0].float().sum()))
    # every shape covers a visible, shape-dependent area (a torus lies flat and covers less than a sphere)
    assert min(min(v) for v in sizes.values()) > 40
    assert max(sizes["sphere"]) > max(sizes["torus"])


def test_objects_stay_in_the_frame():
    combos = V.combinations()
    for i in range(24):
        clip, _ = V.make_clip(V.ClipSpec.random(1000 + i, *combos[i]), size=32)
        m = object_mask(clip)
        border = m[:, 0, :].any() or m[:, -1, :].any() or m[:, :, 0].any() or m[:, :, -1].any()
        assert not border, combos[i]


def test_captions_and_vocabulary():
    assert V.caption("cube", "red", "left") == "a red cube moving left"
    assert V.caption("torus", "orange", "up") == "an orange torus moving up"
    vocab = set(V.vocabulary())
    for combo in V.combinations():
        assert set(V.caption(*combo).split()) <= vocab
        assert V.parse_caption(V.caption(*combo)) == combo
    assert V.parse_caption("A RED thing") == (None, "red", None)
    with pytest.raises(ValueError, match="more than one colour"):
        V.parse_caption("a red blue cube")
    with pytest.raises(ValueError, match="direction"):
        V.ClipSpec("cube", "red", "sideways")


def test_splits_are_fixed_by_seed_and_cover_every_combination():
    combos = V.combinations(["cube", "cone"], ["red", "green"], ["left", "up", "down"], seed=3)
    assert sorted(combos) == sorted((s, c, d) for s in ("cube", "cone") for c in ("red", "green")
                                    for d in ("left", "up", "down"))
    assert combos == V.combinations(["cube", "cone"], ["red", "green"], ["left", "up", "down"], seed=3)
    kw = dict(size=16, frames=3, shapes=["cube", "cone"], colors=["red", "green"], directions=["left", "up", "down"],
              data_seed=3)
    x, y = V.dataset("train", 14, **kw)
    assert x.shape == (14, 3, 16, 16, 3) and x.dtype == torch.uint8 and y.shape == (14, 3)
    # clip i: combination i % 12 of the permutation, seed data_seed + i
    for i in (0, 5, 13):
        s, c, d = combos[i % 12]
        assert y[i].tolist() == [V.SHAPES.index(s), V.COLORS.index(c), V.DIRECTIONS.index(d)]
        want, _ = V.make_clip(V.ClipSpec.random(3 + i, s, c, d), 16, 3)
        assert torch.equal(x[i], V.to_uint8(want))
    h, _ = V.dataset("heldout", 14, **kw)
    assert not any(torch.equal(a, b) for a in x for b in h)
    f, _ = V.dataset("train", 14, dtype=torch.float32, **kw)
    assert torch.allclose(f, V.from_uint8(x)) and f.min() >= -1 and f.max() <= 1
    with pytest.raises(ValueError, match="split"):
        V.dataset("test", 2)
    with pytest.raises(ValueError, match="shapes"):
        V.combinations(["cube", "pyramid"])


def test_rendering_is_fast_enough_for_a_training_set():
    t0 = time.perf_counter()
    for i in range(3):
        V.make_clip(V.ClipSpec.random(i, V.SHAPES[i], "red", "left"), size=32)
    assert (time.perf_counter() - t0) / 3 < 1.5  # about 0.06 s on an idle core; 1400 clips in minutes


def test_the_largest_objects_at_the_ends_of_the_longest_paths_stay_in_the_frame():
    big = {"sphere": {"radius": 0.9 * (1 + V.SIZE_JITTER)}, "cube": {"half_extents": (0.65 * (1 + V.SIZE_JITTER),) * 3},
           "cylinder": {"radius": 0.7 * (1 + V.SIZE_JITTER), "half_height": 0.8 * (1 + V.SIZE_JITTER)},
           "cone": {"radius": 0.8 * (1 + V.SIZE_JITTER), "half_height": 0.8 * (1 + V.SIZE_JITTER)},
           "torus": {"major_radius": 0.7 * (1 + V.SIZE_JITTER), "minor_radius": 0.28 * (1 + V.SIZE_JITTER)}}
    for shape, dims in big.items():
        for direction, (dx, dy) in V.DIRECTION_VECTORS.items():
            along, across = V.START_JITTER, V.CROSS_JITTER
            center = (along * dx - across * dy, along * dy + across * dx)
            spec = V.ClipSpec(shape, "red", direction, 45.0, tuple(dims.items()), center,
                              V.TRAVEL * (1 + V.SPEED_JITTER))
            clip, _ = V.make_clip(spec, size=32, frames=2)
            m = object_mask(clip)
            assert not (m[:, 0, :].any() or m[:, -1, :].any() or m[:, :, 0].any() or m[:, :, -1].any()), \
                (shape, direction)
