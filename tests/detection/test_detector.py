"""The one-class Mask R-CNN white-cell detector (bcfeat.detection)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from scipy import ndimage

from bcfeat.detection.inference import Detection, centred_box, detect, paste_mask_subpixel, select_detection
from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig
from bcfeat.detection.training_data import PseudoLabelledSet, pseudo_label, resize_long_side
from bcfeat.detection.architecture import build_detector
from bcfeat.detection.checkpoint import load_detector, save_detector
from bcfeat.detection.training import train_detector
from bcfeat.detection.mask_metrics import evaluate_mask_predictor, mask_iou
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import roi_align
from bcfeat.detection.pseudo_masks import centred_ellipse

torch.set_num_threads(1)


def _blind(model: torch.nn.Module) -> torch.nn.Module:
    """Make every detection score ~0: the white-cell logit far below the background's."""
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([20.0, -20.0]))
    return model


def _disk_images(n: int, size: int = 96, seed: int = 0) -> PseudoLabelledSet:
    """Dark-nucleus lilac disks on beige, with their exact masks (a learnable toy task)."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        r = rng.uniform(14, 30)
        cy, cx = rng.uniform(r, size - r, 2)
        img = np.empty((size, size, 3))
        img[:] = (235, 215, 200)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[m] = (175, 150, 205)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (r / 2) ** 2] = (90, 40, 130)
        images.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
        masks.append(m)
    return PseudoLabelledSet(images, masks, np.ones(n, bool), np.ones(n, np.float32), [f"disk:{i}" for i in range(n)])


# ---------------------------------------------------------------- config and model
def test_config_checks_and_round_trip():
    cfg = DetectorConfig.cpu()
    assert cfg.n_levels == 4 and cfg.feature_names == ["0", "1", "2"]
    assert DetectorConfig.from_dict(asdict(cfg)) == cfg
    assert DetectorConfig().fpn_channels == 256  # the paper's width is the default
    with pytest.raises(ValueError, match="one size per pyramid level"):
        DetectorConfig(anchor_sizes=(32, 64))
    with pytest.raises(ValueError, match="unknown DetectorConfig keys"):
        DetectorConfig.from_dict({**asdict(cfg), "depth": 3})
    with pytest.raises(ValueError, match="norm"):
        DetectorConfig(norm="layer")


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_detect_output_shapes_follow_each_image(preset):
    model = build_detector(getattr(DetectorConfig, preset)()).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(120, 120), (88, 110), (300, 300)]]
    dets = detect(model, images, batch_size=2)
    assert len(dets) == 3
    for img, d in zip(images, dets):
        assert isinstance(d, Detection)
        assert d.mask.shape == img.shape[:2] and d.mask.dtype == bool
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= img.shape[1] and 0 <= y0 <= y1 <= img.shape[0]
        assert d.fallback == (d.n_candidates == 0)


def test_resize_long_side():
    img = np.zeros((90, 120, 3), np.uint8)
    assert resize_long_side(img, 256).shape == (192, 256, 3)
    assert resize_long_side(img, 120) is img


@pytest.mark.parametrize("upsample", [1, 2])
def test_image_guided_mask_branch_reads_the_input_pixels_of_each_box(upsample):
    torch.manual_seed(0)
    model = build_detector(DetectorConfig.tiny(mask_image_guidance=True, mask_upsample=upsample)).eval()
    heads, size = model.roi_heads, 28 * upsample
    with pytest.raises(RuntimeError, match="backbone to run first"):
        heads.mask_roi_pool({}, [torch.zeros(1, 4)], [(128, 128)])
    x = torch.rand(2, 3, 128, 128)
    boxes = [torch.tensor([[20.0, 30.0, 90.0, 100.0]]), torch.tensor([[0.0, 0.0, 64.0, 50.0], [10.0, 10.0, 120.0, 120.0]])]
    features = model.backbone(x)
    pooled, crops = heads.mask_roi_pool(features, boxes, [(128, 128)] * 2)
    assert pooled.shape == (3, 16, 14, 14) and crops.shape == (3, 3, size, size)
    # The crops are the boxes' pixels, sampled like torchvision samples the mask targets.
    assert torch.allclose(crops, roi_align(x, boxes, size, 1.0, 2))
    assert heads.mask_predictor(heads.mask_head((pooled, crops))).shape == (3, 2, size, size)


def test_image_guided_detector_trains_its_pixel_branch_and_round_trips(tmp_path):
    data = _disk_images(4)
    cfg = DetectorConfig.tiny(mask_image_guidance=True)
    model, hist = train_detector(data, cfg, _train_cfg(steps=2), tmp_path / "g.pt", progress=False)
    assert all(np.isfinite(h["loss_mask"]) for h in hist)
    model.train()
    img = torch.tensor(data.images[0]).permute(2, 0, 1).float() / 255
    ys, xs = np.nonzero(data.masks[0])
    box = [[xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]]
    target = {"boxes": torch.tensor(box, dtype=torch.float32), "labels": torch.ones(1, dtype=torch.int64),
              "masks": torch.tensor(data.masks[0][None], dtype=torch.uint8)}
    model([img], [target])["loss_mask"].backward()
    first_pixel_conv = model.roi_heads.mask_predictor.image_conv[0].weight
    assert first_pixel_conv.grad is not None and first_pixel_conv.grad.abs().sum() > 0
    loaded = load_detector(tmp_path / "g.pt").eval()
    assert loaded.bcfeat_config.mask_image_guidance
    a, b = detect(load_detector(tmp_path / "g.pt"), data.images[:2]), detect(loaded, data.images[:2])
    for da, db in zip(a, b):
        assert da.box == db.box and np.array_equal(da.mask, db.mask) and da.mask.shape == (96, 96)


# ---------------------------------------------------------------- one cell per image
def test_no_cell_falls_back_to_a_centred_box_and_ellipse():
    model = _blind(build_detector(DetectorConfig.tiny())).eval()
    white = np.full((100, 140, 3), 255, np.uint8)
    (d,) = detect(model, [white])
    assert d.fallback and d.n_candidates == 0 and d.score == 0.0
    assert d.box == centred_box(100, 140) == (35.0, 25.0, 105.0, 75.0)
    assert np.array_equal(d.mask, centred_ellipse(100, 140))


def test_select_detection_takes_the_best_scoring():
    boxes = torch.tensor([[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 4, 4]], dtype=torch.float32)
    assert select_detection(boxes, torch.tensor([0.3, 0.9, 0.6])) == (1, 3)
    assert select_detection(boxes, torch.tensor([0.3, 0.9, 0.6]), score_thresh=0.5) == (1, 2)
    assert select_detection(boxes, torch.tensor([0.1, 0.2, 0.3]), score_thresh=0.5) == (None, 0)


@pytest.mark.parametrize("paste", ["torchvision", "subpixel"])
def test_several_detections_keep_the_best_scoring_one(monkeypatch, paste):
    """Drive detect() with three known candidates: the 0.9 one must come back, full size."""
    model = build_detector(DetectorConfig.tiny(mask_paste=paste)).eval()
    candidates = {
        "boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 60.0, 110.0, 120.0], [0.0, 0.0, 20.0, 20.0]]),
        "scores": torch.tensor([0.3, 0.9, 0.6]),
        "labels": torch.ones(3, dtype=torch.int64),
        "masks": torch.ones(3, 1, 28, 28),
    }

    def fake_heads(features, proposals, image_sizes, targets=None):
        return [dict(candidates) for _ in image_sizes], {}

    monkeypatch.setattr(model.roi_heads, "forward", fake_heads)
    img = np.zeros((64, 64, 3), np.uint8)  # resized x2 to 128 inside the model
    (d,) = detect(model, [img])
    assert not d.fallback and d.n_candidates == 3 and d.score == pytest.approx(0.9)
    assert d.box == pytest.approx((25.0, 30.0, 55.0, 60.0))
    assert d.mask.shape == (64, 64) and d.mask[30:60, 25:55].all() and not d.mask[:20, :20].any()
    assert d.n_candidates > 1
    if paste == "subpixel":  # exactly the box's pixels: nothing of the one-cell widening
        assert d.mask.sum() == 30 * 30


def test_subpixel_paste_puts_a_roialigned_mask_back_where_it_was_cut():
    """A 120 px cell seen at 256 px: cut its mask like a training target, paste it back."""
    yy, xx = np.mgrid[:120, :120]
    cell = (yy - 57.3) ** 2 + (xx - 63.8) ** 2 < 31.0**2
    seen = torch.nn.functional.interpolate(torch.tensor(cell, dtype=torch.float32)[None, None], size=(256, 256),
                                           mode="bilinear") > 0.5
    ys, xs = np.nonzero(seen[0, 0].numpy())
    box = (float(xs.min()), float(ys.min()), xs.max() + 1.0, ys.max() + 1.0)
    target = roi_align(seen.float(), [torch.tensor([box], dtype=torch.float32)], 28, 1.0, 2)[0, 0]
    subpixel = paste_mask_subpixel(target, box, (256, 256), (120, 120)).numpy() > 0.5
    box_120 = resize_boxes(torch.tensor([box], dtype=torch.float32), [256, 256], [120, 120])
    rounded = paste_masks_in_image(target[None, None], box_120, (120, 120))[0, 0].numpy() > 0.5
    assert mask_iou(subpixel, cell) > 0.98
    # torchvision's paste rounds the box out to whole pixels and widens it: a fatter outline
    assert rounded.sum() > subpixel.sum() and mask_iou(rounded, cell) < mask_iou(subpixel, cell) - 0.01


# ---------------------------------------------------------------- checkpoints and training
def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_detector(DetectorConfig.tiny(fpn_channels=24)).eval()
    path = save_detector(tmp_path / "d.pt", model, {"note": "hello"})
    loaded = load_detector(path)
    assert loaded.bcfeat_config == model.bcfeat_config and loaded.bcfeat_extra["note"] == "hello"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    img = np.random.default_rng(1).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    a, b = detect(model, [img])[0], detect(loaded, [img])[0]
    assert a.box == b.box and np.array_equal(a.mask, b.mask)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_detector(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_detector(tmp_path / "missing.pt")


def _train_cfg(**kw) -> DetectorTrainingConfig:
    base = dict(steps=6, batch_size=2, warmup_steps=2, checkpoint_every=3, log_every=1, num_threads=1, device="cpu",
                scale_jitter=(0.8, 1.0))
    base.update(kw)
    return DetectorTrainingConfig(**base)


def test_training_is_seeded_and_resumes_exactly(tmp_path):
    data = _disk_images(6)
    cfg = DetectorConfig.tiny()
    straight, hist = train_detector(data, cfg, _train_cfg(), tmp_path / "a.pt", progress=False)
    assert [h["step"] for h in hist] == list(range(6))
    assert all(np.isfinite(h["loss"]) for h in hist)
    # Same run in two slices: stop after 3 steps, then resume from the checkpoint.
    _, first = train_detector(data, cfg, _train_cfg(), tmp_path / "b.pt", progress=False, stop_after=3)
    assert len(first) == 3 and torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 3
    resumed, _ = train_detector(data, cfg, _train_cfg(), tmp_path / "b.pt", resume=True, progress=False)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k
    stored = torch.load(tmp_path / "b.pt", weights_only=True)
    assert stored["step"] == 6 and stored["config"] == asdict(cfg) and len(stored["history"]) == 6
    with pytest.raises(ValueError, match=r"cannot resume .*b.pt: its DetectorTrainingConfig differs \(lr: 0.001 -> 0.5\)"):
        train_detector(data, cfg, _train_cfg(lr=0.5), tmp_path / "b.pt", resume=True, progress=False)


def test_a_run_resumes_under_other_device_settings(tmp_path):
    data = _disk_images(6)
    cfg = DetectorConfig.tiny()
    train_detector(data, cfg, _train_cfg(device="cpu", num_threads=1), tmp_path / "d.pt", progress=False,
                   stop_after=3)
    # Where a run computes is not what it trains: another device setting continues the same run.
    _, hist = train_detector(data, cfg, _train_cfg(device="auto", num_threads=2, amp=False), tmp_path / "d.pt",
                             progress=False)
    assert [h["step"] for h in hist] == list(range(6))
    with pytest.raises(ValueError, match=r"its DetectorTrainingConfig differs \(seed: 0 -> 1\)"):
        train_detector(data, cfg, _train_cfg(device="cpu", seed=1), tmp_path / "d.pt", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_mixed_precision_gives_a_detector_that_loads_on_the_cpu(tmp_path):
    data = _disk_images(8)
    model, hist = train_detector(data, DetectorConfig.tiny(), _train_cfg(device="cuda", amp=True, steps=8),
                                 tmp_path / "g.pt", progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert all(np.isfinite(h["loss"]) for h in hist) and hist[-1]["skipped"] == 0
    stored = torch.load(tmp_path / "g.pt", weights_only=True)
    assert stored["scaler"] and all(v.device.type == "cpu" for v in stored["state_dict"].values())
    on_gpu = detect(model, data.images[:3])
    on_cpu = detect(load_detector(tmp_path / "g.pt"), data.images[:3])
    assert [d.fallback for d in on_gpu] == [d.fallback for d in on_cpu]
    for a, b in zip(on_gpu, on_cpu):
        assert a.mask.shape == b.mask.shape and np.allclose(a.box, b.box, atol=1.0)


def test_mask_threshold_is_calibrated_on_the_pseudo_masks(monkeypatch):
    import bcfeat.detection.inference as det

    data = _disk_images(10)
    # A detector whose mask probability is a smooth bump that crosses 0.3 at the true edge.
    def fake_run(model, images, score_thresh=None):
        probs = []
        for im in images:
            i = next(k for k, ref in enumerate(data.images) if ref is im or np.array_equal(ref, im))
            dist = ndimage.distance_transform_edt(data.masks[i]) - ndimage.distance_transform_edt(~data.masks[i])
            logit = dist / 2.0 + np.log(0.3 / 0.7)  # 0.3 exactly on the edge
            probs.append(torch.from_numpy(1 / (1 + np.exp(-logit))))
        return det.RawRun([], {}, [], [], probs)

    monkeypatch.setattr(det, "run_batch", fake_run)
    best, table = det.calibrate_mask_threshold(None, data, thresholds=[0.1, 0.3, 0.5, 0.7])
    assert best == 0.3
    assert table["mean_iou"].max() > 0.95 and table.loc[table.threshold == 0.7, "mean_iou"].item() < 0.95
    assert (np.diff(table["median_area_ratio"]) < 0).all()  # a higher threshold keeps less of the cell
    with pytest.raises(ValueError, match="no confident"):
        det.calibrate_mask_threshold(None, PseudoLabelledSet(data.images, data.masks, np.zeros(10, bool),
                                                             data.quality, data.sources))


def test_the_mask_threshold_is_an_inference_setting(tmp_path):
    data = _disk_images(6)
    train_detector(data, DetectorConfig.tiny(), _train_cfg(steps=2), tmp_path / "t.pt", progress=False)
    # A finished run returns at once under another threshold; another architecture is refused.
    model, _ = train_detector(data, DetectorConfig.tiny(mask_thresh=0.3), _train_cfg(steps=2), tmp_path / "t.pt",
                              progress=False)
    with pytest.raises(ValueError, match=r"t.pt: its DetectorConfig differs \(mask_head_width: 16 -> 8\)"):
        train_detector(data, DetectorConfig.tiny(mask_head_width=8), _train_cfg(steps=2), tmp_path / "t.pt",
                       progress=False)
    with pytest.raises(ValueError, match="mask_thresh"):
        DetectorConfig(mask_thresh=1.0)


def _drawn_images(monkeypatch, tmp_path, data, train_cfg, groups=None) -> list[int]:
    """Indices of the training images that each step drew, in order (augmentation off)."""
    import bcfeat.detection.training as det

    index_of = {torch.from_numpy(m).data_ptr(): i for i, m in enumerate(data.masks)}
    drawn: list[int] = []
    to_target = det.to_target

    def record(mask):
        drawn.append(index_of[mask.data_ptr()])
        return to_target(mask)

    monkeypatch.setattr(det, "to_target", record)
    train_detector(data, DetectorConfig.tiny(), train_cfg, tmp_path / f"{len(list(tmp_path.iterdir()))}.pt",
                   progress=False, groups=groups)
    return drawn


def test_balanced_sampling_gives_every_site_the_same_share(tmp_path, monkeypatch):
    data = _disk_images(10)
    groups = ["big_site"] * 8 + ["small_site"] * 2
    cfg = dict(steps=20, batch_size=5, augment=False)
    uniform = np.array(_drawn_images(monkeypatch, tmp_path, data, _train_cfg(**cfg), groups))
    balanced = np.array(_drawn_images(monkeypatch, tmp_path, data, _train_cfg(balance_groups=True, **cfg), groups))
    assert len(uniform) == len(balanced) == 100
    # The small site holds 2 of 10 images: 20 % of the draws uniformly, half of them when balanced.
    assert (uniform >= 8).mean() < 0.3
    assert 0.4 <= (balanced >= 8).mean() <= 0.6
    assert set(balanced) == set(range(10))  # every image still drawn
    with pytest.raises(ValueError, match="groups"):
        train_detector(data, DetectorConfig.tiny(), _train_cfg(balance_groups=True), None, progress=False)
    with pytest.raises(ValueError, match="3 entries for 10"):
        train_detector(data, DetectorConfig.tiny(), _train_cfg(balance_groups=True), None, progress=False,
                       groups=groups[:3])


def test_training_images_name_the_site_of_each_path(data_root):
    from bcfeat.detection.training_data import training_images

    sample = training_images(("jtsc_zheng18", "cellavision_zheng18"), {"jtsc_zheng18": 5, "cellavision_zheng18": 3},
                             root=data_root, seed=1)
    assert sample.dataset.tolist() == ["jtsc_zheng18"] * 5 + ["cellavision_zheng18"] * 3
    assert all(f"/{ds}/" in path for ds, path in zip(sample.dataset, sample.path))


# Every step is skipped here, so the schedule advances without an optimiser step (torch warns).
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_non_finite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    import torchvision.models.detection.roi_heads as rh

    monkeypatch.setattr(rh, "maskrcnn_loss", lambda *a, **k: torch.tensor(float("nan")))
    data = _disk_images(4)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_detector(data, DetectorConfig.tiny(), _train_cfg(max_bad_steps=2), tmp_path / "n.pt", progress=False)
    stored = torch.load(tmp_path / "n.pt", weights_only=True)
    assert stored["skipped"] == 3
    assert all(torch.isfinite(v).all() for v in stored["state_dict"].values() if v.is_floating_point())


def test_pseudo_label_cache_is_keyed_by_its_inputs(tmp_path, data_root):
    files = sorted((data_root / "jtsc_zheng18").glob("*/*.bmp"))[:3]
    a = pseudo_label(files, 96, cache_path=tmp_path / "c.pt", progress=False)
    assert [im.shape[:2] for im in a.images] == [m.shape for m in a.masks]
    assert all(max(im.shape[:2]) == 96 for im in a.images)
    b = pseudo_label(files, 96, cache_path=tmp_path / "c.pt", progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    c = pseudo_label(files[:2], 96, cache_path=tmp_path / "c.pt", progress=False)  # other inputs: recomputed
    assert len(c) == 2


@pytest.mark.slow
def test_trained_detector_finds_the_cell_far_better_than_a_centred_box(tmp_path, data_root):
    """~1-2 min: train on 48 real images (pseudo-masks only), score held-out images vs experts."""
    from bcfeat.detection.mask_metrics import expert_mask_pairs

    datasets = ("jtsc_zheng18", "cellavision_zheng18")
    pairs = {ds: expert_mask_pairs(ds, data_root) for ds in datasets}  # sorted by file stem
    files = [p for ds in datasets for p in pairs[ds].image_path.iloc[:24]]
    held = {ds: set(pairs[ds].image_path.iloc[60:72]) for ds in datasets}  # never trained on
    assert not set(files) & set().union(*held.values())
    cfg = DetectorConfig.cpu(image_size=160, anchor_sizes=(24, 48, 96, 160))
    model, hist = train_detector(files, cfg, DetectorTrainingConfig(steps=260, batch_size=4, warmup_steps=30, lr=2e-3,
                                                         checkpoint_every=1000, seed=0), tmp_path / "s.pt",
                                 progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    only = set().union(*held.values())
    kw = dict(datasets=datasets, data_root=data_root, image_paths=only)
    det = evaluate_mask_predictor(lambda ims: detect(model, ims), **kw).per_image
    # The comparator is detect()'s own no-detection guess: the centred box's ellipse.
    blind = evaluate_mask_predictor(lambda ims: [centred_ellipse(*im.shape[:2]) for im in ims], **kw).per_image
    assert len(det) == len(blind) == 24
    print(f"held-out mean IoU: detector {det.mask_iou.mean():.3f}, centred ellipse {blind.mask_iou.mean():.3f}")
    assert det.mask_iou.mean() > 0.75
    assert det.mask_iou.mean() > blind.mask_iou.mean() + 0.15
    assert (det.mask_iou.values > blind.mask_iou.values).mean() >= 0.7  # same image order in both
    assert det.detected.mean() >= 0.8 and det.fallback.mean() <= 0.1


def test_detector_gain_is_detector_minus_pseudo_mask_per_dataset():
    import pandas as pd

    from bcfeat.study.detector import detector_gain

    rows = [("cv", "detector", "all", 0.92), ("cv", "pseudo_mask", "all", 0.90), ("cv", "detector", "held_out", 0.5),
            ("cv", "pseudo_mask", "held_out", 0.9), ("jt", "detector", "all", 0.94), ("jt", "pseudo_mask", "all", 0.95)]
    table = pd.DataFrame(rows, columns=["dataset", "source", "subset", "mean_iou"]).set_index(["dataset", "source", "subset"])
    gain = detector_gain(table)
    assert gain.round(6).to_dict() == {"cv": 0.02, "jt": -0.01}
    assert detector_gain(table.xs("all", level="subset")).round(6).to_dict() == {"cv": 0.02, "jt": -0.01}


def test_detector_command_trains_as_the_study_does_and_scores_against_experts(tmp_path, data_root, capsys):
    import pandas as pd

    from bcfeat.detection.checkpoint import read_detector_file
    from bcfeat.runner.detector import handoff_file, main
    from bcfeat.study.detector import DetectorPlan, train_or_restore

    art = tmp_path / "art"
    assert main(["--preset", "tiny", "--steps", "3", "--batch-size", "2", "--images-per-site", "3",
                 "--data-root", str(data_root), "--artifacts-dir", str(art), "--eval-dir", str(tmp_path / "eval"),
                 "--max-eval-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps on 12 unlabelled training images" in out
    assert "mask threshold calibrated on the pseudo-masks (subpixel paste)" in out
    assert "detector minus pseudo-mask mean IoU" in out
    handoff = read_detector_file(handoff_file(art))
    assert handoff["step"] == 3 and handoff["train_config"]["balance_groups"] is True
    assert handoff["config"]["mask_image_guidance"] is False and "mask_threshold_calibration" in handoff
    summary = pd.read_csv(tmp_path / "eval" / "detector_vs_experts_summary.csv")
    assert set(summary.source) == {"detector", "pseudo_mask"}
    assert len(pd.read_csv(tmp_path / "eval" / "detector_vs_experts_per_image.csv")) == 2 * 2 * 4
    # The study's function with the same parameters finds that run finished: the same detector.
    model, _, info = train_or_restore(DetectorPlan.from_parameters("tiny", 3, 2, 0, 3), data_root, art, handoff_file(art))
    assert info["checkpoint"] == str(handoff_file(art))
    assert handoff_file(art) == art / "checkpoints" / "detector.pt"
    for k, v in model.state_dict().items():
        assert torch.equal(v, handoff["state_dict"][k]), k
    # The ablations of the closing note: the pixels given to the mask predictor, torchvision's paste.
    assert main(["--preset", "tiny", "--steps", "2", "--batch-size", "2", "--images-per-site", "2",
                 "--data-root", str(data_root), "--artifacts-dir", str(tmp_path / "g"),
                 "--eval-dir", str(tmp_path / "g_eval"), "--max-eval-images", "2",
                 "--mask-image-guidance", "--mask-paste", "torchvision"]) == 0
    assert "(torchvision paste)" in capsys.readouterr().out
    assert read_detector_file(handoff_file(tmp_path / "g"))["config"]["mask_image_guidance"] is True
    with pytest.raises(SystemExit) as bad_value:
        main(["--preset", "default"])
    assert bad_value.value.code == 2  # bcfeat.runner.exit_codes.USAGE


def test_detector_command_defaults_are_the_study_notebooks_parameters():
    import re

    from bcfeat import paths
    from bcfeat.runner.detector import parser

    cell = (paths.ROOT / "notebooks" / "01_detector.py").read_text()
    nb = {m[1]: eval(m[2]) for m in re.finditer(r"^(\w+): \w+ = (.+?)  #", cell, re.M)}
    args = parser().parse_args([])
    assert (args.preset, args.steps, args.batch_size, args.seed, args.images_per_site, not args.no_balance_sites,
            args.max_eval_images) == (nb["detector_preset"], nb["steps"], nb["batch_size"], nb["seed"],
                                      nb["images_per_site"], nb["balance_sites"], nb["max_eval_images"])
    assert args.artifacts_dir == paths.ROOT / nb["artifacts_dir"]
