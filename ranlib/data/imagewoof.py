"""Imagewoof at 112 px (``../shared/data/imagewoof/imagewoof-112.npz``): decoded once, batched on the GPU.

Imagewoof2 is fast.ai's 10-dog-breed subset of ImageNet with its official train/val split; the shared
file holds it re-encoded with the shorter side at 112 px (longer side at most 160 px). It lets Table 7's
ImageNet networks train on real photos. Numbers measured on it are labelled
"Imagewoof (10 ImageNet dog classes, 112 px)" and are not ImageNet numbers.

Storage: every image lies at the top left of a fixed, zero-filled uint8 (112, 160, 3) canvas,
portrait images transposed so that all fit, with its true (height, width) kept; the canvases of a
split stack to one (N, 112, 160, 3) tensor on the device (53,760 bytes per image, 10 % over the
true pixels). Resampling weights only ever reach inside the true image, so the fill is never read.

Augmentation (training): RandomResizedCrop (Szegedy et al. 2015; torchvision's defaults, scale
(0.08, 1), ratio (3/4, 4/3), ten tries then a centre crop) with its boxes drawn for the whole epoch
at once on the device, resampled for a whole batch by two batched matmuls with torchvision's
antialiased bilinear weights (``resample``), then a horizontal flip, AlexNet PCA lighting (as
``ImageNetLoaders``) and per-channel ImageNet normalisation. Evaluation: the classic single crop
(shorter side to round(size * 256 / 224), centre crop ``size``), computed once for the whole test set
by the same resampler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranlib.errors import ConfigError, DataFormatError, DataNotFoundError

from . import decode
from .batches import GpuBatches, epoch_seed
from .folders import IMAGENET_MEAN, IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, IMAGENET_STD

__all__ = [
    "Imagewoof",
    "ImagewoofSplit",
    "RandomResizedCropBatches",
    "center_crop_images",
    "load_imagewoof",
    "load_imagewoof_split",
    "random_resized_crop_boxes",
]

NPZ_NAME = "imagewoof-112.npz"
DATASET_ID = "imagewoof2-112"
LABEL = "Imagewoof (10 ImageNet dog classes, 112 px)"
CANVAS = (112, 160)  # (height, width) bound of every image once portrait images are transposed
STAGE_RESPONSE_BATCH = 64  # the first test images, for Figure 4's stage responses (as ranlib.training.splits)
_KEYS = ("train_jpeg", "train_offsets", "train_labels", "val_jpeg", "val_offsets", "val_labels", "class_names")
_EVAL_CHUNK = 512  # test images resampled at once: bounds the float64 copy, not the result


@dataclasses.dataclass(frozen=True, eq=False)
class Imagewoof:
    """The decoded data set. Images: uint8 canvases (N, 112, 160, 3); sizes: int64 (N, 2), each image's
    (height, width) in pixels as decoded (a portrait image, height > width, is stored transposed)."""

    train_images: np.ndarray
    train_sizes: np.ndarray
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_sizes: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]  # readable breed names, in label order (sorted WordNet ids)
    class_wnids: tuple[str, ...]
    fingerprint: str  # sha256 hex over decode.fingerprint(canvases, labels) and the true sizes
    name: str = "imagewoof"
    dataset_id: str = DATASET_ID
    label: str = LABEL

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        """The ``dataset`` block of a results file (``subset`` is added by whoever takes a subset)."""
        return {"name": self.name, "id": self.dataset_id, "label": self.label, "fingerprint": self.fingerprint,
                "num_train": int(len(self.train_labels)), "num_test": int(len(self.test_labels))}


def load_imagewoof(root, *, cache_dir=None) -> Imagewoof:
    """Load ``imagewoof-112.npz`` (``root`` is the file or the folder holding it), decoding its JPEGs once.

    The decoded canvases are cached as ``.npz`` keyed by the file's sha256, like ``cifar10-jpeg``
    (``cache_dir`` defaults to ``<root>/.ranlib-cache`` when writable, else ``~/.cache/ranlib``).
    Raises DataNotFoundError (no file) or DataFormatError (not this layout, an unreadable image, an
    image larger than 160 px on a side or 112 px on its shorter side).
    """
    root = Path(root).expanduser()
    path = root / NPZ_NAME if root.is_dir() else root
    if not path.is_file():
        raise DataNotFoundError(
            f"no {NPZ_NAME} at {path}: point the data root at the folder that holds it "
            "(../shared/data/imagewoof on the project machines) or at the file itself"
        )
    source = decode.sha256_file(path)
    cache = decode.cache_file(cache_dir, path.parent, "imagewoof-112", source)
    arrays = decode.read_cache(cache, source)
    if arrays is None:
        arrays = _decode(path)
        decode.write_cache(cache, source, arrays)
    digest = hashlib.sha256(str(arrays["fingerprint"]).encode())
    for split in ("train", "test"):
        digest.update(np.ascontiguousarray(arrays[f"{split}_sizes"], dtype="<i8"))
    return Imagewoof(
        *(arrays[f"{s}_{k}"] for s in ("train", "test") for k in ("images", "sizes", "labels")),
        class_names=tuple(str(name) for name in arrays["class_names"]),
        class_wnids=tuple(str(wnid) for wnid in arrays["class_wnids"]),
        fingerprint=digest.hexdigest(),
    )


def _decode(path: Path) -> dict:
    pack = decode.read_npz(path, _KEYS, NPZ_NAME)
    classes = pack["class_names"]
    if classes.ndim != 2 or classes.shape[1] != 2:
        raise DataFormatError(f"{path}: class_names must be (classes, 2) (wnid, name) pairs, "
                              f"got shape {classes.shape}")
    arrays = {"class_wnids": classes[:, 0], "class_names": classes[:, 1]}
    for split, stored in (("train", "train"), ("test", "val")):  # fast.ai's val split is the test set
        blobs, labels = decode.npz_blobs(pack, path, stored, len(classes))
        names = [f"{path.name}:{stored}[{i}]" for i in range(len(blobs))]
        canvases, sizes = zip(*decode.decode_in_chunks(_decode_to_canvas, blobs, names))
        arrays.update({f"{split}_images": np.concatenate(canvases), f"{split}_sizes": np.concatenate(sizes),
                       f"{split}_labels": labels})
    return arrays


def _decode_to_canvas(blobs, names) -> tuple[np.ndarray, np.ndarray]:
    """uint8 canvases (n, 112, 160, 3) and int64 (height, width) (n, 2) of encoded images."""
    canvases = np.zeros((len(blobs), *CANVAS, 3), dtype=np.uint8)
    sizes = np.empty((len(blobs), 2), dtype=np.int64)
    for i, (blob, name) in enumerate(zip(blobs, names)):
        image = decode.decode_rgb(blob, name)
        sizes[i] = image.shape[:2]
        if image.shape[0] > image.shape[1]:
            image = image.transpose(1, 0, 2)
        height, width = image.shape[:2]
        if height > CANVAS[0] or width > CANVAS[1]:
            raise DataFormatError(f"{name} is {sizes[i, 1]}x{sizes[i, 0]}: larger than {NPZ_NAME}'s images "
                                  f"(at most {CANVAS[1]} px on a side, {CANVAS[0]} on the shorter side)")
        canvases[i, :height, :width] = image
    return canvases, sizes


# --- batched crops on the device ----------------------------------------------------------------------------


def random_resized_crop_boxes(sizes: torch.Tensor, generator: torch.Generator, *, scale=(0.08, 1.0),
                              ratio=(3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes (Szegedy et al. 2015), torchvision's ``get_params`` for all images at once.

    ``sizes``: int (N, 2) image (height, width) in pixels. Returns int64 (N, 4) (top, left, height, width)
    in pixels. Per image: ``attempts`` tries of area fraction ~ U(scale) and log aspect (w / h) ~
    U(log ratio), sides rounded; the first try that fits wins, else the centre crop with the aspect clamped
    to ``ratio``. All draws come from ``generator``, on its device.
    """
    dev = generator.device
    height, width = sizes.to(dev, torch.float32).unbind(1)
    height, width = height[:, None], width[:, None]
    n = len(sizes)
    area = height * width * torch.empty(n, attempts, device=dev).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n, attempts, device=dev).uniform_(*map(math.log, ratio), generator=generator))
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first fitting try (0 when none fits)
    h, w, found = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0], fits.any(1)
    height, width = height[:, 0], width[:, 0]
    # The fallback: the whole image, cut to the nearest allowed aspect if it lies outside `ratio`.
    too_tall, too_wide = width / height < min(ratio), width / height > max(ratio)
    fallback_h = torch.where(too_tall, torch.round(width / min(ratio)), height)
    fallback_w = torch.where(too_wide, torch.round(height * max(ratio)), width)
    h, w = torch.where(found, h, fallback_h), torch.where(found, w, fallback_w)
    # Uniform integer offsets in [0, room]; the fallback is centred.
    room = torch.stack([height - h, width - w], 1)
    offsets = torch.floor(torch.rand(n, 2, device=dev, generator=generator) * (room + 1)).clamp_(max=room)
    offsets = torch.where(found[:, None], offsets, torch.div(room, 2, rounding_mode="floor"))
    return torch.cat([offsets, h[:, None], w[:, None]], 1).to(torch.int64)


def resample(canvases: torch.Tensor, sizes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: int,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Crop-and-resize every image of a batch at once: float NHWC (B, size, size, 3), pixel units [0, 255].

    ``canvases``: uint8 (B, 112, 160, 3); ``sizes``: (B, 2) true (height, width). ``rows``, ``cols``: (B, 4)
    per axis of the image in its own orientation (start, length) of the source pixels used, the length they
    are resized to, and the first output pixel kept. The filter is torchvision's ``antialias=True``
    bilinear (a triangle whose width grows with the shrink factor; plain bilinear when enlarging), as
    separable per-image weight matrices applied by two batched matmuls: exact box edges, no aliasing when
    shrinking (``grid_sample`` takes one bilinear sample per pixel; ``roi_align``'s adaptive sampling
    blurs at shrink factors just below 1).
    """
    with torch.autocast(canvases.device.type, enabled=False):
        transposed = (sizes[:, 0] > sizes[:, 1]).to(canvases.device)[:, None, None]
        along_height = _axis_weights(rows.to(canvases.device, dtype), size, CANVAS[1])
        along_width = _axis_weights(cols.to(canvases.device, dtype), size, CANVAS[1])
        # A portrait image is stored transposed: its columns run down the canvas, so swap the weights
        # and transpose the result. The canvas's rows are the shorter side (at most 112).
        canvas_rows = torch.where(transposed, along_width, along_height)[:, :, :CANVAS[0]]
        canvas_cols = torch.where(transposed, along_height, along_width)
        batch = len(canvases)
        x = canvases.to(dtype).permute(0, 1, 3, 2).reshape(batch, CANVAS[0] * 3, CANVAS[1])
        x = torch.bmm(x, canvas_cols.transpose(1, 2))  # (B, 112 * 3, size): widths resampled
        x = torch.bmm(canvas_rows, x.view(batch, CANVAS[0], 3 * size))  # (B, size, 3 * size): then heights
        out = x.view(batch, size, 3, size).transpose(2, 3)  # (B, size, size, 3)
        return torch.where(transposed[..., None], out.transpose(1, 2), out)


def _axis_weights(axis: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """(B, size, extent) interpolation weights along one axis; ``axis``: (B, 4) (start, length, resized
    length, first output) as in ``resample``. ATen's ``_upsample_bilinear2d_aa``: output k is centred at
    start + (first + k + 0.5) * scale, scale = length / resized; pixel j weighs 1 - |j + 0.5 - centre| /
    max(scale, 1) where positive and inside the source span, normalised to sum 1."""
    start, length, resized, first = (v[:, None, None] for v in axis.unbind(1))
    scale = length / resized
    centre = start + (first + torch.arange(size, device=axis.device, dtype=axis.dtype)[:, None] + 0.5) * scale
    pixel = torch.arange(extent, device=axis.device, dtype=axis.dtype) + 0.5
    weights = (1 - (pixel - centre).abs() / scale.clamp(min=1)).clamp_(min=0)
    weights = weights * ((pixel > start) & (pixel < start + length))
    return weights / weights.sum(-1, keepdim=True)


def center_crop_images(canvases: torch.Tensor, sizes: torch.Tensor, size: int) -> torch.Tensor:
    """The classic single test crop of every image, in order: uint8 NHWC (N, size, size, 3) on ``canvases``'
    device. As torchvision's ``Resize(round(size * 256 / 224), antialias=True)`` (shorter side; the longer
    one truncated to whole pixels) then ``CenterCrop(size)``, in float64 then rounded."""
    resize = round(size * 256 / 224)
    sizes = torch.as_tensor(sizes, dtype=torch.float64).to(canvases.device)
    height, width = sizes.unbind(1)
    landscape = height <= width
    new_height = torch.where(landscape, resize, torch.floor(resize * height / width))
    new_width = torch.where(landscape, torch.floor(resize * width / height), resize)
    zero = torch.zeros_like(height)
    # CenterCrop's offsets: int(round((resized - size) / 2)); round-half-even, as Python's round
    rows = torch.stack([zero, height, new_height, torch.round((new_height - size) / 2)], 1)
    cols = torch.stack([zero, width, new_width, torch.round((new_width - size) / 2)], 1)
    chunks = [
        resample(canvases[i:i + _EVAL_CHUNK], sizes[i:i + _EVAL_CHUNK], rows[i:i + _EVAL_CHUNK],
                 cols[i:i + _EVAL_CHUNK], size, dtype=torch.float64)
        for i in range(0, len(canvases), _EVAL_CHUNK)
    ]
    return torch.cat(chunks).round_().clamp_(0, 255).to(torch.uint8)


class RandomResizedCropBatches(GpuBatches):
    """Training batches of variable-size images on ``device``: RandomResizedCrop to ``input_size``,
    horizontal flip (p = 1/2), PCA lighting (``lighting_std``; 0 turns it off), ImageNet mean/std.

    ``canvases`` uint8 (N, 112, 160, 3) and ``sizes`` (N, 2) as in :class:`Imagewoof`; batches are float
    (B, 3, input_size, input_size) (channels_last memory if asked) and int64 labels, the last partial
    batch dropped. Order, boxes, flips and lighting of an epoch come from a ``torch.Generator`` on
    ``device`` seeded by ``epoch_seed(seed, epoch)``; ``state_dict``/``load_state_dict``,
    ``epoch_iter`` and ``forever`` behave as in :class:`ranlib.data.batches.GpuBatches`.
    """

    def __init__(self, canvases, sizes, labels, *, input_size: int, batch_size: int, device="cpu",
                 channels_last: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
                 lighting_std: float = 0.1, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__(canvases, labels, batch_size=batch_size, train=True, device=device, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, channels_last=channels_last, seed=seed, drop_last=True, dtype=dtype)
        self.sizes = torch.as_tensor(sizes, dtype=torch.int64).to(self.device)
        if self.sizes.shape != (self.num_samples, 2):
            raise DataFormatError(f"{self.num_samples} images but sizes of shape {tuple(self.sizes.shape)}")
        self.input_size, self.lighting_std = _check_size(input_size), float(lighting_std)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        # 255 * eigvec @ diag(eigval): maps alpha (3,) to an RGB shift in pixel units
        self.lighting = 255 * torch.tensor(IMAGENET_PCA_EIGVEC) @ torch.diag(torch.tensor(IMAGENET_PCA_EIGVAL))
        self.lighting = self.lighting.to(self.device)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """(order (N,), boxes (N, 4) (top, left, height, width), flips (N,) bool, lighting alphas (N, 3)) of
        one epoch; all but the order are indexed by position in the epoch."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(epoch_seed(self.seed, epoch))
        n = self.num_samples
        order = torch.randperm(n, generator=generator, device=self.device)
        boxes = random_resized_crop_boxes(self.sizes[order], generator, scale=self.scale, ratio=self.ratio)
        flips = torch.rand(n, generator=generator, device=self.device) < 0.5
        alphas = torch.randn(n, 3, generator=generator, device=self.device) * self.lighting_std
        return order, boxes, flips, alphas

    def _batch_pixels(self, index, boxes, flips, alphas) -> torch.Tensor:
        top, left, height, width = boxes.to(torch.float32).unbind(1)
        full = torch.full_like(top, self.input_size)
        rows, cols = torch.stack([top, height, full, 0 * top], 1), torch.stack([left, width, full, 0 * top], 1)
        pixels = resample(self.images[index], self.sizes[index], rows, cols, self.input_size)
        pixels = torch.where(flips[:, None, None, None], pixels.flip(2), pixels)
        # NHWC memory, so that _normalise's NCHW view is channels_last
        return (pixels + (alphas @ self.lighting.T)[:, None, None, :]).contiguous()


def _check_size(size) -> int:
    if int(size) != size or not 1 <= size <= 4 * CANVAS[0]:
        raise ConfigError(f"input size {size!r} must be a whole number of pixels from 1 to {4 * CANVAS[0]}")
    return int(size)


@dataclasses.dataclass
class ImagewoofSplit:
    """What ``ranlib.training.splits.Split`` takes from Imagewoof."""

    train: list[RandomResizedCropBatches] | None  # one per seed; None if not asked
    test: GpuBatches  # one ordered pass over the single-crop test set per iteration
    fixed_batch: torch.Tensor  # the first 64 test images, normalised, (64, 3, size, size)
    info: dict  # the results' "dataset" block
    num_classes: int


def load_imagewoof_split(root, *, device, input_size: int, batch_size: int, seeds: Sequence[int], channels_last: bool,
                         test_size: int | None = None, max_train_samples: int | None = None,
                         max_test_samples: int | None = None, eval_batch_size: int | None = None,
                         train: bool = True, cache_dir=None, lighting_std: float = 0.1) -> ImagewoofSplit:
    """Imagewoof for the training loop: the whole set on ``device`` as uint8, batches made there.

    One training batcher per seed in ``seeds`` (the members of a fused group), all reading one copy
    of the images on the device.

    Training crops to ``input_size``; the test crop is ``test_size`` (default ``input_size``), computed once.
    ``max_*_samples`` keep a class-balanced subset, the first images of each class in turn (the file is
    sorted by class, so its first N images would be one breed). Raises what ``load_imagewoof`` raises,
    and ConfigError for a size outside 1..448 px.
    """
    woof = load_imagewoof(root, cache_dir=cache_dir)
    device = torch.device(device)
    test_size = _check_size(input_size if test_size is None else test_size)
    train_index = _balanced_subset(woof.train_labels, max_train_samples)
    test_index = _balanced_subset(woof.test_labels, max_test_samples)
    test_sizes = torch.as_tensor(woof.test_sizes[test_index])
    test_images = center_crop_images(torch.as_tensor(woof.test_images[test_index]).to(device), test_sizes, test_size)
    test_labels, train_labels = woof.test_labels[test_index], woof.train_labels[train_index]
    common = dict(device=device, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=channels_last, train=False)
    test = GpuBatches(test_images, test_labels, batch_size=eval_batch_size or batch_size, **common)
    fixed = next(iter(GpuBatches(test_images[:STAGE_RESPONSE_BATCH], test_labels[:STAGE_RESPONSE_BATCH],
                                 batch_size=STAGE_RESPONSE_BATCH, **common)))[0]
    batches = None
    if train:
        canvases = torch.as_tensor(woof.train_images[train_index]).to(device)
        batches = [RandomResizedCropBatches(
            canvases, woof.train_sizes[train_index], train_labels,
            input_size=input_size, batch_size=batch_size, device=device, channels_last=channels_last, seed=seed,
            lighting_std=lighting_std,
        ) for seed in seeds]
    info = {**woof.to_dict(), "num_train": len(train_labels), "num_test": len(test_labels),
            "subset": bool(max_train_samples or max_test_samples)}
    return ImagewoofSplit(batches, test, fixed, info, woof.num_classes)


def _balanced_subset(labels: np.ndarray, limit: int | None) -> Any:
    """Indices of all images (a slice, in file order), or of the first ``limit`` images taking each class's
    next image in turn (rank within class, then label)."""
    if not limit or limit >= len(labels):
        return slice(None)
    rank = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))[:limit]
