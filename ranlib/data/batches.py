"""GPU-resident batches for 32x32 data (airbench style): the whole uint8 image set lives on the device,
and augmentation (random crop of the zero-padded image, horizontal flip) and normalisation run there on
whole batches.

:class:`GpuBatches` draws an epoch's order, crops and flips from a generator seeded by (seed, epoch)
(:func:`epoch_seed`) and keeps its position inside the epoch, so a resumed run sees exactly the batches
it would have seen; :func:`pixel_mean` is the per-pixel mean image it subtracts by default.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ranlib.errors import CheckpointError, ConfigError, DataFormatError


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
