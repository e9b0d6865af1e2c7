"""The batched extraction path equals the reference (per-image) path on the CPU.

A tiny random-weight detector on synthetic images of three sizes. Its scores are low, so the
model's own score threshold is set to 0 and the kept-detection threshold to a value between
the images' best scores: some images keep a detection, some fall back, and the comparison
covers both branches. Equal means: boxes, scores, candidate counts, fallback flags, masks and
crops bit for bit; RoIAlign features bit for bit too (same calls, same order of reductions).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bcfeat.detection.architecture import build_detector
from bcfeat.detection.config import DetectorConfig
from bcfeat.detection.inference import detect, paste_mask_subpixel
from bcfeat.detection.instance_features import extract_instances, masked_crop
from bcfeat.detection.batched_inference import (ExtractionRuntime, extract_instances_fast, masked_crops,
                                    paste_masks_subpixel, plan_batches, transform_batch)

torch.set_num_threads(1)
SIZES = [(120, 120), (96, 130), (120, 120), (80, 80), (96, 130), (120, 120), (80, 80), (120, 120)]


def synthetic_images(seed: int = 0) -> list[np.ndarray]:
    """Pinkish noise with one dark-purple disc (a nucleus) at a random place, three sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        im = rng.integers(180, 230, size=(h, w, 3)).astype(np.uint8)
        cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), rng.integers(10, 25)
        yy, xx = np.mgrid[:h, :w]
        im[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (90, 40, 130)
        out.append(im)
    return out


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return synthetic_images()


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "image_guided"])
def model(request):
    torch.manual_seed(0)
    m = build_detector(DetectorConfig.tiny(mask_image_guidance=request.param)).eval()
    m.roi_heads.score_thresh = 0.0  # random weights: keep every candidate, choose below
    return m


def _threshold(model, images) -> float:
    """A kept-detection threshold between the images' best scores: both branches are exercised."""
    best = [d.score for d in detect(model, images, batch_size=1, score_thresh=0.0)]
    return float(np.median(best))


CPU_FAST = ExtractionRuntime(device="cpu", fast=True, bucket=False, decode_threads=2)


def _assert_same_batches(a, b) -> None:
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.fallback, b.fallback)
    assert torch.equal(a.n_candidates, b.n_candidates)
    assert torch.equal(a.crops, b.crops)
    assert torch.equal(a.features, b.features)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_fast_path_equals_reference_path_on_the_same_batches(model, images, batch_size):
    thresh = _threshold(model, images)
    ref = extract_instances(model, images, crop_size=24, batch_size=batch_size, score_thresh=thresh)
    fast = extract_instances_fast(model, images, crop_size=24, batch_size=batch_size, score_thresh=thresh,
                                  runtime=CPU_FAST)
    assert 0 < int(ref.fallback.sum()) < len(images)  # both branches compared
    _assert_same_batches(ref, fast)


def test_fast_detections_equal_detect(model, images):
    thresh = _threshold(model, images)
    ref = detect(model, images, batch_size=3, score_thresh=thresh)
    batch, masks, boxes = extract_instances_fast(model, images, crop_size=1, batch_size=3, score_thresh=thresh,
                                                 runtime=CPU_FAST, keep_masks=True)
    assert len(ref) == len(masks) == len(boxes) == len(images)
    for i, r in enumerate(ref):
        assert r.box == tuple(float(v) for v in boxes[i]) and r.score == pytest.approx(float(batch.scores[i]), abs=0)
        assert r.fallback == bool(batch.fallback[i]) and r.n_candidates == int(batch.n_candidates[i])
        assert r.mask.dtype == masks[i].dtype == bool and np.array_equal(r.mask, masks[i])


def test_bucketed_path_is_batch_invariant_and_equals_the_one_image_reference(model, images):
    """Buckets of one padded size: every image padded as when alone, whatever the batch size."""
    thresh = _threshold(model, images)
    alone = extract_instances(model, images, crop_size=24, batch_size=1, score_thresh=thresh)
    for batch_size in (2, 8):
        rt = dataclasses.replace(CPU_FAST, bucket=True)
        fast = extract_instances_fast(model, images, crop_size=24, batch_size=batch_size, score_thresh=thresh,
                                      runtime=rt)
        assert torch.equal(alone.boxes, fast.boxes) and torch.equal(alone.fallback, fast.fallback)
        assert torch.equal(alone.crops, fast.crops)
        # Convolutions over a batch of 2-8 instead of 1 may sum in another order: a float tolerance.
        torch.testing.assert_close(fast.features, alone.features, rtol=1e-5, atol=1e-5)


def test_plan_batches_buckets_by_padded_size(model):
    sizes = [(120, 120), (96, 130), (120, 120), (80, 80)]
    assert plan_batches(model, sizes, 3, bucket=False) == [[0, 1, 2], [3]]
    # 120 x 120 and 80 x 80 both become 128 x 128 (the tiny preset's size); 96 x 130 -> 95 x 128 -> 96 x 128
    assert plan_batches(model, sizes, 3, bucket=True) == [[0, 2, 3], [1]]
    assert plan_batches(model, sizes, 2, bucket=True) == [[0, 2], [3], [1]]


def test_transform_batch_equals_torchvision_transform(model, images):
    tensors = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]
    ref, _ = model.transform([t.float().div(255) for t in tensors])
    got = transform_batch(model, tensors)
    assert got.image_sizes == [tuple(s) for s in ref.image_sizes]
    assert torch.equal(got.tensors, ref.tensors)


def test_batched_paste_and_crop_equal_the_per_image_functions():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(5, 28, 28, generator=g)
    boxes = torch.tensor([[3.3, 4.1, 50.7, 60.2], [0.0, 0.0, 1.0, 1.0], [10.5, 2.25, 11.0, 70.0],
                          [-4.0, -2.0, 30.0, 20.0], [20.0, 20.0, 20.0, 20.0]])
    pasted = paste_masks_subpixel(probs, boxes, (64, 80), (90, 111))
    for i in range(5):
        assert torch.equal(pasted[i], paste_mask_subpixel(probs[i], boxes[i].tolist(), (64, 80), (90, 111)))
    imgs = torch.randint(0, 256, (5, 3, 90, 111), generator=g, dtype=torch.uint8)
    masks = pasted > 0.5
    orig = boxes.double() * 1.4
    crops = masked_crops(imgs, masks, orig, 16, background=1.0)
    for i in range(5):
        ref = masked_crop(imgs[i].permute(1, 2, 0).numpy(), masks[i].numpy(), tuple(orig[i].tolist()), 16, 1.0)
        assert torch.equal(crops[i], ref)


def test_runtime_defaults_keep_the_reference_path_on_the_cpu():
    rt = ExtractionRuntime(device="cpu").resolved()
    assert rt.fast is False and rt.bucket is False and rt.channels_last is False and rt.gpu_decode is False
    assert ExtractionRuntime(device="cpu").cache_settings() == {}  # the cpu study's cache keys are unchanged
    assert ExtractionRuntime(device="cpu", fast=True).cache_settings()["fast"] is True
    assert ExtractionRuntime(device="cpu", batch_size=64).cache_settings() == {"batch_size": 64}
    with pytest.raises(ValueError, match="batch_size"):
        ExtractionRuntime(batch_size=0)


def test_file_paths_are_decoded_by_the_thread_pool(model, images, tmp_path):
    from PIL import Image

    paths = []
    for i, im in enumerate(images[:4]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    a = extract_instances_fast(model, [str(p) for p in paths], crop_size=16, batch_size=2, runtime=CPU_FAST)
    b = extract_instances_fast(model, images[:4], crop_size=16, batch_size=2, runtime=CPU_FAST)
    _assert_same_batches(a, b)


def test_empty_input(model):
    batch = extract_instances_fast(model, [], crop_size=16, runtime=CPU_FAST)
    assert len(batch) == 0 and batch.crops.shape == (0, 3, 16, 16)


def test_bf16_backbone_stays_close_on_the_cpu(model, images):
    """``amp`` is meant for CUDA; its CPU twin shows the features move by bfloat16 rounding only."""
    ref = extract_instances_fast(model, images[:4], crop_size=16, batch_size=4, score_thresh=0.0, runtime=CPU_FAST)
    amp = extract_instances_fast(model, images[:4], crop_size=16, batch_size=4, score_thresh=0.0,
                                 runtime=dataclasses.replace(CPU_FAST, amp=True, channels_last=True))
    assert torch.isfinite(amp.features).all()
    rel = (amp.features - ref.features).norm() / ref.features.norm()
    assert rel < 0.05
