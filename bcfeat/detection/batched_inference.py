"""The batched extraction path: images -> instance features and masked crops, the whole batch at once.

The reference path (:func:`bcfeat.detection.instance_features.extract_instances`) decodes one image
at a time on the main thread, then after the detector's forward pass loops over the images in
Python: the best detection is chosen with two host synchronisations per image, the mask pasted
and thresholded per image, copied to the host and cropped there. On a GPU that loop, not the
arithmetic, sets the pace (112 cells/s on an H200, ``book/results/benchmarks/bench_gpu.json``).

This path keeps the same computation and removes the loop:

* images are decoded once, by a thread pool (or, on CUDA and on request, by nvJPEG through
  ``torchvision.io.decode_jpeg(device="cuda")``), uploaded as uint8 and resized **per group of
  equal size** in one ``interpolate`` call (same call, same pixels as torchvision's transform);
* the backbone runs channels-last and, on request, under bfloat16 autocast (its feature maps are
  cast back to float32 before the heads); ``torch.compile`` of the backbone is optional;
* the choice of the kept detection, the sub-pixel mask paste, the thresholding, the fallback
  and the masked crop (one ``roi_align`` for the batch) are tensor operations over the batch;
  the only host synchronisations left are those inside torchvision's RPN and box
  post-processing (non-maximum suppression has data-dependent output sizes) and one copy of
  the batch's results to the host;
* ``bucket=True`` batches only images of one padded size, so every image is padded exactly as
  when it is alone: its result no longer depends on its batch-mates or on ``batch_size``.

On the CPU with the default :class:`ExtractionRuntime` (``fast=None`` -> the reference path) the
study's numbers do not change. With ``fast=True`` and the same batches, boxes, scores, fallback
flags, masks and crops equal the reference path's exactly and the RoIAlign features too (the
tests check this); bfloat16 (``amp``), channels-last and ``torch.compile`` change float rounding
only, which is why the cache key of :func:`bcfeat.autoencoder.aecfe_model.cached_instance_arrays`
names them when they are on.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align

from bcfeat.data.images import read_image
from bcfeat.detection.inference import centred_box
from bcfeat.detection.pseudo_masks import centred_ellipse

#: Images per forward pass on CUDA when neither the runtime nor the config says otherwise.
CUDA_BATCH_SIZE = 256
_JPEG = {".jpg", ".jpeg"}


@dataclass(frozen=True)
class ExtractionRuntime:
    """Where and how extraction runs; none of it is stored in a model file.

    Attributes
    ----------
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    batch_size : int, optional
        Images per forward pass; None: the :class:`ExtractionConfig`'s on the reference path,
        ``CUDA_BATCH_SIZE`` on the fast path on CUDA.
    fast : bool, optional
        The batched path of this module; None: on for CUDA, off on the CPU (the reference
        path, whose numbers the ``cpu`` study reports).
    bucket : bool, optional
        Batch only images of one padded size (results independent of batch-mates); None: as ``fast``
        on CUDA.
    amp : bool
        bfloat16 autocast for the backbone and FPN (CUDA; the heads stay float32).
    channels_last : bool, optional
        Channels-last memory format for the backbone; None: on for CUDA.
    compile : bool
        ``torch.compile`` the backbone (pays off over many batches of few distinct sizes).
    decode_threads : int
        Threads decoding image files.
    gpu_decode : bool
        Decode JPEG files on the GPU with nvJPEG (CUDA only; its pixels may differ from
        Pillow's by rounding, so it is off by default).
    """

    device: str = "auto"
    batch_size: int | None = None
    fast: bool | None = None
    bucket: bool | None = None
    amp: bool = False
    channels_last: bool | None = None
    compile: bool = False
    decode_threads: int = 4
    gpu_decode: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {self.decode_threads}")

    def torch_device(self) -> torch.device:
        from bcfeat.training.device import resolve_device

        return resolve_device(self.device)

    def resolved(self) -> "ExtractionRuntime":
        """Every ``None`` replaced by what it means on this machine's device.

        >>> ExtractionRuntime(device="cpu").resolved().fast
        False
        """
        dev = self.torch_device()
        cuda = dev.type == "cuda"
        fast = cuda if self.fast is None else self.fast
        return replace(self, device=str(dev), fast=fast,
                       bucket=(fast and cuda) if self.bucket is None else self.bucket,
                       channels_last=cuda if self.channels_last is None else self.channels_last,
                       gpu_decode=self.gpu_decode and cuda)

    def cache_settings(self) -> dict[str, Any]:
        """The settings that can change the arrays (beyond float rounding across devices), for a
        cache key; empty for the reference path at the config's batch size, so the keys of
        the ``cpu`` study's caches do not change."""
        r = self.resolved()
        out: dict[str, Any] = {}
        if r.batch_size is not None:
            out["batch_size"] = r.batch_size
        if r.fast:
            out.update(fast=True, bucket=bool(r.bucket), amp=r.amp, channels_last=bool(r.channels_last),
                       compile=r.compile, gpu_decode=r.gpu_decode)
        return out


# --------------------------------------------------------------------------- decoding

def decode_images(items: Sequence[Any], threads: int = 4) -> list[np.ndarray]:
    """Every item (a path or an ``(H, W, 3)`` uint8 array) as a checked array, in order, decoded by
    ``threads`` threads (Pillow releases the GIL while it decodes)."""
    items = list(items)
    if threads <= 1 or len(items) < 2:
        return [read_image(item) for item in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(read_image, items))


def _decode_on_device(items: Sequence[Any], device: torch.device, threads: int) -> list[Tensor]:
    """``(3, H, W)`` uint8 tensors on ``device``: JPEG files through nvJPEG in one call (CUDA), the
    rest through :func:`decode_images`. Guarded: only called for a CUDA device."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    items = list(items)
    jpeg = [i for i, it in enumerate(items) if isinstance(it, (str, Path)) and Path(it).suffix.lower() in _JPEG]
    out: list[Tensor | None] = [None] * len(items)
    if jpeg:
        from bcfeat.data.images import check_image_file_size

        for i in jpeg:  # the one size limit, on the header, before nvJPEG allocates anything
            check_image_file_size(items[i])
        with ThreadPoolExecutor(max_workers=threads) as pool:
            data = list(pool.map(lambda i: read_file(str(items[i])), jpeg))
        for i, t in zip(jpeg, decode_jpeg(data, mode=ImageReadMode.RGB, device=device)):
            out[i] = t
    rest = [i for i in range(len(items)) if out[i] is None]
    for i, arr in zip(rest, decode_images([items[i] for i in rest], threads)):
        out[i] = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


def _upload(images: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """``(H, W, 3)`` uint8 arrays -> ``(3, H, W)`` uint8 tensors on ``device`` (pinned, asynchronous on CUDA)."""
    out = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
        if device.type == "cuda":
            t = t.contiguous().pin_memory().to(device, non_blocking=True)
        out.append(t.to(device))
    return out


# --------------------------------------------------------------------------- the model's transform, batched

def resized_size(model, height: int, width: int) -> tuple[int, int]:
    """The size torchvision's transform resizes an ``(height, width)`` image to at inference."""
    t = model.transform
    scale = min(t.min_size[-1] / min(height, width), t.max_size / max(height, width))
    # interpolate(recompute_scale_factor=True) takes floor(size * scale)
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def padded_size(model, height: int, width: int, divisible: int = 32) -> tuple[int, int]:
    """The padded size of an image batched alone (the bucket of :class:`ExtractionRuntime`)."""
    h, w = resized_size(model, height, width)
    return int(math.ceil(h / divisible) * divisible), int(math.ceil(w / divisible) * divisible)


def _groups(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(tuple(s), []).append(i)
    return groups


def transform_batch(model, images: Sequence[Tensor]):
    """torchvision's ``GeneralizedRCNNTransform`` at inference, one normalise + resize per group of
    equal-size images instead of one per image: the same calls, so the same pixels.

    ``images``: ``(3, H, W)`` uint8 tensors on the model's device. Returns the ``ImageList``.
    """
    from torchvision.models.detection.image_list import ImageList

    t = model.transform
    sizes = [tuple(im.shape[-2:]) for im in images]
    resized: list[Tensor | None] = [None] * len(images)
    for (h, w), idx in _groups(sizes).items():
        x = torch.stack([images[i] for i in idx]).float().div_(255)
        mean = torch.as_tensor(t.image_mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(t.image_std, dtype=x.dtype, device=x.device)
        x = (x - mean[:, None, None]) / std[:, None, None]
        scale = min(t.min_size[-1] / min(h, w), t.max_size / max(h, w))
        x = F.interpolate(x, size=None, scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)
        for j, i in enumerate(idx):
            resized[i] = x[j]
    batched = t.batch_images(resized, size_divisible=t.size_divisible)
    return ImageList(batched, [tuple(r.shape[-2:]) for r in resized])


# --------------------------------------------------------------------------- one batch

@dataclass
class FastBatch:
    """What :func:`run_batch_fast` returns for ``B`` images, all on the model's device.

    ``boxes`` ``(B, 4)`` float64 in original pixels; ``scores`` ``(B,)`` float32; ``fallback``
    ``(B,)`` bool; ``n_candidates`` ``(B,)`` int64; ``features`` ``(B, C, 14, 14)`` float32;
    ``crops`` ``(B, 3, S, S)`` float32; ``masks``: ``B`` ``(H, W)`` bool tensors (the kept mask).
    """

    boxes: Tensor
    scores: Tensor
    fallback: Tensor
    n_candidates: Tensor
    features: Tensor
    crops: Tensor
    masks: list[Tensor] = field(default_factory=list)


def _pad_stack(tensors: list[Tensor], value: float, width: int) -> Tensor:
    """``B`` tensors ``(k_i, ...)`` -> ``(B, width, ...)``, padded with ``value``."""
    shape = tensors[0].shape[1:]
    out = tensors[0].new_full((len(tensors), width, *shape), value)
    for i, t in enumerate(tensors):
        if len(t):
            out[i, :len(t)] = t
    return out


def paste_masks_subpixel(probabilities: Tensor, boxes: Tensor, resized: tuple[int, int],
                         original: tuple[int, int]) -> Tensor:
    """:func:`bcfeat.detection.inference.paste_mask_subpixel` for ``B`` masks of images of one size.

    ``probabilities`` ``(B, M, M)``; ``boxes`` ``(B, 4)`` float32 in resized coordinates.
    Returns ``(B, H, W)`` probabilities, the per-image function's values to the last bit on the
    CPU (the per-image box scalars are computed in float64 as Python computes them there).
    """
    b, m = probabilities.shape[0], probabilities.shape[-1]
    h, w = resized
    height, width = original
    dev = probabilities.device
    xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5) * (w / width) - 0.5
    ys = (torch.arange(height, device=dev, dtype=torch.float32) + 0.5) * (h / height) - 0.5
    x0, y0, x1, y1 = boxes.unbind(1)
    bw = ((x1.double() - x0.double()) / m).clamp_min(1e-6).float()
    bh = ((y1.double() - y0.double()) / m).clamp_min(1e-6).float()
    u = (xs[None, :] - x0[:, None]) / bw[:, None] - 0.5
    v = (ys[None, :] - y0[:, None]) / bh[:, None] - 0.5
    gx, gy = 2 * u / (m - 1) - 1, 2 * v / (m - 1) - 1
    grid = torch.stack([gx[:, None, :].expand(b, height, width), gy[:, :, None].expand(b, height, width)], dim=-1)
    return F.grid_sample(probabilities.reshape(b, 1, m, m).float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True)[:, 0]


def masked_crops(images: Tensor, masks: Tensor, boxes: Tensor, crop_size: int, background: float = 0.0) -> Tensor:
    """:func:`bcfeat.detection.instance_features.masked_crop` for ``B`` images of one size.

    ``images`` ``(B, 3, H, W)`` uint8; ``masks`` ``(B, H, W)`` bool; ``boxes`` ``(B, 4)`` float64.
    Returns ``(B, 3, S, S)`` float32 in [0, 1].
    """
    img = images.float() / 255
    x0, y0, x1, y1 = boxes.double().unbind(1)
    side = torch.maximum(torch.maximum(x1 - x0, y1 - y0), torch.ones_like(x0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    index = torch.arange(len(boxes), device=boxes.device, dtype=torch.float64)
    square = torch.stack([index, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1).float()
    shifted = (img - background) * masks[:, None].to(img.dtype)
    out = roi_align(shifted, square, output_size=crop_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return (out + background).clamp_(0, 1)


_ELLIPSES: dict[tuple[int, int, str], Tensor] = {}


def _fallback_mask(height: int, width: int, device: torch.device) -> Tensor:
    key = (height, width, str(device))
    if key not in _ELLIPSES:
        _ELLIPSES[key] = torch.from_numpy(centred_ellipse(height, width)).to(device)
    return _ELLIPSES[key]


def _backbone(model, runtime: ExtractionRuntime):
    if not runtime.compile:
        return model.backbone
    compiled = getattr(model, "_bcfeat_compiled_backbone", None)
    if compiled is None:
        compiled = torch.compile(model.backbone, dynamic=False)
        object.__setattr__(model, "_bcfeat_compiled_backbone", compiled)  # not a submodule: no new state-dict keys
    return compiled


@torch.no_grad()
def run_batch_fast(model, images: Sequence[Tensor], crop_size: int, background: float = 0.0,
                   score_thresh: float | None = None, runtime: ExtractionRuntime | None = None,
                   keep_masks: bool = False) -> FastBatch:
    """Detection, kept mask, RoIAlign features and masked crop of ``B`` images in one pass.

    Parameters
    ----------
    model : MaskRCNN
        A bcfeat detector (any torchvision ``MaskRCNN``: without a ``bcfeat_config`` the mask
        threshold is 0.5 and the mask is pasted by torchvision), in eval mode, on its device.
    images : sequence of Tensor
        ``(3, H, W)`` uint8 on the model's device.
    runtime : ExtractionRuntime, optional
        ``amp``, ``channels_last`` and ``compile`` are read from it.
    keep_masks : bool
        Also return the ``(H, W)`` masks.
    """
    runtime = (runtime or ExtractionRuntime(device=str(images[0].device))).resolved()
    cfg = getattr(model, "bcfeat_config", None)
    thresh = model.roi_heads.score_thresh if score_thresh is None else score_thresh
    mask_thresh = cfg.mask_thresh if cfg is not None else 0.5
    subpixel = cfg is not None and cfg.mask_paste == "subpixel"
    device = images[0].device
    original = [tuple(int(s) for s in im.shape[-2:]) for im in images]

    image_list = transform_batch(model, images)
    x = image_list.tensors
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(runtime.amp)):
        features = _backbone(model, runtime)(x)
    features = {k: v.float() for k, v in features.items()}  # the heads and RoIAlign read float32
    image_list.tensors = x.float()
    proposals, _ = model.rpn(image_list, features)
    raw, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    sizes = [tuple(int(s) for s in hw) for hw in image_list.image_sizes]

    # The kept detection of every image, without leaving the device (select_detection, batched).
    k = max(1, max(len(r["scores"]) for r in raw))
    scores = _pad_stack([r["scores"] for r in raw], -math.inf, k)
    boxes = _pad_stack([r["boxes"] for r in raw], 0.0, k)
    ok = scores >= thresh
    n_cand = ok.sum(1)
    best = torch.where(ok, scores, torch.full_like(scores, -1.0)).argmax(1)
    found = n_cand > 0
    rows = torch.arange(len(raw), device=device)
    kept_box = boxes[rows, best]                                     # (B, 4) resized coordinates
    centred_t = torch.tensor([centred_box(h, w) for h, w in sizes], dtype=torch.float32, device=device)
    boxes_t = torch.where(found[:, None], kept_box, centred_t)
    kept_score = torch.where(found, scores[rows, best], torch.zeros_like(scores[:, 0]))
    # torchvision's resize_boxes: float32 ratios new / old
    ratio = torch.tensor([[o[1], o[0], o[1], o[0]] for o in original], dtype=torch.float32) \
        / torch.tensor([[s[1], s[0], s[1], s[0]] for s in sizes], dtype=torch.float32)
    centred_o = torch.tensor([centred_box(h, w) for h, w in original], dtype=torch.float64, device=device)
    boxes_o = torch.where(found[:, None], (kept_box * ratio.to(device)).double(), centred_o)

    pool = MultiScaleRoIAlign(list(model.roi_heads.mask_roi_pool.featmap_names), 14, sampling_ratio=2)
    pooled = pool(features, list(boxes_t.split(1)), image_list.image_sizes)

    masks_of: list[Tensor | None] = [None] * len(images)
    crops = torch.empty(len(images), 3, crop_size, crop_size, device=device)
    probs = _pad_stack([r["masks"][:, 0] for r in raw], 0.0, k)[rows, best] if "masks" in raw[0] else None
    for (o, s), idx in _groups([(o, s) for o, s in zip(original, sizes)]).items():
        ix = torch.tensor(idx, device=device)
        if subpixel:
            prob = paste_masks_subpixel(probs[ix], kept_box[ix], s, o)
        else:
            from torchvision.models.detection.roi_heads import paste_masks_in_image

            prob = torch.cat([paste_masks_in_image(probs[i:i + 1, None], (kept_box[i:i + 1] * ratio[i].to(device)),
                                                   o)[:, 0] for i in idx])
        mask = torch.where(found[ix, None, None], prob > mask_thresh, _fallback_mask(*o, device)[None])
        stack = torch.stack([images[i] for i in idx])
        crops[ix] = masked_crops(stack, mask, boxes_o[ix], crop_size, background)
        if keep_masks:
            for j, i in enumerate(idx):
                masks_of[i] = mask[j]
    return FastBatch(boxes_o, kept_score, ~found, n_cand.to(torch.int64), pooled, crops,
                     [m for m in masks_of] if keep_masks else [])  # type: ignore[misc]


# --------------------------------------------------------------------------- many images

def plan_batches(model, sizes: Sequence[tuple[int, int]], batch_size: int, bucket: bool) -> list[list[int]]:
    """Indices of each forward pass: ``batch_size`` consecutive images (as the reference path), or,
    with ``bucket``, ``batch_size`` images of one padded size at a time (first-seen order)."""
    n = len(sizes)
    if not bucket:
        return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    out: list[list[int]] = []
    for idx in _groups([padded_size(model, h, w) for h, w in sizes]).values():
        out += [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    return out


@torch.no_grad()
def extract_instances_fast(detector, images: Sequence[Any], crop_size: int = 64, batch_size: int = 16,
                           background: float = 0.0, score_thresh: float | None = None,
                           runtime: ExtractionRuntime | None = None, keep_masks: bool = False):
    """:func:`bcfeat.detection.instance_features.extract_instances`, batched (see the module's text).

    The detector is used on the device it is on. Returns an ``InstanceBatch`` on the CPU (and,
    with ``keep_masks``, the list of ``(H, W)`` bool masks as a second value).
    """
    from bcfeat.detection.instance_features import ROI_SIZE, InstanceBatch

    runtime = (runtime or ExtractionRuntime(device=str(next(detector.parameters()).device))).resolved()
    device = next(detector.parameters()).device
    was_training = detector.training
    detector.eval()
    if runtime.channels_last:
        detector.backbone.to(memory_format=torch.channels_last)
    items = list(images)
    if runtime.gpu_decode and device.type == "cuda":
        tensors = _decode_on_device(items, device, runtime.decode_threads)
    else:
        tensors = _upload(decode_images(items, runtime.decode_threads), device)
    sizes = [tuple(int(s) for s in t.shape[-2:]) for t in tensors]
    parts: list[tuple[list[int], FastBatch]] = []
    for idx in plan_batches(detector, sizes, batch_size, bool(runtime.bucket)):
        parts.append((idx, run_batch_fast(detector, [tensors[i] for i in idx], crop_size, background, score_thresh,
                                          runtime, keep_masks)))
    detector.train(was_training)
    n, c = len(items), detector.backbone.out_channels
    if not parts:
        empty = InstanceBatch(torch.zeros(0, c, ROI_SIZE, ROI_SIZE), torch.zeros(0, 3, crop_size, crop_size),
                              torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.bool),
                              torch.zeros(0, dtype=torch.int64))
        return (empty, [], torch.zeros(0, 4, dtype=torch.float64)) if keep_masks else empty
    order = torch.tensor([i for idx, _ in parts for i in idx])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)

    def gather(name: str) -> Tensor:  # one device -> host copy per field
        return torch.cat([getattr(p, name) for _, p in parts]).cpu()[inverse]

    boxes = gather("boxes")
    batch = InstanceBatch(features=gather("features").float(), crops=gather("crops"), boxes=boxes.float(), scores=gather("scores").float(), fallback=gather("fallback"),
                          n_candidates=gather("n_candidates"))
    if keep_masks:
        masks = [None] * n
        for idx, p in parts:
            for i, m in zip(idx, p.masks):
                masks[i] = m.cpu().numpy()
        return batch, masks, boxes
    return batch


__all__ = ["ExtractionRuntime", "CUDA_BATCH_SIZE", "decode_images", "transform_batch", "paste_masks_subpixel",
           "masked_crops", "run_batch_fast", "plan_batches", "extract_instances_fast", "FastBatch"]
