"""The framing sweep and each lab's cell fill (bcfeat.study.framing)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.crosslab.virtual_labs import VirtualLab, render, rendered_shape
from bcfeat.study import framing as fr

RULER = feature_names().index("log_cell_over_red_cell")
DIAMETER = feature_names().index("log_cell_diameter_px")


def _features(diameters, ruler=None):
    X = np.zeros((len(diameters), len(feature_names())))
    X[:, DIAMETER] = np.log(diameters)
    if ruler is not None:
        X[:, RULER] = ruler
    return X


def test_framing_labs_keep_that_share_of_the_side_and_change_nothing_else():
    image = np.random.default_rng(0).integers(0, 255, (200, 160, 3), dtype=np.uint8)
    for lab in fr.framing_labs((0.45, 0.8)):
        out = render(image, lab, np.random.default_rng(0))
        assert out.shape[:2] == (round(200 * lab.crop_fraction), round(160 * lab.crop_fraction))
        # nothing but the frame: the kept centre is the image's own pixels
        h, w = out.shape[:2]
        top, left = (200 - h) // 2, (160 - w) // 2
        assert np.abs(out.astype(int) - image[top:top + h, left:left + w].astype(int)).max() <= 1


def test_cell_fill_is_the_diameter_over_the_shorter_side_read_from_the_header(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(300, 200), (120, 90)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(p)
        paths.append(str(p))
    shapes = fr.image_shapes(paths)
    assert shapes.tolist() == [[200, 300], [90, 120]]
    assert fr.cell_fill(shapes, _features([100.0, 45.0])) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="one feature row per image shape"):
        fr.cell_fill(shapes, _features([100.0]))


@pytest.mark.parametrize("lab", [VirtualLab("a", crop_fraction=0.45), VirtualLab("b", crop_fraction=1.3),
                                 VirtualLab("c", crop_fraction=0.55, scale=0.4), VirtualLab("d", scale=0.3)])
def test_rendered_shape_is_the_shape_render_gives(lab):
    image = np.random.default_rng(0).integers(0, 255, (121, 90, 3), dtype=np.uint8)
    assert rendered_shape((121, 90), lab) == render(image, lab).shape[:2]


def test_fill_table_leaves_unmeasured_cells_out():
    t = fr.fill_table({"src": np.array([0.3, 0.4, 0.5]), "lab": np.array([np.nan, 0.6, 0.6, 0.7])})
    assert t["lab"].tolist() == ["src", "lab"]
    assert t["cells"].tolist() == [3, 3]
    assert t["fill_median"].tolist() == pytest.approx([0.4, 0.6])


class _ReadsColumn:
    """Predicts the class stored in feature column 5 (so each framing's score is known)."""

    def predict(self, X):
        return np.where(X[:, 5] > 0, "a", "b")


def test_framing_table_scores_each_frame_on_the_fill_axis():
    labels = np.array(["a", "a", "b", "b"])
    right = _features([50.0] * 4, ruler=np.nan)
    right[:, 5] = [1, 1, -1, -1]
    half = right.copy()
    half[:, 5] = [1, -1, -1, -1]  # one 'a' missed: recall 0.5 and 1.0
    half[:2, RULER] = 0.7  # two cells with a ruler
    labs = fr.framing_labs((0.5,))
    shapes = np.array([[200, 100]] * 4)  # framed at 0.5: 100 x 50
    t = fr.framing_table(_ReadsColumn(), {"crop_fraction_0.5": half}, labels, labs, shapes, native=right)
    assert t["crop_fraction"].tolist() == [1.0, 0.5]
    assert t["cell_fill"].tolist() == pytest.approx([0.5, 1.0])  # a 50 px cell on the shorter side
    assert t["balanced_accuracy"].tolist() == pytest.approx([1.0, 0.75])
    assert t["no_ruler_share"].tolist() == pytest.approx([1.0, 0.5])


def test_framing_glue_reads_the_frame_nearest_the_tightest_real_lab():
    framing = pd.DataFrame({"crop_fraction": [1.0, 0.8, 0.55, 0.45], "cell_fill": [0.37, 0.46, 0.67, 0.82],
                            "balanced_accuracy": [0.99, 0.98, 0.95, 0.8], "no_ruler_share": [0.4] * 4})
    fills = pd.DataFrame({"lab": ["src", "x", "y"], "fill_median": [0.37, 0.5, 0.63]})
    g = fr.framing_glue(framing, fills)
    assert g["crosslab_fill_y"] == 0.63
    assert g["crosslab_framing_real_tightest_fill"] == 0.63
    assert g["crosslab_framing_real_tightest_fraction"] == 0.55
    assert g["crosslab_framing_at_real_tightest"] == 0.95
    assert g["crosslab_framing_80"] == 0.98 and g["crosslab_framing_100"] == 0.99
