import pytest
import torch

from pyengine.data import shapeworld_images as swi
from pyengine.diffusion.text import Tokenizer


def test_view_words_follow_the_camera():
    assert swi.view_of(10.0, 20.0) == "front" and swi.view_of(10.0, 340.0) == "front"
    assert swi.view_of(10.0, 90.0) == "side" and swi.view_of(10.0, 270.0) == "side"
    assert swi.view_of(10.0, 180.0) == "back"
    assert swi.view_of(swi.OVERHEAD_DEG + 1, 180.0) == "overhead"


def test_captions_parse_back_and_use_only_the_vocabulary():
    tok = Tokenizer(swi.vocabulary())
    for shape in swi.SHAPES:
        for color in swi.COLORS:
            for view in (*swi.VIEWS, None):
                text = swi.caption(shape, color, view)
                assert swi.parse_caption(text) == (shape, color, view)
                assert tok.unknown(text) == []
    assert swi.caption("torus", "orange", "side") == "an orange torus, side view"
    with pytest.raises(ValueError, match="more than one colour"):
        swi.parse_caption("a red blue cube")


def test_the_article_agrees_with_the_next_word_as_in_the_captions():
    tok = Tokenizer(swi.vocabulary())
    assert tok.encode("a orange torus") == tok.encode("an orange torus") == tok.encode(swi.caption("torus", "orange"))
    assert tok.encode("an red cube, side view") == tok.encode("a red cube, side view")
    assert tok.encode("a red cube") != tok.encode("an orange cube")
    assert Tokenizer(["a", "orange"]).encode("a orange") == [2, 3]  # no "an" to agree with: unchanged


def test_dataset_is_deterministic_balanced_and_labelled():
    a, la = swi.dataset("heldout", 35, size=8)
    b, lb = swi.dataset("heldout", 35, size=8)
    assert torch.equal(a, b) and torch.equal(la, lb) and a.dtype == torch.uint8 and a.shape == (35, 8, 8, 3)
    pairs = {(int(s), int(c)) for s, c, _ in la.tolist()}
    assert len(pairs) == 35  # every (shape, colour) once in 35 images
    train, _ = swi.dataset("train", 4, size=8)
    assert not torch.equal(train, a[:4])
    spec = swi.ViewSpec.random(swi.HELDOUT_OFFSET + 3, *swi.combinations()[3])
    img, lab = swi.make_view(spec, size=8)
    assert torch.equal(swi.to_uint8(img), a[3]) and torch.equal(lab, la[3])
    assert lab[2] == swi.VIEWS.index(spec.view)


def test_images_show_the_colour_and_the_light_comes_from_near_the_camera():
    spec = swi.ViewSpec.random(7, "sphere", "blue")
    img, _ = swi.make_view(spec, size=16)
    centre = (img[6:10, 6:10] + 1) / 2
    assert centre[..., 2].mean() > centre[..., 0].mean() + 0.2  # blue, not red
    cam = swi.camera_direction(spec.elevation_deg, spec.azimuth_deg)
    assert float(torch.tensor(spec.light, dtype=torch.float64) @ cam) > 0.3


def test_reference_masks_turn_with_the_yaw():
    cams = swi.ViewSpec("cube", "red", elevation_deg=80.0).camera(24)
    m0 = swi.reference_masks("cube", cams, 0.0)
    m45 = swi.reference_masks("cube", cams, 45.0)
    assert m0.shape == (1, 24, 24) and not torch.equal(m0, m45)
    assert abs(float(m0.sum()) - float(m45.sum())) / float(m0.sum()) < 0.15  # same cube, turned
    with pytest.raises(ValueError, match="split"):
        swi.dataset("test", 2)
