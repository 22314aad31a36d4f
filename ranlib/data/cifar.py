"""Datasets for ranlib: 32x32 arrays with a GPU-resident batcher (CIFAR) and DataLoaders for ImageNet folders.

Every dataset carries an identifier, a human label and a content fingerprint, so a number measured on the
JPEG copy of CIFAR-10 (``../shared/data/cifar10-jpeg``) can never pass for official CIFAR-10: the npz, its
unpacked folder tree and any data whose decoded pixels equal the copy's are all labelled
"CIFAR-10 (JPEG q75 copy)". The label is verified, never taken from a name: the npz by its sha256 (the
copy's README gives it), a folder by the digests of its files, any data by its decoded pixels; a file
called ``cifar10-jpeg.npz`` that is none of these is labelled as an unknown JPEG npz.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import multiprocessing
import os
import re
import sys
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import tv_tensors
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.transforms import v2

from ranlib.errors import CheckpointError, ConfigError, DataFormatError, DataNotFoundError, UnknownNameError
from ranlib.files import atomic_write
from ranlib.paths import cache_dir as user_cache_dir

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "GpuBatches",
    "ImageNetLoaders",
    "PCALighting",
    "fingerprint",
    "load_arrays",
    "pixel_mean",
]

DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder", "imagenet-folder", "imagewoof")
ARRAY_DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder")

IMAGE_SIZE = 32
JPEG_COPY_ID = "cifar10-jpeg-q75"
JPEG_COPY_LABEL = "CIFAR-10 (JPEG q75 copy)"
JPEG_NPZ_NAME = "cifar10-jpeg.npz"
# sha256 of the shared copy's cifar10-jpeg.npz (its README): a file of that name is labelled the copy
# only when its digest is this one (or its pixels are the copy's, JPEG_COPY_PIXELS_DIGEST).
JPEG_COPY_SHA256 = "4e08a02dd3ef0baac6d9a5e920ca6512c31aea8def1972b8f12a41b5d2e17ada"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# sha256 of the sorted sha256 digests of the copy's 60,000 JPEG files: recognises them under any names,
# independent of the JPEG decoder.
JPEG_COPY_FILES_DIGEST = "3a5f59a34448b6c3d3f744bccbb5f6b00a993cd10a393dfdf24cb63a7544e736"
# `_pixels_digest` of the copy's 60,000 decoded images (Pillow 13.0, libjpeg-turbo): recognises its pixels
# in any order, file format, split or labelling. Another decoder may round differently, so this
# guard only ever adds the JPEG label, it never removes it.
JPEG_COPY_PIXELS_DIGEST = "ccfae75c6dca728e72c7596b88d916a629649cdef7f8d095c730075286fb08c7"
# How the copy's `unpack` script names files: <split>/<class>/<official index, 5 digits>.jpg
UNPACKED_NAME = re.compile(r"^(\d{5})\.jpg$")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
HOW_TO_GET_CIFAR = (
    "pass --download (download=True) on a machine with internet, or use the JPEG copy offline: "
    "--dataset cifar10-jpeg --data-root ../shared/data/cifar10-jpeg"
)
_CACHE_VERSION = 1
_PARALLEL_DECODE_MIN = 4096  # below this, starting worker processes costs more than it saves


# ----------------------------------------------------------------------------------------------------------
# 32x32 datasets as uint8 arrays
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A 32x32 dataset in memory: uint8 NHWC images, int64 labels, and where the data came from."""

    name: str  # the DATASETS name it was loaded as
    train_images: np.ndarray  # uint8 (N, 32, 32, 3)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    dataset_id: str  # "cifar10", "cifar100", "cifar10-jpeg-q75", "folder:<basename>"
    label: str  # for humans: "CIFAR-10", "CIFAR-10 (JPEG q75 copy)", ...
    fingerprint: str  # sha256 hex of decoded pixels + labels, train then test (see `fingerprint`)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        """The ``dataset`` block of a results file."""
        return {
            "name": self.name,
            "id": self.dataset_id,
            "label": self.label,
            "fingerprint": self.fingerprint,
            "num_train": int(len(self.train_labels)),
            "num_test": int(len(self.test_labels)),
        }


def fingerprint(train_images, train_labels, test_images, test_labels) -> str:
    """sha256 hex over (shape header, uint8 pixels, int64 little-endian labels) of train, then test."""
    digest = hashlib.sha256()
    for images, labels in ((train_images, train_labels), (test_images, test_labels)):
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.ascontiguousarray(labels, dtype="<i8")
        digest.update(f"{images.shape}{labels.shape}".encode())
        digest.update(images.reshape(-1))
        digest.update(labels.reshape(-1))
    return digest.hexdigest()


def load_arrays(name: str, root, *, download: bool = False, cache_dir=None) -> ArrayDataset:
    """Load a 32x32 dataset as uint8 arrays; JPEG sources are decoded once and cached as ``.npz``.

    ``cache_dir`` defaults to ``<root>/.ranlib-cache`` when that is writable, else ``~/.cache/ranlib``.
    """
    if name == "imagenet-folder":
        raise ConfigError("dataset 'imagenet-folder' is not a 32x32 array dataset: load it with ImageNetLoaders")
    if name == "imagewoof":
        raise ConfigError("dataset 'imagewoof' is not a 32x32 array dataset: load it with ranlib.data.imagewoof")
    if name not in ARRAY_DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    root = Path(root).expanduser()
    if name in ("cifar10", "cifar100"):
        dataset = _load_torchvision_cifar(name, root, download)
    elif name == "cifar10-jpeg":
        dataset = _load_jpeg_npz(root, cache_dir)
    else:
        dataset = _load_folder(root, cache_dir)
    if dataset.dataset_id != JPEG_COPY_ID and _pixels_digest(dataset) == JPEG_COPY_PIXELS_DIGEST:
        dataset = dataclasses.replace(dataset, dataset_id=JPEG_COPY_ID, label=JPEG_COPY_LABEL)
    return dataset


def _pixels_digest(dataset: ArrayDataset) -> str:
    """sha256 of all images (train and test together) sorted by content: the same pixels in any order,
    split, format or labelling give the same digest."""
    images = np.concatenate([dataset.train_images, dataset.test_images]).reshape(-1, IMAGE_SIZE * IMAGE_SIZE * 3)
    # A 64-bit hash per image (wrapping dot product with fixed odd weights) orders the images; ties are
    # identical images, so the order of the sorted bytes does not depend on the input order.
    weights = np.random.default_rng(0).integers(1, 2**63, images.shape[1] // 8, dtype=np.uint64) | np.uint64(1)
    keys = images.view(np.uint64) @ weights
    return hashlib.sha256(images[np.argsort(keys, kind="stable")]).hexdigest()


def _load_torchvision_cifar(name: str, root: Path, download: bool) -> ArrayDataset:
    cls, label = (CIFAR10, "CIFAR-10") if name == "cifar10" else (CIFAR100, "CIFAR-100")
    if not download and not root.exists():
        raise DataNotFoundError(f"{label} data root {root} does not exist: {HOW_TO_GET_CIFAR}")
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found or corrupted"; no network
        raise DataNotFoundError(
            f"{label} not found or incomplete under {root} (torchvision expects {root / cls.base_folder}): "
            f"{HOW_TO_GET_CIFAR} ({err})"
        ) from err
    arrays = []
    for split in splits:
        arrays += [np.ascontiguousarray(split.data, dtype=np.uint8), np.asarray(split.targets, dtype=np.int64)]
    return ArrayDataset(name, *arrays, tuple(splits[0].classes), name, label, fingerprint(*arrays))


def _load_jpeg_npz(root: Path, cache_dir) -> ArrayDataset:
    path = root / JPEG_NPZ_NAME if root.is_dir() else root
    if not path.is_file():
        raise DataNotFoundError(
            f"no {JPEG_NPZ_NAME} at {path}: point the data root at the folder that holds it "
            "(../shared/data/cifar10-jpeg on the project machines) or at the file itself"
        )
    source = sha256_file(path)
    cache = _cache_file(cache_dir, path.parent, "cifar10-jpeg", source)
    arrays = _read_cache(cache, source)
    if arrays is None:
        arrays = _decode_npz(path)
        _write_cache(cache, source, arrays)
    if source == JPEG_COPY_SHA256:
        return _dataset_from_arrays("cifar10-jpeg", arrays, JPEG_COPY_ID, JPEG_COPY_LABEL)
    return _dataset_from_arrays("cifar10-jpeg", arrays, f"jpeg-npz:{source[:12]}",
                                f"JPEG npz {path.name} (sha256 {source[:12]}, not the CIFAR-10 JPEG copy's)")


_NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels", "class_names")


def _decode_npz(path: Path) -> dict:
    pack = read_npz(path, _NPZ_KEYS, "cifar10-jpeg")
    class_names = tuple(str(c) for c in pack["class_names"])
    arrays = {"class_names": np.asarray(class_names)}
    for split in ("train", "test"):
        blobs, labels = _npz_blobs(pack, path, split, len(class_names))
        arrays[f"{split}_images"] = _decode_images(blobs, [f"{path.name}:{split}[{i}]" for i in range(len(blobs))])
        arrays[f"{split}_labels"] = labels
    return arrays


# What reading a truncated or bit-flipped .npz raises (zip directory, CRC, inflate, array header).
NPZ_DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_npz(path: str | os.PathLike, keys: Sequence[str] = (), layout: str = "") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickle), read now, after checking that it holds ``keys``.

    ``np.load`` reads an archive's arrays lazily, so damage surfaces wherever one is first used; here
    a truncated or corrupt file is one :class:`DataFormatError` line naming it, as is a file without
    ``keys`` (not in the ``layout`` its README describes).
    """
    try:
        with np.load(path, allow_pickle=False) as pack:
            arrays = {k: pack[k] for k in pack.files}
    except NPZ_DAMAGE as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataFormatError(f"{path} is damaged or not a readable .npz file ({type(err).__name__}: {reason}): "
                              "copy it again from its source") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataFormatError(f"{path} is not in the {layout} layout: missing keys {missing} (the README next to "
                              "the original describes the layout)")
    return arrays


def _npz_blobs(pack, path: Path, split: str, num_classes: int) -> tuple[list[bytes], np.ndarray]:
    """The encoded images (bytes) and int64 labels of one split of a JPEG npz (``<split>_jpeg/_offsets/_labels``)."""
    buf, offsets, labels = pack[f"{split}_jpeg"], pack[f"{split}_offsets"], pack[f"{split}_labels"]
    n = len(labels)
    ok = (
        buf.dtype == np.uint8 and buf.ndim == 1 and offsets.ndim == 1 and len(offsets) == n + 1
        and np.issubdtype(offsets.dtype, np.integer) and np.issubdtype(labels.dtype, np.integer)
        and n > 0 and offsets[0] == 0 and offsets[-1] == len(buf) and (np.diff(offsets) > 0).all()
        and labels.min() >= 0 and labels.max() < num_classes
    )
    if not ok:
        raise DataFormatError(
            f"{path}: {split}_jpeg/{split}_offsets/{split}_labels are inconsistent (offsets must run "
            f"0..len(jpeg) with n+1 entries, labels must lie in [0, {num_classes}))"
        )
    return [buf[offsets[i]:offsets[i + 1]].tobytes() for i in range(n)], labels.astype(np.int64)


def _load_folder(root: Path, cache_dir) -> ArrayDataset:
    train_dir, test_dir = _split_dirs(
        root, "image folder", "the JPEG copy unpacks to this layout: ../shared/data/cifar10-jpeg/unpack DEST"
    )
    class_names = _class_dirs(train_dir)
    listing = {"train": _image_files(train_dir, class_names), "test": _image_files(test_dir, class_names)}
    unpacked_copy = tuple(class_names) == CIFAR10_CLASSES and all(
        UNPACKED_NAME.match(os.path.basename(rel)) for files in listing.values() for rel, _ in files
    )
    if unpacked_copy:  # restore the official order the unpack script encoded in the file names
        listing = {s: sorted(files, key=lambda f: int(os.path.basename(f[0])[:5])) for s, files in listing.items()}

    blobs, digests, keys = {}, [], hashlib.sha256()
    for split, files in listing.items():
        blobs[split] = []
        for rel, label in files:
            with open(os.path.join(root, rel), "rb") as f:
                blobs[split].append(f.read())
            digests.append(hashlib.sha256(blobs[split][-1]).hexdigest())
            keys.update(f"{rel}\t{label}\t{digests[-1]}\n".encode())
    source = keys.hexdigest()
    same_files_as_copy = hashlib.sha256("".join(sorted(digests)).encode()).hexdigest() == JPEG_COPY_FILES_DIGEST

    basename = root.resolve().name
    cache = _cache_file(cache_dir, root, f"folder-{basename}", source)
    arrays = _read_cache(cache, source)
    if arrays is None:
        arrays = {"class_names": np.asarray(class_names)}
        for split, files in listing.items():
            names = [os.path.join(root, rel) for rel, _ in files]
            arrays[f"{split}_images"] = _decode_images(blobs[split], names)
            arrays[f"{split}_labels"] = np.asarray([label for _, label in files], dtype=np.int64)
        _write_cache(cache, source, arrays)
    if same_files_as_copy:  # the copy's files under its unpack script's names, or under any others
        return _dataset_from_arrays("folder", arrays, JPEG_COPY_ID, JPEG_COPY_LABEL)
    return _dataset_from_arrays("folder", arrays, f"folder:{basename}", f"image folder {basename}")


# The checks below are the one layout check of both folder loaders (`folder`, `imagenet-folder`): a
# layout problem is a DataFormatError or DataNotFoundError saying what is wrong and what to do, and a
# hidden folder or file (a name starting with ".", e.g. .ipynb_checkpoints) is never a class or an image.


def _split_dirs(root: Path, what: str, hint: str) -> tuple[Path, Path]:
    """<root>/train and <root>/test (or <root>/val)."""
    layout = f"expected {root}/train/<class>/* and {root}/test/<class>/* (or val/)"
    if not root.is_dir():
        raise DataNotFoundError(f"{what} {root} does not exist: {layout}; {hint}")
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataFormatError(f"{root} has no train/ and test/ (or val/) folders: {layout}")
    return train_dir, test_dir


def _class_dirs(train_dir: Path) -> list[str]:
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataFormatError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image>")
    return classes


def _is_image(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(IMG_EXTENSIONS) and not entry.name.startswith(".") and entry.is_file()


def _image_files(split_dir: Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """(path relative to the root, label) of every image of a split, class by class, files sorted by name.

    ``class_names`` are the train split's; labels index them. Images must lie directly in
    ``<split>/<class>/``. Raises DataFormatError if the split has a class folder the train split lacks,
    or no image in its class folders (with how to sort them when they lie in the split folder itself).
    """
    extra = sorted(
        d.name for d in os.scandir(split_dir)
        if d.is_dir() and not d.name.startswith(".") and d.name not in class_names
    )
    if extra:
        raise DataFormatError(f"{split_dir} has class folders {extra} that the train split does not have")
    files = []
    for label, cls in enumerate(class_names):
        cls_dir = split_dir / cls
        if cls_dir.is_dir():
            names = sorted(e.name for e in os.scandir(cls_dir) if _is_image(e))
            files += [(f"{split_dir.name}/{cls}/{name}", label) for name in names]
    if files:
        return files
    loose = sum(_is_image(e) for e in os.scandir(split_dir))
    if loose:
        raise DataFormatError(
            f"{split_dir} holds {loose} images directly, not in class folders: move each into "
            f"{split_dir}/<class>/ (the train split's class names); ILSVRC's original validation images "
            "are flat like this: sort them into val/<wnid>/ with the devkit's ground truth (e.g. the "
            "well-known valprep.sh), or point --data-root at a folder laid out as val/<class>/*"
        )
    raise DataFormatError(f"{split_dir} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")


def _dataset_from_arrays(name: str, arrays: dict, dataset_id: str, label: str) -> ArrayDataset:
    parts = [arrays[k] for k in ("train_images", "train_labels", "test_images", "test_labels")]
    return ArrayDataset(
        name, *parts, tuple(str(c) for c in arrays["class_names"]), dataset_id, label, str(arrays["fingerprint"])
    )


# --- JPEG/PNG decoding, once, on all cores --------------------------------------------------------------


def _decode_rgb(blob: bytes, name: str) -> np.ndarray:
    """One encoded image as uint8 (H, W, 3) RGB, any size."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataFormatError(f"{name} is not a readable image ({err}): remove or replace it") from err


def _decode_one(blob: bytes, name: str) -> np.ndarray:
    image = _decode_rgb(blob, name)
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        height, width = image.shape[:2]
        raise DataFormatError(
            f"{name} is {width}x{height}, expected {IMAGE_SIZE}x{IMAGE_SIZE} RGB: the array datasets are "
            "CIFAR-sized; use dataset 'imagenet-folder' for larger images"
        )
    return image


def _decode_chunk(blobs: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
    out = np.empty((len(blobs), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (blob, name) in enumerate(zip(blobs, names)):
        out[i] = _decode_one(blob, name)
    return out


def _decode_images(blobs: Sequence[bytes], names: Sequence[str], workers: int | None = None) -> np.ndarray:
    """Decode encoded images into uint8 (N, 32, 32, 3), in worker processes when that pays off."""
    return np.concatenate(_decode_in_chunks(_decode_chunk, blobs, names, workers))


def _decode_in_chunks(decode_chunk, blobs: Sequence[bytes], names: Sequence[str], workers: int | None = None) -> list:
    """``decode_chunk(blobs, names)`` over consecutive chunks, in forked worker processes when that pays off
    (up to 8, from ``_PARALLEL_DECODE_MIN`` images on); the chunks' results in order."""
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cores, 8) if len(blobs) >= _PARALLEL_DECODE_MIN else 0
    # Forked workers inherit the interpreter (no re-import of torch); only where fork is safe and available.
    if workers < 2 or not sys.platform.startswith("linux"):
        return [decode_chunk(blobs, names)]
    step = math.ceil(len(blobs) / (4 * workers))
    chunks = [(blobs[i:i + step], names[i:i + step]) for i in range(0, len(blobs), step)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(decode_chunk, *zip(*chunks)))


# --- cache ----------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_file(cache_dir, root_dir: Path, stem: str, source: str) -> Path:
    if cache_dir is None:
        local = root_dir / ".ranlib-cache"
        cache_dir = local if _writable(local if local.is_dir() else root_dir) else user_cache_dir()
    return Path(cache_dir).expanduser() / f"{stem}-{source[:16]}.npz"


def _writable(folder: Path) -> bool:
    """Writable by us and meant to be: root may write into a folder laid out read-only (a shared
    data set), which must stay as it was."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _read_cache(path: Path, source: str) -> dict | None:
    """The cached arrays (with their fingerprint) if the cache holds this exact source, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if int(cached["version"]) != _CACHE_VERSION or str(cached["source"]) != source:
                return None
            return {k: cached[k] for k in cached.files}
    except NPZ_DAMAGE as err:  # a damaged cache is decoded again and rewritten
        warnings.warn(f"ignoring unreadable cache {path} ({type(err).__name__}: {err}); decoding again", stacklevel=3)
        return None


def _write_cache(path: Path, source: str, arrays: dict) -> None:
    """Adds the fingerprint to ``arrays`` and writes them atomically; a failed write only costs a re-decode."""
    arrays["fingerprint"] = np.asarray(
        fingerprint(*(arrays[k] for k in ("train_images", "train_labels", "test_images", "test_labels")))
    )
    try:
        with atomic_write(path) as f:
            np.savez(f, version=np.asarray(_CACHE_VERSION), source=np.asarray(source), **arrays)
    except OSError as err:
        warnings.warn(f"could not write the decode cache {path} ({err}); the data will be decoded again next time",
                      stacklevel=3)


# ----------------------------------------------------------------------------------------------------------
# GPU-resident batches for 32x32 data (airbench style)
# ----------------------------------------------------------------------------------------------------------


def pixel_mean(images) -> torch.Tensor:
    """Per-pixel mean image (H, W, C), float32 in [0, 1] units, of uint8 NHWC images (Section 4.1)."""
    images = torch.as_tensor(images)
    return (images.sum(0, dtype=torch.float64) / (255.0 * images.shape[0])).to(torch.float32)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one epoch: batches depend on (seed, epoch) only."""
    words = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class GpuBatches:
    """Batches of a whole uint8 image set that lives on ``device``; augmentation runs there in whole batches.

    Training batches (Section 4.1): zero-pad 4 pixels, take a random 32x32 crop, flip horizontally with
    probability 1/2 per sample; the crop and the flip are one gather. Evaluation batches: the plain images in
    order, every sample kept (``drop_last`` defaults to ``train``).

    Normalisation: ``x = (pixels / 255 - mean) / std``. The paper only says "per-pixel mean subtracted",
    so ``mean`` defaults to the per-pixel mean image of the training images given here (an (H, W, C) image
    or a per-channel (C,) vector in [0, 1] units) and ``std`` to 1 (no scaling); a per-channel ``std`` may be
    given. Evaluation batches must be given the training set's ``mean`` (``mean=train_batches.mean``).

    The order, crop offsets and flips of an epoch come from a ``torch.Generator`` on ``device`` seeded by
    (seed, epoch), so they are reproducible on the same kind of device; ``state_dict()`` holds the epoch
    and the position inside it, and a run that loads it sees exactly the batches it would have seen.
    Evaluation batches keep no position: every pass over them starts at the first sample and covers all.
    """

    def __init__(
        self,
        images_uint8,
        labels,
        *,
        batch_size: int,
        train: bool,
        device="cpu",
        mean=None,
        std=None,
        channels_last: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
        dtype: torch.dtype = torch.float32,
        pad: int = 4,
    ):
        images = torch.as_tensor(images_uint8)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataFormatError(
                f"GpuBatches needs uint8 NHWC images (N, H, W, C), got {images.dtype} {tuple(images.shape)}"
            )
        labels = torch.as_tensor(labels)
        if labels.shape != images.shape[:1]:
            raise DataFormatError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()  # NHWC: a crop + flip gather yields channels_last
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.channels_last = channels_last
        self.seed = int(seed)
        self.dtype = dtype
        self.pad = int(pad)
        if mean is None:
            if not self.train:
                raise ConfigError(
                    "evaluation batches need the training set's per-pixel mean: pass mean=train_batches.mean"
                )
            mean = pixel_mean(self.images)
        self.mean = self._channel_broadcast(mean, "mean")
        self.std = None if std is None else self._channel_broadcast(std, "std")
        if len(self) == 0:
            raise ConfigError(
                f"batch_size {self.batch_size} with drop_last leaves no batch of {len(self.labels)} samples"
            )
        self.epoch = 0
        self.position = 0  # batches of `epoch` already handed out

    def _channel_broadcast(self, value, what: str) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=torch.float32).to(self.device)
        try:
            torch.broadcast_shapes(value.shape, self.images.shape[1:])
        except RuntimeError:
            raise ConfigError(
                f"{what} of shape {tuple(value.shape)} does not fit images of shape (H, W, C) = "
                f"{tuple(self.images.shape[1:])}: give an (H, W, C) image or a per-channel (C,) vector"
            ) from None
        return value

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order (N,), crop offsets (N, 2) = top, left in the padded image, flips (N,) bool) of one epoch.

        Offsets and flips are indexed by position in the epoch, not by sample id.
        """
        n, dev = self.num_samples, self.device
        if not self.train:
            offsets = torch.full((n, 2), self.pad, dtype=torch.int64, device=dev)
            return torch.arange(n, device=dev), offsets, torch.zeros(n, dtype=torch.bool, device=dev)
        generator = torch.Generator(device=dev)
        generator.manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=generator, device=dev)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator, device=dev)
        flips = torch.rand(n, generator=generator, device=dev) < 0.5
        return order, offsets, flips

    def epoch_iter(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... of ``epoch``; training batches' state advances as each is handed out."""
        order, *plan = self.epoch_plan(epoch)
        count = len(self)
        for k in range(start, count):
            window = slice(k * self.batch_size, (k + 1) * self.batch_size)
            index = order[window]
            pixels = self._batch_pixels(index, *(p[window] for p in plan))
            if self.train:
                self.epoch, self.position = (epoch, k + 1) if k + 1 < count else (epoch + 1, 0)
            yield self._normalise(pixels), self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches: the rest of the current epoch. Evaluation batches: all of them, from the first."""
        return self.epoch_iter(self.epoch, self.position)

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches across epochs without end, from the current state (for iteration-based schedules)."""
        while True:
            yield from self.epoch_iter(self.epoch, self.position)

    def _batch_pixels(self, index: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """NHWC pixels of one batch (``index`` into the set; the epoch plan's entries for its positions)."""
        pixels = self.images[index]
        return self._crop_and_flip(pixels, offsets, flips) if self.train else pixels

    def _crop_and_flip(self, pixels: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        p = self.pad
        padded = F.pad(pixels, (0, 0, p, p, p, p))  # zero pad H and W of NHWC
        _, height, width, _ = pixels.shape
        rows = offsets[:, :1] + torch.arange(height, device=self.device)  # (B, H)
        cols = torch.arange(width, device=self.device).expand(len(pixels), width)
        cols = offsets[:, 1:] + torch.where(flips[:, None], width - 1 - cols, cols)  # (B, W)
        batch = torch.arange(len(pixels), device=self.device)[:, None, None]
        return padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32).div_(255.0).sub_(self.mean)
        if self.std is not None:
            x = x.div_(self.std)
        x = x.permute(0, 3, 1, 2).to(self.dtype)  # NCHW view of NHWC memory = channels_last
        return x if self.channels_last else x.contiguous()

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "train": self.train,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        mismatched = [k for k in ("seed", "num_samples", "batch_size", "train") if state.get(k) != mine[k]]
        if mismatched:
            raise CheckpointError(
                "the saved data position belongs to different data: "
                + ", ".join(f"{k} saved {state.get(k)!r} vs now {mine[k]!r}" for k in mismatched)
                + "; resume with the same dataset, seed and batch size"
            )
        if not 0 <= int(state["position"]) < len(self):
            raise CheckpointError(f"saved data position {state['position']} is outside an epoch of {len(self)} batches")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ----------------------------------------------------------------------------------------------------------
# ImageNet-style folders (ImageNet, Imagenette, Imagewoof): DataLoaders with transforms v2
# ----------------------------------------------------------------------------------------------------------

# Principal components of ImageNet RGB pixels in [0, 1] (AlexNet's colour augmentation, values as in
# fb.resnet.torch); columns of the eigenvector matrix are the components.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PCALighting(v2.Transform):
    """AlexNet-style PCA lighting noise: adds ``eigvec @ (alpha * eigval)``, alpha ~ N(0, alphastd^2) drawn
    once per image, to every pixel of a float RGB image in [0, 1]."""

    _transformed_types = (tv_tensors.Image, lambda x: type(x) is torch.Tensor)

    def __init__(self, alphastd: float = 0.1, eigval=IMAGENET_PCA_EIGVAL, eigvec=IMAGENET_PCA_EIGVEC):
        super().__init__()
        self.alphastd = float(alphastd)
        self.eigval = torch.as_tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.as_tensor(eigvec, dtype=torch.float32)

    def make_params(self, flat_inputs):
        return {"alpha": torch.randn(3) * self.alphastd}

    def transform(self, inpt, params):
        if not inpt.is_floating_point() or inpt.ndim < 3 or inpt.shape[-3] != 3:
            raise TypeError("PCALighting needs a float RGB image (C=3) in [0, 1]: put it after ToDtype(float32)")
        shift = self.eigvec @ (params["alpha"] * self.eigval)
        out = inpt.as_subclass(torch.Tensor) + shift.to(inpt.dtype).view(3, 1, 1)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def _load_image(path: str) -> Image.Image:
    """One image file as RGB (ImageFolder's loader), or a DataFormatError line naming the file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")  # convert decodes: a corrupt file fails here
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataFormatError(f"{path} is not a readable image ({err}): remove it or replace it with an intact "
                              "copy") from None


# How a complete file of each format ends (JPEG's end-of-image marker, PNG's IEND chunk), looked for
# in its last bytes: a truncated image is found before training, without decoding every file.
_ENDINGS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 4096  # trailing bytes a complete file may carry after its end marker


def check_complete(paths: Sequence[str | os.PathLike]) -> None:
    """Raise one DataFormatError line naming the first JPEG or PNG file that ends before its end
    marker (a truncated copy); other formats are checked when they are decoded."""
    for path in paths:
        ending = _ENDINGS.get(os.path.splitext(str(path))[1].lower())
        if ending is None:
            continue
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            if ending not in f.read():
                raise DataFormatError(f"{path} is truncated (no end marker in its last {_TAIL_BYTES} bytes): "
                                      "replace it with an intact copy or remove it")


class _CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder over one split as ``_image_files`` lists it: the train split's classes,
    hidden folders and files skipped, every layout problem a one-line DataFormatError."""

    def __init__(self, split_dir: Path, class_names: Sequence[str], transform):
        self._class_names = list(class_names)  # find_classes runs inside ImageFolder.__init__
        super().__init__(str(split_dir), transform=transform, loader=_load_image)

    def find_classes(self, directory):
        return self._class_names, {name: i for i, name in enumerate(self._class_names)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        root = Path(directory).parent
        return [(str(root / rel), label) for rel, label in _image_files(Path(directory), list(class_to_idx))]


class ImageNetLoaders:
    """Train and test DataLoaders for an ImageNet-style tree ``<root>/train/<class>/*``, ``<root>/val|test/<class>/*``.

    Train: RandomResizedCrop(train_size) (scale and aspect-ratio augmentation), horizontal flip, PCA lighting
    (alphastd 0.1), per-channel ImageNet normalisation (the paper does not give its ImageNet normalisation).
    Test: the paper's single crop: resize the short side to round(test_size * 256 / 224), center crop test_size.
    ``train, test = ImageNetLoaders(...)`` unpacks into the two loaders.

    The layout is checked as for the ``folder`` dataset (hidden folders are not classes; labels index
    the train split's classes): DataNotFoundError if ``root`` does not exist, DataFormatError for any
    other layout problem (no train/ or val/, no class folders, a flat val/ of images, ...) and for a
    truncated JPEG or PNG (:func:`check_complete`); an image that fails to decode later is a
    DataFormatError naming its file.
    """

    def __init__(
        self,
        root,
        *,
        batch_size: int,
        workers: int = 8,
        train_size: int = 224,
        test_size: int = 224,
        test_batch_size: int | None = None,
        lighting_std: float = 0.1,
        seed: int = 0,
        pin_memory: bool | None = None,
        distributed: bool = False,
    ):
        self.root = Path(root).expanduser()
        train_dir, test_dir = _split_dirs(
            self.root, "ImageNet-style folder", "prepare ImageNet, Imagenette or Imagewoof with val/ in class folders"
        )
        normalise = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        self.train_transform = v2.Compose([
            v2.RandomResizedCrop(train_size, antialias=True),
            v2.RandomHorizontalFlip(),
            *normalise,
            PCALighting(lighting_std),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self.test_transform = v2.Compose([
            v2.Resize(round(test_size * 256 / 224), antialias=True),
            v2.CenterCrop(test_size),
            *normalise,
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        class_names = _class_dirs(train_dir)
        self.train_set = _CheckedImageFolder(train_dir, class_names, self.train_transform)
        self.test_set = _CheckedImageFolder(test_dir, class_names, self.test_transform)
        self.class_names = tuple(self.train_set.classes)
        check_complete([path for images in (self.train_set, self.test_set) for path, _ in images.samples])
        self.dataset_id = f"imagenet-folder:{self.root.resolve().name}"
        self.label = f"image folder {self.root.resolve().name}"
        self.fingerprint = self._file_list_fingerprint()

        pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
        generator = torch.Generator().manual_seed(int(seed))
        train_sampler = DistributedSampler(self.train_set, seed=int(seed)) if distributed else None
        test_sampler = DistributedSampler(self.test_set, shuffle=False) if distributed else None
        self.train = DataLoader(
            self.train_set, batch_size=batch_size, shuffle=train_sampler is None, sampler=train_sampler,
            drop_last=True, generator=generator, **common,
        )
        self.test = DataLoader(
            self.test_set, batch_size=test_batch_size or batch_size, shuffle=False, sampler=test_sampler,
            drop_last=False, **common,
        )

    def _file_list_fingerprint(self) -> str:
        """sha256 over the sorted (relative path, size in bytes, label) of every image: not the pixels."""
        digest = hashlib.sha256()
        entries = []
        for dataset in (self.train_set, self.test_set):
            for path, label in dataset.samples:
                entries.append((Path(path).relative_to(self.root).as_posix(), os.path.getsize(path), label))
        for rel, size, label in sorted(entries):
            digest.update(f"{rel}\t{size}\t{label}\n".encode())
        return digest.hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle a distributed train sampler for ``epoch`` (a no-op without one)."""
        if hasattr(self.train.sampler, "set_epoch"):
            self.train.sampler.set_epoch(epoch)

    def to_dict(self) -> dict:
        return {
            "name": "imagenet-folder",
            "id": self.dataset_id,
            "label": self.label,
            "fingerprint": self.fingerprint,
            "num_train": len(self.train_set),
            "num_test": len(self.test_set),
        }

    def __iter__(self):
        return iter((self.train, self.test))
