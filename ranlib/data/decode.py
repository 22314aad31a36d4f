"""From encoded images to uint8 arrays, once: reading an ``.npz`` of encoded images, decoding them on
all cores, and the decode cache.

A JPEG or PNG source (the CIFAR-10 JPEG copy's npz, an image folder, Imagewoof's npz) is decoded once,
in forked worker processes when there are enough images to pay for them; the decoded arrays, with their
content fingerprint (:func:`fingerprint`), are cached as ``.npz`` keyed by the source's digest, in
``<root>/.ranlib-cache`` when that is writable, else in the user's cache folder. A damaged ``.npz``
(the source or the cache) is one :class:`DataFormatError` line naming it, or, for the cache, a warning
and a fresh decode.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import sys
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ranlib.errors import DataFormatError
from ranlib.files import atomic_write
from ranlib.paths import cache_dir as user_cache_dir

IMAGE_SIZE = 32
_CACHE_VERSION = 1
_PARALLEL_DECODE_MIN = 4096  # below this, starting worker processes costs more than it saves


# --- npz files of encoded images ---------------------------------------------------------------------


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


def npz_blobs(pack, path: Path, split: str, num_classes: int) -> tuple[list[bytes], np.ndarray]:
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


# --- JPEG/PNG decoding, once, on all cores --------------------------------------------------------------


def decode_rgb(blob: bytes, name: str) -> np.ndarray:
    """One encoded image as uint8 (H, W, 3) RGB, any size."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataFormatError(f"{name} is not a readable image ({err}): remove or replace it") from err


def _decode_one(blob: bytes, name: str) -> np.ndarray:
    image = decode_rgb(blob, name)
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


def decode_images(blobs: Sequence[bytes], names: Sequence[str], workers: int | None = None) -> np.ndarray:
    """Decode encoded images into uint8 (N, 32, 32, 3), in worker processes when that pays off."""
    return np.concatenate(decode_in_chunks(_decode_chunk, blobs, names, workers))


def decode_in_chunks(decode_chunk, blobs: Sequence[bytes], names: Sequence[str], workers: int | None = None) -> list:
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


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_file(cache_dir, root_dir: Path, stem: str, source: str) -> Path:
    if cache_dir is None:
        local = root_dir / ".ranlib-cache"
        cache_dir = local if _writable(local if local.is_dir() else root_dir) else user_cache_dir()
    return Path(cache_dir).expanduser() / f"{stem}-{source[:16]}.npz"


def _writable(folder: Path) -> bool:
    """Writable by us and meant to be: root may write into a folder laid out read-only (a shared
    data set), which must stay as it was."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def read_cache(path: Path, source: str) -> dict | None:
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


def write_cache(path: Path, source: str, arrays: dict) -> None:
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
