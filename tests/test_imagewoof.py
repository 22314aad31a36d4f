"""Imagewoof at 112 px: a few real images per class through the loader, the GPU-style batches on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import ranlib
from ranlib.data import cifar as data
from ranlib.data import decode, imagewoof
from ranlib.data.folders import IMAGENET_MEAN, IMAGENET_STD
from ranlib.data.imagewoof import RandomResizedCropBatches, load_imagewoof, load_imagewoof_split
from ranlib.errors import ConfigError, DataFormatError, DataNotFoundError, RanlibError, print_error

REAL_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagewoof" / imagewoof.NPZ_NAME
PER_CLASS = {"train": 3, "val": 2}


@pytest.fixture(scope="module")
def woof_root(tmp_path_factory):
    """An npz in the real layout holding the first images of each class of the real file, plus its first
    two portrait images and two images wider than 10:7 per split (decoding only those)."""
    if not REAL_NPZ.is_file():
        pytest.skip(f"the shared Imagewoof file is not on this machine ({REAL_NPZ})")
    root = tmp_path_factory.mktemp("woof")
    arrays = {}
    with np.load(REAL_NPZ) as pack:
        for key in ("class_names", "class_wnids", "source", "transform"):
            arrays[key] = pack[key]
        for split, per_class in PER_CLASS.items():
            buf, offsets, labels = pack[f"{split}_jpeg"], pack[f"{split}_offsets"], pack[f"{split}_labels"]
            blobs = [buf[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(labels))]
            shapes = np.array([_jpeg_size(b) for b in blobs[:600]])  # (width, height) of the first class
            keep = [i for c in range(10) for i in np.flatnonzero(labels == c)[:per_class]]
            keep += list(np.flatnonzero(shapes[:, 1] > shapes[:, 0])[:2])  # portrait
            keep += list(np.flatnonzero(shapes[:, 0] > 1.43 * shapes[:, 1])[:2])  # longer side capped at 160
            keep = sorted(set(int(i) for i in keep))
            chosen = [blobs[i] for i in keep]
            arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(chosen), dtype=np.uint8)
            arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in chosen])]).astype(np.int64)
            arrays[f"{split}_labels"] = labels[keep]
            arrays[f"{split}_files"] = pack[f"{split}_files"][keep]
    np.savez(root / imagewoof.NPZ_NAME, **arrays)
    return root


def _jpeg_size(blob: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image
    with Image.open(BytesIO(blob)) as image:
        return image.size


@pytest.fixture(scope="module")
def woof(woof_root, tmp_path_factory):
    return load_imagewoof(woof_root, cache_dir=tmp_path_factory.mktemp("cache"))


def original(images: np.ndarray, sizes: np.ndarray, i: int) -> np.ndarray:
    """Image ``i`` as decoded, uint8 (H, W, 3), out of its canvas."""
    height, width = sizes[i]
    if height > width:
        return np.ascontiguousarray(images[i, :width, :height].transpose(1, 0, 2))
    return images[i, :height, :width]


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: NCHW float -> NHWC float in pixel units."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (x.permute(0, 2, 3, 1).double() * std + mean) * 255


def test_real_slice_loads_with_its_label_classes_sizes_and_fingerprint(woof, woof_root, tmp_path, monkeypatch):
    assert woof.label == "Imagewoof (10 ImageNet dog classes, 112 px)" and woof.dataset_id == "imagewoof2-112"
    assert woof.class_names[:3] == ("Shih-Tzu", "Rhodesian ridgeback", "beagle") and woof.num_classes == 10
    assert woof.class_wnids[0] == "n02086240"
    assert woof.train_images.shape[1:] == (112, 160, 3) and woof.train_images.dtype == np.uint8
    assert np.bincount(woof.test_labels, minlength=10).min() >= PER_CLASS["val"]
    portrait = woof.train_sizes[:, 0] > woof.train_sizes[:, 1]
    assert portrait.any() and (woof.train_sizes.max(1) == 160).any()  # both kinds of stored image are in
    assert (woof.train_sizes.min(1) <= 112).all() and (woof.train_sizes.max(1) <= 160).all()
    with np.load(woof_root / imagewoof.NPZ_NAME) as pack:  # pixels out of the canvas = a plain decode
        first_portrait = int(np.flatnonzero(portrait)[0])
        offsets = pack["train_offsets"]
        blob = pack["train_jpeg"][offsets[first_portrait]:offsets[first_portrait + 1]].tobytes()
    np.testing.assert_array_equal(original(woof.train_images, woof.train_sizes, first_portrait),
                                  decode.decode_rgb(blob, "x"))
    assert woof.to_dict() == {"name": "imagewoof", "id": "imagewoof2-112", "label": woof.label,
                              "fingerprint": woof.fingerprint, "num_train": len(woof.train_labels),
                              "num_test": len(woof.test_labels)}
    assert len(woof.fingerprint) == 64
    # A second load reads the cache (no decoding) and gives the same fingerprint.
    cache = tmp_path / "cache"
    first = load_imagewoof(woof_root / imagewoof.NPZ_NAME, cache_dir=cache)
    monkeypatch.setattr(imagewoof, "_decode", lambda path: pytest.fail("decoded a cached file"))
    assert load_imagewoof(woof_root, cache_dir=cache).fingerprint == first.fingerprint == woof.fingerprint


def _train_batches(woof, **kwargs):
    options = dict(input_size=48, batch_size=8, seed=5) | kwargs
    return RandomResizedCropBatches(woof.train_images, woof.train_sizes, woof.train_labels, **options)


def test_training_batches_shapes_dtype_and_channels_last(woof):
    batches = _train_batches(woof, channels_last=True)
    assert len(batches) == len(woof.train_labels) // 8  # the partial batch is dropped
    x, y = next(iter(batches))
    assert x.shape == (8, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert -3 < x.mean() < 3 and x.std() > 0.3  # normalised pixels
    x, _ = next(iter(_train_batches(woof, channels_last=False)))
    assert x.is_contiguous()


def test_same_seed_same_batches_and_a_resumed_state_gives_the_following_ones(woof):
    run = _train_batches(woof).forever()
    seen = [next(run) for _ in range(2 * len(_train_batches(woof)) + 1)]  # past an epoch boundary
    again = _train_batches(woof).forever()
    for x, y in seen:
        x2, y2 = next(again)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(next(iter(_train_batches(woof, seed=6)))[0], seen[0][0])

    interrupted = _train_batches(woof)
    stream = interrupted.forever()
    for _ in range(len(interrupted) + 1):  # into the second epoch
        next(stream)
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 1
    resumed = _train_batches(woof)
    resumed.load_state_dict(state)
    for (x, y), (x2, y2) in zip(seen[len(interrupted) + 1:], resumed.forever()):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_training_crops_equal_torchvision_resized_crop_and_flip(woof):
    batches = _train_batches(woof, lighting_std=0.0)
    order, boxes, flips, _ = batches.epoch_plan(0)
    x, _ = next(batches.epoch_iter(0))
    for k in range(len(x)):
        image = torch.as_tensor(original(woof.train_images, woof.train_sizes, int(order[k]))).permute(2, 0, 1)
        top, left, height, width = boxes[k].tolist()
        ref = TF.resized_crop(image.double(), top, left, height, width, [48, 48], antialias=True)
        ref = (ref.flip(-1) if flips[k] else ref).permute(1, 2, 0)
        assert (to_pixels(x[k:k + 1])[0] - ref).abs().max() < 1e-3  # the same filter, float32 rounding


def test_lighting_shifts_each_crop_by_one_colour():
    canvases = np.zeros((4, 112, 160, 3), dtype=np.uint8) + 100
    sizes, labels = np.array([[112, 160]] * 4), np.arange(4)
    plain = RandomResizedCropBatches(canvases, sizes, labels, input_size=16, batch_size=4, lighting_std=0.0)
    lit = RandomResizedCropBatches(canvases, sizes, labels, input_size=16, batch_size=4)
    assert torch.allclose(to_pixels(next(iter(plain))[0]), torch.tensor(100.0, dtype=torch.float64))
    shift = to_pixels(next(iter(lit))[0]) - 100
    assert torch.allclose(shift, shift[:, :1, :1], atol=1e-3)  # constant over each image
    assert 0.05 < shift.abs().max() < 40


def test_evaluation_is_the_single_crop_of_every_image_in_order(woof_root, woof):
    split = load_imagewoof_split(woof_root, device="cpu", input_size=48, test_size=64, batch_size=4, seeds=[0],
                                 channels_last=False, eval_batch_size=7, cache_dir=woof_root / "cache")
    first = list(split.test)
    again = list(split.test)  # every pass starts from the first image
    x, y = torch.cat([b[0] for b in first]), torch.cat([b[1] for b in first])
    n = len(woof.test_labels)
    assert x.shape == (n, 3, 64, 64) and [len(b[1]) for b in first] == [7] * (n // 7) + [n % 7] * (n % 7 > 0)
    assert torch.equal(x, torch.cat([b[0] for b in again])) and y.tolist() == woof.test_labels.tolist()
    single_crop = v2.Compose([v2.Resize(round(64 * 256 / 224), antialias=True), v2.CenterCrop(64)])
    pixels = to_pixels(x)
    worst = 0.0
    for i in range(len(y)):
        image = torch.as_tensor(original(woof.test_images, woof.test_sizes, i)).permute(2, 0, 1)
        worst = max(worst, (pixels[i] - single_crop(image).permute(1, 2, 0)).abs().max().item())
    assert worst < 1 + 1e-3  # torchvision's uint8 path rounds in fixed point: at most one level apart
    assert torch.equal(split.fixed_batch, x[:64])


def test_random_resized_crop_boxes_follow_torchvision_distribution():
    sizes = torch.tensor([[112, 160], [160, 112], [112, 112], [42, 160]]).repeat(2000, 1)
    boxes = imagewoof.random_resized_crop_boxes(sizes, torch.Generator().manual_seed(0)).double()
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= sizes[:, 0]).all() and (left + width <= sizes[:, 1]).all()
    area = height * width / sizes.prod(1)
    slack = 1.04  # sides are rounded to whole pixels, as torchvision does
    assert area.min() >= 0.08 / slack and area.max() <= 1
    assert (width / height).min() >= 0.75 / slack and (width / height).max() <= 4 / 3 * slack
    torch.manual_seed(0)
    for kind in range(4):
        mine = boxes[kind::4]
        ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.empty(1, *sizes[kind].tolist()), [0.08, 1.0],
                                                            [3 / 4, 4 / 3]) for _ in range(2000)]).double()
        for stat in (lambda b: b[:, 2] * b[:, 3], lambda b: torch.log(b[:, 3] / b[:, 2])):
            # means of 2000 draws: their standard errors are under 2 % of the spread
            spread = stat(ref).std()
            assert abs(stat(mine).mean() - stat(ref).mean()) < 0.1 * spread + 1e-9


def test_split_block_subset_and_fixed_batch(woof_root, woof):
    split = load_imagewoof_split(woof_root, device="cpu", input_size=32, batch_size=4, seeds=[1, 2],
                                 channels_last=True, max_train_samples=12, max_test_samples=10,
                                 cache_dir=woof_root / "cache")
    assert split.info == {**woof.to_dict(), "num_train": 12, "num_test": 10, "subset": True}
    assert split.num_classes == 10 and [len(batches) for batches in split.train] == [3, 3]
    assert split.train[0].images is split.train[1].images  # one copy of the images for all members
    labels = torch.cat([y for _, y in split.test])
    assert labels.tolist() == list(range(10))  # one image of each breed, not ten Shih-Tzus
    assert split.fixed_batch.shape == (10, 3, 32, 32)
    assert split.fixed_batch.is_contiguous(memory_format=torch.channels_last)
    no_train = load_imagewoof_split(woof_root, device="cpu", input_size=32, batch_size=4, seeds=[1],
                                    channels_last=False, train=False, cache_dir=woof_root / "cache")
    assert no_train.train is None and no_train.info["subset"] is False


def _one_line(err: RanlibError, capsys) -> str:
    print_error(err)
    line = capsys.readouterr().err
    assert line.startswith("ranlib: error:") and line.count("\n") == 1
    return line


def test_bad_input_is_one_clear_error_line(tmp_path, capsys):
    with pytest.raises(DataNotFoundError) as err:
        load_imagewoof(tmp_path)
    assert "imagewoof-112.npz" in _one_line(err.value, capsys)
    np.savez(tmp_path / imagewoof.NPZ_NAME, train_jpeg=np.zeros(3, np.uint8))
    with pytest.raises(DataFormatError) as err:
        load_imagewoof(tmp_path, cache_dir=tmp_path / "cache")
    assert "missing keys" in _one_line(err.value, capsys) and "val_offsets" in str(err.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError):
        load_imagewoof(tmp_path / "junk.npz", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError):
        data.load_arrays("imagewoof", tmp_path)
    with pytest.raises(ConfigError) as err:
        RandomResizedCropBatches(np.zeros((2, 112, 160, 3), np.uint8), [[112, 160]] * 2, [0, 1], input_size=0,
                                 batch_size=2)
    _one_line(err.value, capsys)


@pytest.mark.parametrize("size", [64, 96])
def test_attention56_runs_at_imagewoof_sizes(size):
    torch.manual_seed(0)
    model = ranlib.create_model("attention56", num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out, features = model(x), model.forward_features(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # The last stage runs at size / 32 (7x7 at 224, 2x2 at 64); ceil-mode pooling keeps every mask level >= 1x1.
    assert features.shape[-2:] == (size // 32, size // 32)
