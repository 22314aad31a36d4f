"""Small fake datasets in the real layouts, made by the tests themselves."""

import io

import numpy as np
from PIL import Image

from ranlib.data.cifar import CIFAR10_CLASSES


def random_images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def encode(image, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
    return buf.getvalue()


def pack_npz(path, blobs, labels, class_names=CIFAR10_CLASSES):
    """An npz in the layout of ../shared/data/cifar10-jpeg (README), from per-split blobs and labels."""
    arrays = {"class_names": np.asarray(class_names)}
    for split in ("train", "test"):
        sizes = [len(b) for b in blobs[split]]
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs[split]), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays[f"{split}_labels"] = np.asarray(labels[split], dtype=np.uint8)
    np.savez(path, **arrays)
    return path
