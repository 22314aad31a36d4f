"""32x32 datasets as uint8 arrays: torchvision's CIFAR-10 and CIFAR-100, the JPEG copy of CIFAR-10's npz,
and image folders (``<root>/train/<class>/*``, ``<root>/test|val/<class>/*``), each loaded as an
:class:`ArrayDataset`; the folder layout check here is also the one ``ranlib.data.folders`` uses.

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
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from ranlib.errors import ConfigError, DataFormatError, DataNotFoundError, UnknownNameError

from . import decode  # decode.decode_images is looked up when called: tests replace it there
from .decode import IMAGE_SIZE, cache_file, fingerprint, npz_blobs, read_cache, read_npz, sha256_file, write_cache

DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder", "imagenet-folder", "imagewoof")
ARRAY_DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder")

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
    fingerprint: str  # sha256 hex of decoded pixels + labels, train then test (see `decode.fingerprint`)

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
    cache = cache_file(cache_dir, path.parent, "cifar10-jpeg", source)
    arrays = read_cache(cache, source)
    if arrays is None:
        arrays = _decode_npz(path)
        write_cache(cache, source, arrays)
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
        blobs, labels = npz_blobs(pack, path, split, len(class_names))
        arrays[f"{split}_images"] = decode.decode_images(blobs, [f"{path.name}:{split}[{i}]" for i in range(len(blobs))])
        arrays[f"{split}_labels"] = labels
    return arrays


def _load_folder(root: Path, cache_dir) -> ArrayDataset:
    train_dir, test_dir = split_dirs(
        root, "image folder", "the JPEG copy unpacks to this layout: ../shared/data/cifar10-jpeg/unpack DEST"
    )
    class_names = class_dirs(train_dir)
    listing = {"train": image_files(train_dir, class_names), "test": image_files(test_dir, class_names)}
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
    cache = cache_file(cache_dir, root, f"folder-{basename}", source)
    arrays = read_cache(cache, source)
    if arrays is None:
        arrays = {"class_names": np.asarray(class_names)}
        for split, files in listing.items():
            names = [os.path.join(root, rel) for rel, _ in files]
            arrays[f"{split}_images"] = decode.decode_images(blobs[split], names)
            arrays[f"{split}_labels"] = np.asarray([label for _, label in files], dtype=np.int64)
        write_cache(cache, source, arrays)
    if same_files_as_copy:  # the copy's files under its unpack script's names, or under any others
        return _dataset_from_arrays("folder", arrays, JPEG_COPY_ID, JPEG_COPY_LABEL)
    return _dataset_from_arrays("folder", arrays, f"folder:{basename}", f"image folder {basename}")


# The checks below are the one layout check of both folder loaders (`folder`, `imagenet-folder`): a
# layout problem is a DataFormatError or DataNotFoundError saying what is wrong and what to do, and a
# hidden folder or file (a name starting with ".", e.g. .ipynb_checkpoints) is never a class or an image.


def split_dirs(root: Path, what: str, hint: str) -> tuple[Path, Path]:
    """<root>/train and <root>/test (or <root>/val)."""
    layout = f"expected {root}/train/<class>/* and {root}/test/<class>/* (or val/)"
    if not root.is_dir():
        raise DataNotFoundError(f"{what} {root} does not exist: {layout}; {hint}")
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataFormatError(f"{root} has no train/ and test/ (or val/) folders: {layout}")
    return train_dir, test_dir


def class_dirs(train_dir: Path) -> list[str]:
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataFormatError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image>")
    return classes


def _is_image(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(IMG_EXTENSIONS) and not entry.name.startswith(".") and entry.is_file()


def image_files(split_dir: Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
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
