"""Virtual labs (bcfeat.crosslab.virtual_labs): simulated stain, camera and framing shifts of raw cell images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bcfeat.crosslab.stain import dye_directions
from bcfeat.crosslab.virtual_labs import (MIN_SIDE, VirtualLab, named_shifts, render,
                                          sample_labs)

BACKGROUND = (246, 244, 247)
CELL = (120, 60, 160)   # purple white cell
RBC = (225, 150, 170)   # pink red cells
SIZE = 120
CELL_RADIUS = 18


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2


def _smear(size=SIZE):
    """Near-white background, a purple disc in the centre, pink discs near the corners."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    for centre in ((14, 14), (14, size - 15), (size - 15, 14), (size - 15, size - 15)):
        img[_disk(img.shape[:2], centre, 10)] = RBC
    img[_disk(img.shape[:2], (size // 2, size // 2), CELL_RADIUS)] = CELL
    return img


def _purple(img):
    """Mask of the (possibly shifted) white cell: blue well above green."""
    x = img.astype(int)
    return (x[..., 2] - x[..., 1] > 50) & (x[..., 0] < 180)


def _pink(img):
    x = img.astype(int)
    return (x[..., 0] > 200) & (x[..., 1] < 190)


def _centroid(mask):
    yy, xx = np.nonzero(mask)
    return yy.mean(), xx.mean()


def _od(pixels):
    return -np.log10((pixels.astype(float) + 1.0) / 256.0)


@pytest.fixture(scope="module")
def smear():
    return _smear()


NUCLEAR_DYE = np.array([0.55, 0.75, 0.35])     # azure: absorbs red relatively more
CYTOPLASM_DYE = np.array([0.08, 0.85, 0.5])    # eosin


def _two_dye_cell(size=96, seed=0):
    """A nucleus (mostly nuclear dye) inside a cytoplasm (mostly cytoplasmic dye), amounts varying."""
    rng = np.random.default_rng(seed)
    nucleus = _disk((size, size), (size // 2, size // 2), 14)
    cell = _disk((size, size), (size // 2, size // 2), 30)
    nuc = np.where(nucleus, rng.uniform(0.6, 1.0, (size, size)), 0.0)
    cyt = np.where(cell, rng.uniform(0.15, 0.45, (size, size)), 0.0)
    od = nuc[..., None] * NUCLEAR_DYE + cyt[..., None] * CYTOPLASM_DYE
    return np.clip(256 * 10 ** (-od) - 1, 0, 255).astype(np.uint8), nucleus, cell & ~nucleus


def test_identity_is_bit_identical(smear):
    out = render(smear, VirtualLab("identity"))
    assert out.dtype == np.uint8 and out.shape == smear.shape
    assert np.array_equal(out, smear)
    assert out is not smear
    # Ints or lists for the defaults are the identity too.
    assert np.array_equal(render(smear, VirtualLab("same", stain_scale=[1, 1, 1], crop_offset=(0, 0))), smear)


@pytest.mark.parametrize("field, value", [
    ("name", ""),
    ("stain_scale", (1.0, 1.0)),
    ("stain_scale", (1.0, 0.0, 1.0)),
    ("stain_mix", 0.5),
    ("white_balance", (1.0, 1.0, 2.5)),
    ("gamma", 0.1),
    ("blur_sigma", -1.0),
    ("scale", 1.5),
    ("scale", float("nan")),
    ("jpeg_quality", 101),
    ("jpeg_quality", 50.5),
    ("noise_sigma", -0.1),
    ("crop_fraction", 0.3),
    ("crop_fraction", 1.6),
    ("crop_offset", (0.0, 0.7)),
    ("crop_offset", (0.0,)),
    ("nuclear_dye", 0.1),
    ("cytoplasm_dye", 3.5),
    ("cytoplasm_dye_hue", 1.5),
    ("nuclear_dye_hue", "x"),
])
def test_validation_names_the_field(field, value):
    kwargs = {"name": "x", field: value}
    with pytest.raises(ValueError, match=rf"VirtualLab\.{field}"):
        VirtualLab(**kwargs)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        render(np.zeros((32, 32, 3), np.float32), VirtualLab("x"))
    with pytest.raises(ValueError, match="uint8"):
        render(np.zeros((32, 32), np.uint8), VirtualLab("x"))
    with pytest.raises(ValueError, match=">= 16"):
        render(np.zeros((10, 32, 3), np.uint8), VirtualLab("x"))


def test_tight_crop_is_smaller_and_centred_on_the_cell(smear):
    out = render(smear, VirtualLab("tight", crop_fraction=0.5))
    assert out.shape == (60, 60, 3)
    assert np.array_equal(out, smear[30:90, 30:90])
    cy, cx = _centroid(_purple(out))
    assert abs(cy - 30) < 0.5 and abs(cx - 30) < 0.5   # the disc's centre, pixel 60, is pixel 30 of [30:90]
    assert not _pink(out).any()          # the red cells at the corners are cut away
    assert _purple(out).mean() > 2 * _purple(smear).mean()


def test_offset_moves_the_window(smear):
    out = render(smear, VirtualLab("off", crop_fraction=0.5, crop_offset=(0.1, -0.1)))
    assert out.shape == (60, 60, 3)
    cy, cx = _centroid(_purple(out))
    # Window moved down by 6 px and left by 6 px: the cell appears 6 px higher and 6 px to the right.
    assert abs(cy - (30 - 6)) < 0.5 and abs(cx - (30 + 6)) < 0.5


def test_pad_keeps_the_image_and_fills_with_near_white(smear):
    out = render(smear, VirtualLab("loose", crop_fraction=1.5))
    assert out.shape == (180, 180, 3)
    assert np.array_equal(out[30:150, 30:150], smear)
    border = np.concatenate([out[:30].reshape(-1, 3), out[150:].reshape(-1, 3), out[:, :30].reshape(-1, 3)])
    assert np.abs(border.astype(int) - np.array(BACKGROUND)).max() <= 1
    # The cell is now a smaller part of the crop.
    assert _purple(out).mean() < 0.5 * _purple(smear).mean()


def test_a_smear_fill_continues_the_image_beyond_its_edges(smear):
    out = render(smear, VirtualLab("loose_smear", crop_fraction=1.5, frame_fill="smear"))
    assert out.shape == (180, 180, 3)
    assert np.array_equal(out[30:150, 30:150], smear)
    assert np.array_equal(out[:30, 30:150], smear[:30][::-1])      # mirrored at the top edge
    assert np.array_equal(out[30:150, 150:], smear[:, 90:][:, ::-1])  # and at the right one
    assert _pink(out[:30]).any()  # the red cells continue into the added frame
    # a window offset past the image's edge by more than the image: mirrored again
    far = render(smear, VirtualLab("far", crop_fraction=1.5, crop_offset=(0.5, 0.0), frame_fill="smear"))
    assert far.shape == (180, 180, 3) and not np.all(far == far[0, 0])
    # the named pair differ in the fill alone
    shifts = named_shifts()
    assert dataclasses.replace(shifts["loose_crop"], name="x") == dataclasses.replace(
        shifts["loose_crop_smear"], name="x", frame_fill="background")


def test_a_labs_record_keeps_the_first_versions_fields_for_a_background_fill():
    # the caches of rendered labs key on the record: labs that pad with the background (every lab
    # before frame_fill existed) must keep their keys
    lab = VirtualLab("v", crop_fraction=1.2, crop_offset=(0.1, 0.0))
    assert "frame_fill" not in lab.record()
    assert lab.record() == {k: v for k, v in dataclasses.asdict(lab).items() if k != "frame_fill"}
    assert VirtualLab("v", crop_fraction=1.2, frame_fill="smear").record()["frame_fill"] == "smear"
    with pytest.raises(ValueError, match="frame_fill"):
        VirtualLab("bad", frame_fill="mirror")


def test_stronger_stain_darkens_the_cell_not_the_background(smear):
    out = render(smear, VirtualLab("strong", stain_scale=(1.4, 1.3, 1.2)))
    assert out.shape == smear.shape
    cell = _disk(smear.shape[:2], (SIZE // 2, SIZE // 2), CELL_RADIUS - 2)
    od_before, od_after = _od(smear[cell]).mean(axis=0), _od(out[cell]).mean(axis=0)
    assert np.all(od_after > od_before + 0.03)
    np.testing.assert_allclose(od_after / od_before, (1.4, 1.3, 1.2), rtol=0.03)
    bg = np.abs(out[60, 2].astype(int) - np.array(BACKGROUND))
    assert bg.max() <= 4 and out[60, 2].min() >= 240
    weak = render(smear, VirtualLab("weak", stain_scale=(0.7, 0.7, 0.7)))
    assert np.all(_od(weak[cell]).mean(axis=0) < od_before - 0.04)


def test_stain_mix_moves_density_between_channels(smear):
    out = render(smear, VirtualLab("hue", stain_mix=0.2))
    cell = _disk(smear.shape[:2], (SIZE // 2, SIZE // 2), CELL_RADIUS - 2)
    before, after = _od(smear[cell]).mean(axis=0), _od(out[cell]).mean(axis=0)
    expected = 0.8 * before + 0.2 * np.roll(before, 1)   # R -> G -> B -> R
    np.testing.assert_allclose(after, expected, atol=0.01)
    assert after.sum() == pytest.approx(before.sum(), abs=0.02)
    assert np.abs(after - before).max() > 0.05


def test_yellow_white_balance_lowers_blue_of_the_background(smear):
    out = render(smear, VirtualLab("yellow", white_balance=(1.0, 0.96, 0.78)))
    bg_before, bg_after = smear[60, 2].astype(int), out[60, 2].astype(int)
    assert bg_after[2] == pytest.approx(0.78 * bg_before[2], abs=1)
    assert bg_after[0] == bg_before[0]
    assert bg_after[2] < bg_after[1] < bg_after[0]


def test_gamma_darkens_mid_tones(smear):
    out = render(smear, VirtualLab("g", gamma=1.25))
    assert out[60, 60].astype(int).sum() < smear[60, 60].astype(int).sum() - 30


def test_blur_softens_edges(smear):
    out = render(smear, VirtualLab("defocus", blur_sigma=1.5))
    assert out.shape == smear.shape
    def edge(img):
        return np.abs(np.diff(img.astype(int), axis=1)).max()
    assert edge(out) < 0.6 * edge(smear)


def test_scale_halves_the_size_and_clamps(smear):
    out = render(smear, VirtualLab("half", scale=0.5))
    assert out.shape == (60, 60, 3)
    cy, cx = _centroid(_purple(out))
    assert abs(cy - 29.5) < 1 and abs(cx - 29.5) < 1
    tiny = render(_smear(40), VirtualLab("tiny", scale=0.3, crop_fraction=0.45))
    assert tiny.shape == (MIN_SIDE, MIN_SIDE, 3)
    assert render(smear, VirtualLab("up", scale=1.2)).shape == (144, 144, 3)


def test_noise_is_deterministic_in_the_rng(smear):
    lab = VirtualLab("noise", noise_sigma=3.0)
    a = render(smear, lab, np.random.default_rng(5))
    b = render(smear, lab, np.random.default_rng(5))
    c = render(smear, lab, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(render(smear, lab), render(smear, lab))  # rng=None is reproducible
    diff = a.astype(float) - smear
    assert 2.0 < diff[20:100, 40:80].std() < 4.0


def test_jpeg_changes_pixels_but_keeps_shape(smear):
    out = render(smear, VirtualLab("jpeg", jpeg_quality=40))
    assert out.shape == smear.shape and out.dtype == np.uint8
    assert not np.array_equal(out, smear)
    assert np.abs(out.astype(int) - smear).mean() < 10


def test_dye_directions_find_the_two_dyes_and_refuse_one():
    img, _, _ = _two_dye_cell()
    nuclear, cytoplasmic = dye_directions(_od(img))
    assert np.dot(nuclear, NUCLEAR_DYE / np.linalg.norm(NUCLEAR_DYE)) > 0.98
    assert np.dot(cytoplasmic, CYTOPLASM_DYE / np.linalg.norm(CYTOPLASM_DYE)) > 0.98
    flat = np.full((40, 40, 3), 240, np.uint8)
    flat[10:30, 10:30] = CELL
    assert dye_directions(_od(flat)) is None            # one colour: no second dye to separate


def test_a_stronger_cytoplasmic_dye_darkens_the_cytoplasm_not_the_nucleus():
    img, nucleus, cytoplasm = _two_dye_cell()
    out = render(img, VirtualLab("rapid", cytoplasm_dye=2.0))
    before, after = _od(img).sum(-1), _od(out).sum(-1)
    assert after[cytoplasm].mean() > 1.7 * before[cytoplasm].mean()
    assert abs(after[nucleus].mean() / before[nucleus].mean() - 1) < 0.25
    assert np.array_equal(out[0:5, 0:5], img[0:5, 0:5])   # the background keeps its colour


def test_a_weaker_nuclear_dye_lightens_the_nucleus_and_a_hue_turns_the_cytoplasm_brown():
    img, nucleus, cytoplasm = _two_dye_cell()
    before = _od(img)
    weak = _od(render(img, VirtualLab("pale", nuclear_dye=0.5)))
    assert weak[nucleus].sum(-1).mean() < 0.7 * before[nucleus].sum(-1).mean()
    assert abs(weak[cytoplasm].sum(-1).mean() / before[cytoplasm].sum(-1).mean() - 1) < 0.25
    brown = _od(render(img, VirtualLab("brown", cytoplasm_dye_hue=0.6)))
    share = lambda od: (od[cytoplasm][:, 2] / od[cytoplasm].sum(-1)).mean()   # noqa: E731
    assert share(brown) > share(before) + 0.1             # absorbs more blue: yellower, browner


def test_sample_labs_is_deterministic_and_in_range():
    labs = sample_labs(40, seed=3)
    assert labs == sample_labs(40, seed=3)
    assert labs != sample_labs(40, seed=4)
    assert sample_labs(5, seed=3) == labs[:5]
    assert [lab.name for lab in labs[:3]] == ["virtual_00", "virtual_01", "virtual_02"]
    assert len({lab.name for lab in labs}) == 40
    for lab in labs:
        assert all(0.6 <= v <= 1.5 for v in lab.stain_scale)
        assert -0.15 <= lab.stain_mix <= 0.15
        assert all(0.8 <= v <= 1.05 for v in lab.white_balance)
        assert 0.8 <= lab.gamma <= 1.25
        assert 0.0 <= lab.blur_sigma <= 1.5
        assert 0.35 <= lab.scale <= 1.0
        assert lab.jpeg_quality == 0 or 50 <= lab.jpeg_quality <= 95
        assert 0.0 <= lab.noise_sigma <= 4.0
        assert 0.45 <= lab.crop_fraction <= 1.3
        assert all(-0.08 <= v <= 0.08 for v in lab.crop_offset)
        assert 0.6 <= lab.nuclear_dye <= 1.7 and 0.4 <= lab.cytoplasm_dye <= 2.5
        assert -0.3 <= lab.nuclear_dye_hue <= 0.3 and -0.3 <= lab.cytoplasm_dye_hue <= 0.8
        assert lab.changes_dyes
    # The draws vary: some compressed, some not, some yellowish lamps, tight and loose crops.
    assert any(lab.jpeg_quality == 0 for lab in labs) and any(lab.jpeg_quality for lab in labs)
    assert any(lab.white_balance[2] < 0.9 and lab.white_balance[0] >= 0.97 for lab in labs)
    assert min(lab.crop_fraction for lab in labs) < 0.7 and max(lab.crop_fraction for lab in labs) > 1.0
    assert sample_labs(0, seed=1) == []
    with pytest.raises(ValueError):
        sample_labs(-1, seed=1)


def test_sampled_labs_render(smear):
    for i, lab in enumerate(sample_labs(6, seed=11)):
        out = render(smear, lab, np.random.default_rng(i))
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert min(out.shape[:2]) >= MIN_SIDE
        expected = max(MIN_SIDE, round(max(MIN_SIDE, round(SIZE * lab.crop_fraction)) * lab.scale))
        assert out.shape[:2] == (expected, expected)


def test_named_shifts_each_change_one_thing(smear):
    shifts = named_shifts()
    for name in ("stain_strong", "stain_weak", "stain_hue", "yellow_background", "defocus",
                 "low_resolution", "jpeg_q40", "tight_crop", "loose_crop", "off_centre", "noise",
                 "cytoplasm_dye_strong", "cytoplasm_dye_weak", "nuclear_dye_weak", "rapid_stain_hue"):
        assert name in shifts
    identity = VirtualLab("identity")
    for name, lab in shifts.items():
        assert lab.name == name
        changed = [f.name for f in dataclasses.fields(VirtualLab)  # frame_fill: how a wider frame is filled
                   if f.name not in ("name", "frame_fill") and getattr(lab, f.name) != getattr(identity, f.name)]
        assert len(changed) == 1, (name, changed)
        out = render(smear, lab, np.random.default_rng(0))
        assert out.shape != smear.shape or not np.array_equal(out, smear), name
    assert shifts["yellow_background"].white_balance == (1.0, 0.96, 0.78)
    assert shifts["off_centre"].crop_offset == (0.08, 0.08)



def test_framing_masks_script_finds_the_smear_frame_keeps_the_masks(data_root, capsys):
    # scripts/framing_masks.py on real Acevedo-20 images: where the smear continues around a wider
    # frame, the stain masks keep their size; the plain-padded frame is measured beside it
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "framing_masks.py"
    spec = importlib.util.spec_from_file_location("framing_masks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.main(["--data-root", str(data_root), "--per-class", "3"])
    assert set(table) == {"loose_crop", "loose_crop_smear"}
    assert table["loose_crop_smear"]["cells"] == 15
    assert abs(table["loose_crop_smear"]["median_ratio"] - 1) < 0.05
    assert table["loose_crop"]["median_ratio"] > table["loose_crop_smear"]["median_ratio"]
    assert "loose_crop_smear  mask diameter x" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.main(["--data-root", str(data_root), "--per-class", "0"])
