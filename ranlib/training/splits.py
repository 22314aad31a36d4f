"""The data a training run sees: its batches, the test set, a fixed batch for analysis.

Two paths, one interface (:class:`Split`):

* 32x32 datasets (CIFAR and its JPEG copy, image folders): the whole set lives on the device as
  uint8 and is augmented there in whole batches (:class:`ranlib.data.batches.GpuBatches`). A group of
  fused members (:mod:`ranlib.models.fused`) shares one copy of the images on the device; each
  member draws its own order and augmentation from its own seed and trains on its own labels
  (its own noise level and draw), exactly the batches of its solo run.
* ImageNet-style folders: DataLoaders with workers (one member only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ranlib.errors import ConfigError, InputSizeError

from .runtime import Dist

STAGE_RESPONSE_BATCH = 64  # fixed test images (the first ones) for Figure 4's stage responses
IMAGENET_DATASETS = ("imagenet-folder",)
IMAGENET_STYLE_DATASETS = (*IMAGENET_DATASETS, "imagewoof")  # what the ImageNet networks train on


@dataclass
class Split:
    """Everything the loop needs from a dataset, for a group of K >= 1 members."""

    train: list | None  # per member: endless (x, y) batches with iter(), state_dict(), load_state_dict()
    test: Any  # re-iterable over (x, y) batches of the test set, every image once, from the first
    fixed_batch: torch.Tensor  # the first test images, for stage responses
    info: dict  # the results' "dataset" block
    num_classes: int
    noise: list[dict | None]  # per member: the label-noise statistics, None when clean
    mean: torch.Tensor | None = None  # normalisation mean (CIFAR: per-pixel mean image of the training set)
    sharded: bool = False  # batches are already this process's share (ImageNet DistributedSampler)


class _GpuStream:
    """Endless training batches from ``GpuBatches`` across epochs, with its resumable position."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self) -> Iterator:
        return self.batches.forever()

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def load_cifar_split(members: Sequence, device: torch.device, input_size: int, *,
                     train: bool = True, eval_batch_size: int | None = None,
                     mean: torch.Tensor | None = None) -> Split:
    """The 32x32 path: the whole set on ``device`` as uint8 (once for all members), augmentation
    there in whole batches.

    The data settings (dataset, subset sizes, batch size) are the first member's, which a group
    shares; each member's seed and noise level give its own batches and labels. Normalisation
    subtracts the per-pixel mean image of the training images used (Section 4.1); an evaluation
    of a checkpoint passes the ``mean`` it was trained with.
    """
    from ranlib.data.batches import GpuBatches, pixel_mean
    from ranlib.data.cifar import load_arrays
    from ranlib.data.noise import apply_label_noise

    c = members[0]
    arrays = load_arrays(c.dataset, c.data_root, download=c.download)
    train_images, train_labels = arrays.train_images, np.asarray(arrays.train_labels, dtype=np.int64)
    test_images, test_labels = arrays.test_images, np.asarray(arrays.test_labels, dtype=np.int64)
    if c.max_train_samples:
        train_images, train_labels = train_images[:c.max_train_samples], train_labels[:c.max_train_samples]
    if c.max_test_samples:
        test_images, test_labels = test_images[:c.max_test_samples], test_labels[:c.max_test_samples]
    height, width = test_images.shape[1:3]
    if (height, width) != (input_size, input_size):
        raise InputSizeError(f"dataset {c.dataset!r} has {height}x{width} images but {c.model} expects "
                             f"{input_size}x{input_size}; resize the images or pick a model for that size")
    num_classes = arrays.num_classes
    member_labels, noise = [], []
    for member in members:
        if member.noise_level > 0:
            labels, stats = apply_label_noise(train_labels, member.noise_level, member.seed, num_classes)
            member_labels.append(labels)
            noise.append(stats.to_dict())
        else:
            member_labels.append(train_labels)
            noise.append(None)
    mean = pixel_mean(train_images) if mean is None else mean
    common = dict(device=device, mean=mean, channels_last=bool(c.channels_last))
    streams = None
    if train:
        on_device = torch.as_tensor(train_images).to(device)  # one copy, shared by the members' batchers
        streams = [_GpuStream(GpuBatches(on_device, labels, batch_size=c.batch_size, train=True,
                                         drop_last=True, seed=member.seed, **common))
                   for member, labels in zip(members, member_labels)]
    test = GpuBatches(test_images, test_labels, batch_size=eval_batch_size or max(c.batch_size, 500),
                      train=False, **common)
    fixed = next(iter(GpuBatches(test_images[:STAGE_RESPONSE_BATCH], test_labels[:STAGE_RESPONSE_BATCH],
                                 batch_size=STAGE_RESPONSE_BATCH, train=False, **common)))[0]
    info = {**arrays.to_dict(), "num_train": int(len(train_labels)), "num_test": int(len(test_labels)),
            "subset": bool(c.max_train_samples or c.max_test_samples)}
    return Split(streams, test, fixed, info, num_classes, noise, mean=mean.cpu())


class EpochSampler(torch.utils.data.Sampler):
    """This process's share of one epoch's shuffled indices, from a start position.

    The order depends on (seed, epoch) only; every process takes every world_size-th index of the
    same permutation (the tail that does not divide evenly is dropped, so shares are equal), and
    a resumed run starts inside the epoch without loading the batches it had already seen.
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _share(self) -> int:
        return self.num_samples // self.world_size

    def __len__(self) -> int:
        return max(0, self._share() - self.start)

    def __iter__(self) -> Iterator[int]:
        from ranlib.data.batches import epoch_seed
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator)[:self._share() * self.world_size]
        return iter(order[self.rank::self.world_size][self.start:].tolist())


class _LoaderStream:
    """Endless batches from a DataLoader over an :class:`EpochSampler`, with a resumable (epoch, position).

    Each epoch also reseeds the loader's generator from (seed, epoch), which fixes the workers'
    augmentation seeds. A run resumed mid-epoch sees the same images in the same order; their random
    crops differ from the uninterrupted run's, since workers then take different batches.
    """

    def __init__(self, loader, seed: int, device: torch.device, channels_last: bool):
        self.loader, self.seed = loader, seed
        self.test = _OnePass(loader, device, channels_last)
        self.epoch, self.position = 0, 0

    def __iter__(self) -> Iterator:
        from ranlib.data.batches import epoch_seed
        while True:
            self.loader.generator.manual_seed(epoch_seed(self.seed, self.epoch))
            self.loader.sampler.set_epoch(self.epoch, start=self.position * self.loader.batch_size)
            for x, y in self.loader:
                self.position += 1
                yield self.test.to_device(x, y)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _loader(dataset, batch_size: int, workers: int, *, sampler=None, drop_last=False):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, generator=torch.Generator())


def load_imagenet_split(members: Sequence, device: torch.device, d: Dist, *, train: bool = True,
                        eval_batch_size: int | None = None) -> Split:
    """The ImageNet-folder path: ranlib.data.folders' datasets and transforms, DataLoaders with workers.

    Under torchrun each process loads its 1/N of the global batch (EpochSampler); the test set is
    read whole by every process and sharded in ``evaluate``.
    """
    from ranlib.data.folders import ImageNetLoaders

    if len(members) > 1:
        raise ConfigError("fused groups need a dataset that lives on the device (the 32x32 ones, imagewoof); "
                          "train ImageNet-style folders one run at a time")
    c = members[0]
    if c.noise_level > 0:
        raise ConfigError("label noise is implemented for the 32x32 datasets only (Table 5 is CIFAR-10)")
    loaders = ImageNetLoaders(c.data_root, batch_size=c.batch_size, workers=0, train_size=c.train_size,
                              test_size=c.test_size, seed=c.seed)
    train_set, test_set = loaders.train_set, loaders.test_set
    if c.max_train_samples:
        train_set = torch.utils.data.Subset(train_set, range(min(c.max_train_samples, len(train_set))))
    if c.max_test_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(c.max_test_samples, len(test_set))))
    memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
    test = _OnePass(_loader(test_set, eval_batch_size or c.batch_size, c.num_workers), device,
                    bool(c.channels_last))
    fixed = torch.stack([test_set[i][0] for i in range(min(STAGE_RESPONSE_BATCH, len(test_set)))])
    train_stream = None
    if train:
        sampler = EpochSampler(len(train_set), c.seed, d.rank, d.world_size)
        train_loader = _loader(train_set, c.batch_size // d.world_size, c.num_workers, sampler=sampler,
                               drop_last=True)
        train_stream = _LoaderStream(train_loader, c.seed, device, bool(c.channels_last))
    info = {**loaders.to_dict(), "num_train": len(train_set), "num_test": len(test_set),
            "subset": bool(c.max_train_samples or c.max_test_samples)}
    return Split(None if train_stream is None else [train_stream], test,
                 fixed.to(device, memory_format=memory_format), info, loaders.num_classes, [None], sharded=True)


class _OnePass:
    """One pass over a DataLoader (the test set), batches moved to ``device``."""

    def __init__(self, loader, device: torch.device, channels_last: bool):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def to_device(self, x, y):
        return (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                y.to(self.device, non_blocking=True))

    def __iter__(self):
        for x, y in self.loader:
            yield self.to_device(x, y)


def load_imagewoof(members: Sequence, device: torch.device, *, train: bool = True,
                   eval_batch_size: int | None = None) -> Split:
    """Imagewoof on the device (:mod:`ranlib.data.imagewoof`), one augmented stream per member."""
    from ranlib.data.imagewoof import load_imagewoof_split

    c = members[0]
    if any(m.noise_level > 0 for m in members):
        raise ConfigError("label noise is implemented for the 32x32 datasets only (Table 5 is CIFAR-10)")
    woof = load_imagewoof_split(c.data_root, device=device, input_size=c.train_size, test_size=c.test_size,
                                batch_size=c.batch_size, seeds=[m.seed for m in members],
                                channels_last=bool(c.channels_last), max_train_samples=c.max_train_samples,
                                max_test_samples=c.max_test_samples, eval_batch_size=eval_batch_size, train=train)
    streams = None if woof.train is None else [_GpuStream(batches) for batches in woof.train]
    return Split(streams, woof.test, woof.fixed_batch, woof.info, woof.num_classes, [None] * len(members))


def load_split(members: Sequence, device: torch.device, input_size: int, d: Dist, **kwargs) -> Split:
    """The :class:`Split` of a group of members (one or more) sharing a dataset."""
    if members[0].dataset not in IMAGENET_STYLE_DATASETS:
        return load_cifar_split(members, device, input_size, **kwargs)
    kwargs.pop("mean", None)  # ImageNet-style data: a fixed per-channel normalisation, not the training mean
    if members[0].dataset == "imagewoof":
        return load_imagewoof(members, device, **kwargs)
    return load_imagenet_split(members, device, d, **kwargs)
