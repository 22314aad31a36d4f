"""ImageNet-style folders (ImageNet, Imagenette, Imagewoof) as train and test DataLoaders with
torchvision transforms v2: :class:`ImageNetLoaders`, AlexNet's PCA lighting (:class:`PCALighting`), the
ImageNet normalisation, and :func:`check_complete`, which finds a truncated JPEG or PNG before training.

The folder layout is checked as for the ``folder`` array dataset (``ranlib.data.cifar``'s
``split_dirs``, ``class_dirs`` and ``image_files``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import tv_tensors
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ranlib.errors import DataFormatError

from .cifar import class_dirs, image_files, split_dirs

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
    """torchvision's ImageFolder over one split as ``image_files`` lists it: the train split's classes,
    hidden folders and files skipped, every layout problem a one-line DataFormatError."""

    def __init__(self, split_dir: Path, class_names: Sequence[str], transform):
        self._class_names = list(class_names)  # find_classes runs inside ImageFolder.__init__
        super().__init__(str(split_dir), transform=transform, loader=_load_image)

    def find_classes(self, directory):
        return self._class_names, {name: i for i, name in enumerate(self._class_names)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        root = Path(directory).parent
        return [(str(root / rel), label) for rel, label in image_files(Path(directory), list(class_to_idx))]


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
        train_dir, test_dir = split_dirs(
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
        class_names = class_dirs(train_dir)
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
