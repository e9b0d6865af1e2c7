"""Instance features (RoIAlign over the FPN at the kept box) and masked crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from bcfeat.data import load_image
from bcfeat.detection.config import DetectorConfig
from bcfeat.detection.architecture import build_detector
from bcfeat.detection.inference import detect
from bcfeat.detection.instance_features import ROI_SIZE, InstanceBatch, extract_instances, masked_crop

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def real_images(data_root) -> list[np.ndarray]:
    """Two images of each dataset: four stains, four sizes (88-367 px)."""
    out = []
    for ds in ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"):
        files = sorted(p for p in (data_root / ds).glob("*/*") if p.parent.name != "platelet")
        out += [load_image(f) for f in files[:: len(files) // 2][:2]]
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(DetectorConfig.tiny()).eval()


def test_masked_crop_background_and_square_box():
    img = np.zeros((40, 60, 3), np.uint8)
    img[..., 0] = 255  # red everywhere
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:30] = True  # a 10 x 20 (w x h) cell
    black = masked_crop(img, mask, (20, 10, 30, 30), 20)
    white = masked_crop(img, mask, (20, 10, 30, 30), 20, background=1.0)
    assert black.shape == (3, 20, 20) and black.dtype == torch.float32
    # Square crop of side 20 around the box: the cell is the central half of the columns
    # (bilinear sampling blurs the outermost crop rows/columns of the cell a little).
    assert torch.allclose(black[0, 1:-1, 6:14], torch.ones(18, 8))
    assert black[0, 0, 6:14].min() > 0.8
    assert black[0, :, :4].max() == 0 and black[1:].max() == 0
    assert torch.allclose(white[:, :, :4], torch.ones(3, 20, 4))
    assert torch.allclose(white[0], torch.ones(20, 20))
    assert torch.allclose(white[1:, 1:-1, 6:14], torch.zeros(2, 18, 8))
    with pytest.raises(ValueError, match="does not match"):
        masked_crop(img, mask[:10], (0, 0, 5, 5), 8)


def test_crop_outside_the_image_counts_as_background():
    img = np.full((20, 20, 3), 255, np.uint8)
    crop = masked_crop(img, np.ones((20, 20), bool), (10, 0, 30, 20), 10, background=0.5)
    assert torch.allclose(crop[:, :, :4], torch.ones(3, 10, 4))  # inside: white
    assert torch.allclose(crop[:, :, 6:], torch.full((3, 10, 4), 0.5))  # beyond the edge


def test_shapes_and_agreement_with_detect(model, real_images):
    batch = extract_instances(model, real_images, crop_size=32, batch_size=3)
    n = len(real_images)
    assert isinstance(batch, InstanceBatch) and len(batch) == n
    assert batch.features.shape == (n, model.bcfeat_config.fpn_channels, ROI_SIZE, ROI_SIZE)
    assert batch.features.dtype == torch.float32 and torch.isfinite(batch.features).all()
    assert batch.crops.shape == (n, 3, 32, 32) and 0 <= batch.crops.min() and batch.crops.max() <= 1
    assert batch.boxes.shape == (n, 4) and batch.scores.shape == (n,) and batch.fallback.dtype == torch.bool
    dets = detect(model, real_images, batch_size=3)
    assert torch.allclose(batch.boxes, torch.tensor([d.box for d in dets]))
    assert batch.fallback.tolist() == [d.fallback for d in dets]


def test_paper_width_features(real_images):
    torch.manual_seed(0)
    wide = build_detector(DetectorConfig.tiny(fpn_channels=256)).eval()
    batch = extract_instances(wide, real_images[:2], crop_size=16)
    assert batch.features.shape == (2, 256, 14, 14)


def test_backbone_runs_once_and_features_are_its_roialign(model, real_images, monkeypatch):
    images = real_images[2:4]  # two 120 px JTSC crops: same size, no padding differences
    calls = []
    original = model.backbone.forward

    def counting(x):
        calls.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(model.backbone, "forward", counting)
    batch = extract_instances(model, images, crop_size=16, batch_size=8)
    assert len(calls) == 1  # one backbone + FPN pass for the whole batch, shared by detection and RoIAlign

    # Reference: run the backbone again by hand and pool at the same boxes (transformed coords).
    with torch.no_grad():
        tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
        image_list, _ = model.transform(tensors)
        feats = original(image_list.tensors)
        scale = [torch.tensor([w / im.shape[1], h / im.shape[0]] * 2) for im, (h, w) in zip(images, image_list.image_sizes)]
        boxes = [batch.boxes[i:i + 1] * scale[i] for i in range(2)]
        pool = MultiScaleRoIAlign(model.bcfeat_config.feature_names, 14, 2)
        expected = pool(feats, boxes, image_list.image_sizes)
    assert torch.allclose(batch.features, expected, atol=1e-4)


def test_batch_size_does_not_change_same_size_images(model, real_images):
    images = [real_images[0], real_images[1]]  # both 360 x 363 Acevedo-20 crops
    a = extract_instances(model, images, crop_size=16, batch_size=1)
    b = extract_instances(model, images, crop_size=16, batch_size=2)
    assert torch.allclose(a.features, b.features, atol=1e-4)
    assert torch.allclose(a.boxes, b.boxes, atol=1e-3)


def test_empty_input(model):
    batch = extract_instances(model, [], crop_size=16)
    assert batch.features.shape == (0, model.bcfeat_config.fpn_channels, 14, 14) and batch.crops.shape == (0, 3, 16, 16)
