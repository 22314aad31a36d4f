"""Data: 32x32 loaders (npz JPEG copy, folders, torchvision CIFAR), cache, fingerprints, labelling of the
JPEG copy, GPU-resident batches (augmentation against a per-image reference, determinism, exact resume)
and the ImageNet-folder loaders. All data is made here, small, in tmp_path."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranlib.data import cifar as data
from ranlib.data import decode, folders
from ranlib.data.batches import GpuBatches, pixel_mean
from ranlib.data.cifar import CIFAR10_CLASSES, JPEG_COPY_ID, JPEG_COPY_LABEL, load_arrays
from ranlib.data.decode import fingerprint
from ranlib.data.folders import ImageNetLoaders, PCALighting
from ranlib.errors import CheckpointError, ConfigError, DataFormatError, DataNotFoundError, RanlibError

from fakedata import encode, pack_npz, random_images

REAL_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "cifar10-jpeg.npz"


# --- helpers ----------------------------------------------------------------------------------------------


def pillow_decode(blob):
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


@pytest.fixture
def fake_copy(tmp_path):
    """A tiny JPEG copy: 12 train and 6 test JPEGs (quality 75), labels in a fixed, unsorted order."""
    labels = {"train": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], "test": [3, 8, 8, 0, 6, 6]}
    blobs = {
        "train": [encode(im) for im in random_images(12, seed=1)],
        "test": [encode(im) for im in random_images(6, seed=2)],
    }
    folder = tmp_path / "copy"
    folder.mkdir()
    pack_npz(folder / "cifar10-jpeg.npz", blobs, labels)
    return folder, blobs, labels


def unpack_like_the_script(blobs, labels, dest, name=lambda i: f"{i:05d}.jpg"):
    """What ../shared/data/cifar10-jpeg/unpack writes: DEST/<split>/<class>/<official index, 5 digits>.jpg."""
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (dest / split / c).mkdir(parents=True, exist_ok=True)
        for i, (blob, y) in enumerate(zip(blobs[split], labels[split])):
            (dest / split / CIFAR10_CLASSES[y] / name(i)).write_bytes(blob)
    return dest


def write_png_tree(root, splits):
    """splits: {"train": {"class": [images]}, ...} written as lossless PNGs named 0.png, 1.png, ..."""
    for split, classes in splits.items():
        for cls, images in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / split / cls / f"{i}.png")
    return root


# --- cifar10-jpeg npz -------------------------------------------------------------------------------------


def test_jpeg_npz_loads_in_official_order_with_the_copy_label(fake_copy, tmp_path, monkeypatch):
    folder, blobs, labels = fake_copy
    monkeypatch.setattr(data, "JPEG_COPY_SHA256", decode.sha256_file(folder / "cifar10-jpeg.npz"))  # as if the copy
    ds = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (6, 32, 32, 3) and ds.test_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train_labels, labels["train"])
    np.testing.assert_array_equal(ds.test_labels, labels["test"])
    for i in (0, 5, 11):
        np.testing.assert_array_equal(ds.train_images[i], pillow_decode(blobs["train"][i]))
    np.testing.assert_array_equal(ds.test_images[4], pillow_decode(blobs["test"][4]))
    assert ds.class_names == CIFAR10_CLASSES and ds.num_classes == 10
    assert ds.dataset_id == "cifar10-jpeg-q75" and ds.label == "CIFAR-10 (JPEG q75 copy)"
    assert ds.fingerprint == fingerprint(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels)
    assert ds.to_dict() == {
        "name": "cifar10-jpeg", "id": "cifar10-jpeg-q75", "label": "CIFAR-10 (JPEG q75 copy)",
        "fingerprint": ds.fingerprint, "num_train": 12, "num_test": 6,
    }
    # The root may also be the npz file itself.
    same = load_arrays("cifar10-jpeg", folder / "cifar10-jpeg.npz", cache_dir=tmp_path / "cache")
    assert same.fingerprint == ds.fingerprint


def test_a_data_folder_laid_out_read_only_gets_no_cache_even_for_root(fake_copy, tmp_path, monkeypatch):
    folder, _, _ = fake_copy
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    folder.chmod(0o555)  # as ../shared/data is laid out (root could still write into it)
    try:
        load_arrays("cifar10-jpeg", folder)
    finally:
        folder.chmod(0o755)
    assert not (folder / ".ranlib-cache").exists()
    assert len(list((tmp_path / "home-cache" / "ranlib").glob("cifar10-jpeg-*.npz"))) == 1


def test_second_load_hits_the_cache_and_a_changed_source_misses_it(fake_copy, tmp_path, monkeypatch):
    folder, blobs, labels = fake_copy
    cache = tmp_path / "cache"
    first = load_arrays("cifar10-jpeg", folder, cache_dir=cache)
    assert len(list(cache.glob("cifar10-jpeg-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds this source")

    monkeypatch.setattr(decode, "decode_images", no_decoding)
    second = load_arrays("cifar10-jpeg", folder, cache_dir=cache)
    np.testing.assert_array_equal(second.train_images, first.train_images)
    np.testing.assert_array_equal(second.test_labels, first.test_labels)
    assert second.fingerprint == first.fingerprint

    labels["test"][0] = 9  # a different source file must not be served from the old cache
    pack_npz(folder / "cifar10-jpeg.npz", blobs, labels)
    with pytest.raises(AssertionError, match="decoded"):
        load_arrays("cifar10-jpeg", folder, cache_dir=cache)


def test_default_cache_falls_back_to_home_when_root_is_read_only(fake_copy, tmp_path, monkeypatch):
    folder, _, _ = fake_copy
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(decode.os, "access", lambda path, mode: False)  # e.g. ../shared/data is read-only
    load_arrays("cifar10-jpeg", folder)
    assert len(list((tmp_path / "xdg" / "ranlib").glob("cifar10-jpeg-*.npz"))) == 1
    assert not (folder / ".ranlib-cache").exists()


def test_npz_in_the_wrong_layout_is_a_format_error(tmp_path):
    np.savez(tmp_path / "cifar10-jpeg.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataFormatError, match="missing keys.*train_jpeg"):
        load_arrays("cifar10-jpeg", tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "cifar10-jpeg.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_arrays("cifar10-jpeg", tmp_path, cache_dir=tmp_path / "cache")


def test_corrupt_jpeg_names_the_image(tmp_path):
    blobs = {"train": [encode(random_images(1)[0]), b"\xff\xd8garbage"], "test": [encode(random_images(1)[0])]}
    pack_npz(tmp_path / "cifar10-jpeg.npz", blobs, {"train": [0, 1], "test": [2]})
    with pytest.raises(DataFormatError, match=r"cifar10-jpeg.npz:train\[1\] is not a readable image"):
        load_arrays("cifar10-jpeg", tmp_path, cache_dir=tmp_path / "cache")


def test_parallel_decoding_matches_serial():
    blobs = [encode(im) for im in random_images(20, seed=4)]
    names = [str(i) for i in range(20)]
    serial = decode.decode_images(blobs, names, workers=0)
    parallel = decode.decode_images(blobs, names, workers=2)
    np.testing.assert_array_equal(serial, parallel)
    np.testing.assert_array_equal(serial[7], pillow_decode(blobs[7]))


# --- missing data and unknown names -----------------------------------------------------------------------


def test_missing_roots_say_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=r"--download.*cifar10-jpeg") as info:
        load_arrays("cifar10", missing)
    assert isinstance(info.value, RanlibError) and "\n" not in str(info.value)
    with pytest.raises(DataNotFoundError, match="cifar10-jpeg.npz"):
        load_arrays("cifar10-jpeg", missing)
    with pytest.raises(DataNotFoundError, match="unpack"):
        load_arrays("folder", missing)
    with pytest.raises(DataNotFoundError, match="ImageNet"):
        ImageNetLoaders(missing, batch_size=2, workers=0)


def test_existing_root_without_cifar_files_is_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"CIFAR-100 not found.*--download"):
        load_arrays("cifar100", tmp_path)


def test_unknown_dataset_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="cifar10, cifar100, cifar10-jpeg, folder, imagenet-folder"):
        load_arrays("mnist", tmp_path)
    with pytest.raises(ConfigError, match="ImageNetLoaders"):
        load_arrays("imagenet-folder", tmp_path)


def test_torchvision_cifar_arrays_and_labels(tmp_path, monkeypatch):
    images = random_images(4, seed=5)

    class FakeCIFAR10:  # stands in for torchvision's class: same attributes, no md5-checked files needed
        base_folder = "cifar-10-batches-py"
        classes = list(CIFAR10_CLASSES)

        def __init__(self, root, train, download):
            self.data = images[:3] if train else images[3:]
            self.targets = [0, 9, 4] if train else [7]

    monkeypatch.setattr(data, "CIFAR10", FakeCIFAR10)
    ds = load_arrays("cifar10", tmp_path)
    assert ds.dataset_id == "cifar10" and ds.label == "CIFAR-10"
    np.testing.assert_array_equal(ds.train_labels, [0, 9, 4])
    assert ds.train_labels.dtype == np.int64 and ds.test_images.shape == (1, 32, 32, 3)
    # Pixels that equal the JPEG copy's are labelled as the copy, whatever they were loaded as.
    monkeypatch.setattr(data, "JPEG_COPY_PIXELS_DIGEST", data._pixels_digest(ds))
    relabelled = load_arrays("cifar10", tmp_path)
    assert relabelled.dataset_id == JPEG_COPY_ID and relabelled.label == JPEG_COPY_LABEL


# --- fingerprints -----------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_distinct_for_distinct_data():
    train, test = random_images(5, seed=6), random_images(3, seed=7)
    y_train, y_test = np.arange(5), np.arange(3)
    base = fingerprint(train, y_train, test, y_test)
    assert base == fingerprint(train.copy(), y_train.astype(np.uint8), test.copy(), y_test)
    assert len(base) == 64 and int(base, 16) >= 0
    pixel = train.copy()
    pixel[2, 10, 10, 1] ^= 1
    label = y_test.copy()
    label[0] = 2
    variants = [
        fingerprint(pixel, y_train, test, y_test),
        fingerprint(train, y_train, test, label),
        fingerprint(test, y_test, train, y_train),  # splits swapped
        fingerprint(np.concatenate([train, test[:1]]), np.arange(6), test[1:], y_test[1:]),  # one image moved
    ]
    assert len({base, *variants}) == 5


# --- image folders ----------------------------------------------------------------------------------------


def test_folder_tree_classes_sorted_order_and_exact_pixels(tmp_path):
    images = random_images(5, seed=8)
    root = write_png_tree(tmp_path / "tiny", {
        "train": {"zebra": [images[0], images[1]], "ant": [images[2]]},
        "val": {"zebra": [images[3]], "ant": [images[4]]},
    })
    ds = load_arrays("folder", root, cache_dir=tmp_path / "cache")
    assert ds.class_names == ("ant", "zebra")
    np.testing.assert_array_equal(ds.train_labels, [0, 1, 1])
    np.testing.assert_array_equal(ds.train_images, images[[2, 0, 1]])  # class by class, names sorted
    np.testing.assert_array_equal(ds.test_images, images[[4, 3]])
    np.testing.assert_array_equal(ds.test_labels, [0, 1])
    assert ds.dataset_id == "folder:tiny" and ds.label == "image folder tiny"
    assert ds.fingerprint == fingerprint(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels)


def test_folder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    images = random_images(3, seed=9)
    root = write_png_tree(tmp_path / "tiny", {"train": {"a": [images[0], images[1]]}, "test": {"a": [images[2]]}})
    first = load_arrays("folder", root)  # default cache: <root>/.ranlib-cache
    assert len(list((root / ".ranlib-cache").glob("folder-tiny-*.npz"))) == 1
    real_decode = decode.decode_images
    monkeypatch.setattr(decode, "decode_images", lambda *a, **k: pytest.fail("decoded a cached folder"))
    assert load_arrays("folder", root).fingerprint == first.fingerprint
    Image.fromarray(images[0]).save(root / "test" / "a" / "0.png")  # the content changes
    monkeypatch.setattr(decode, "decode_images", real_decode)
    changed = load_arrays("folder", root)
    assert changed.fingerprint != first.fingerprint
    np.testing.assert_array_equal(changed.test_images[0], images[0])


def test_folder_image_of_the_wrong_size_names_file_and_expected_size(tmp_path):
    good, big = random_images(1)[0], random_images(1, size=33)[0][:, :33]
    root = write_png_tree(tmp_path / "bad", {"train": {"a": [good, big]}, "test": {"a": [good]}})
    with pytest.raises(DataFormatError, match=r"bad/train/a/1\.png is 33x33, expected 32x32"):
        load_arrays("folder", root, cache_dir=tmp_path / "cache")


def test_folder_without_splits_is_a_format_error(tmp_path):
    (tmp_path / "flat" / "a").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="train/ and test/"):
        load_arrays("folder", tmp_path / "flat")


def test_unpacked_jpeg_copy_is_labelled_as_the_copy_in_official_order(fake_copy, tmp_path, monkeypatch):
    folder, blobs, labels = fake_copy
    from_npz = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    tree = unpack_like_the_script(blobs, labels, tmp_path / "unpacked")
    every_file = [hashlib.sha256(b).hexdigest() for s in ("train", "test") for b in blobs[s]]
    monkeypatch.setattr(data, "JPEG_COPY_FILES_DIGEST", hashlib.sha256("".join(sorted(every_file)).encode()).hexdigest())
    from_tree = load_arrays("folder", tree, cache_dir=tmp_path / "cache")
    assert from_tree.dataset_id == JPEG_COPY_ID and from_tree.label == JPEG_COPY_LABEL
    assert from_tree.fingerprint == from_npz.fingerprint  # same pixels, same official order
    np.testing.assert_array_equal(from_tree.train_labels, labels["train"])


def test_jpeg_copy_files_under_other_names_are_still_the_copy(fake_copy, tmp_path, monkeypatch):
    folder, blobs, labels = fake_copy
    tree = unpack_like_the_script(blobs, labels, tmp_path / "renamed", name=lambda i: f"img{i}.jpg")
    plain = load_arrays("folder", tree, cache_dir=tmp_path / "cache")
    assert plain.dataset_id == "folder:renamed"  # not the copy's files (the digest is the real copy's)
    every_file = [hashlib.sha256(b).hexdigest() for s in ("train", "test") for b in blobs[s]]
    digest = hashlib.sha256("".join(sorted(every_file)).encode()).hexdigest()
    monkeypatch.setattr(data, "JPEG_COPY_FILES_DIGEST", digest)
    recognised = load_arrays("folder", tree, cache_dir=tmp_path / "cache")
    assert recognised.dataset_id == JPEG_COPY_ID and recognised.label == JPEG_COPY_LABEL


def test_copy_pixels_converted_to_png_are_still_the_copy(fake_copy, tmp_path, monkeypatch):
    folder, _, labels = fake_copy
    copy = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data, "JPEG_COPY_PIXELS_DIGEST", data._pixels_digest(copy))
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (tmp_path / "png" / split / c).mkdir(parents=True)
        for i, (image, y) in enumerate(zip(getattr(copy, f"{split}_images"), labels[split])):
            Image.fromarray(image).save(tmp_path / "png" / split / CIFAR10_CLASSES[y] / f"{i:05d}.png")
    ds = load_arrays("folder", tmp_path / "png", cache_dir=tmp_path / "cache")
    # `.png` names are not the unpack script's and the order is class by class: the pixels decide.
    assert ds.label == JPEG_COPY_LABEL and ds.fingerprint != copy.fingerprint


@pytest.mark.skipif(not REAL_NPZ.is_file(), reason="the shared JPEG copy is not on this machine")
def test_real_jpeg_copy_labels_and_a_slice_of_its_images(tmp_path):
    with np.load(REAL_NPZ) as pack:
        assert pack["test_labels"][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
        assert np.bincount(pack["train_labels"]).tolist() == [5000] * 10
        assert np.bincount(pack["test_labels"]).tolist() == [1000] * 10
        blobs, labels = {}, {}
        for split in ("train", "test"):
            buf, off = pack[f"{split}_jpeg"], pack[f"{split}_offsets"]
            blobs[split] = [buf[off[i]:off[i + 1]].tobytes() for i in range(50)]
            labels[split] = pack[f"{split}_labels"][:50]
    # The first 50 images of each split through the real loader, decoding only those.
    pack_npz(tmp_path / "cifar10-jpeg.npz", blobs, labels)
    ds = load_arrays("cifar10-jpeg", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert ds.class_names == CIFAR10_CLASSES
    assert ds.label != JPEG_COPY_LABEL  # 100 of its images are not the copy: the label is verified, not named
    assert ds.train_images.shape == (50, 32, 32, 3) and 20 < ds.train_images.mean() < 235


# --- GpuBatches -------------------------------------------------------------------------------------------


def reference_augment(image, top, left, flip, pad=4):
    """One image, the slow obvious way: zero-pad, crop, maybe mirror."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    crop = padded[top:top + h, left:left + w]
    return crop[:, ::-1] if flip else crop


def to_pixels(x, mean):
    """Undo the normalisation of a batch: NCHW float -> NHWC uint8."""
    return np.rint((x.permute(0, 2, 3, 1).float().numpy() + mean.numpy()) * 255).astype(np.uint8)


@pytest.fixture
def images10():
    return random_images(10, seed=10), np.arange(10) % 3


def test_train_batches_match_a_per_image_reference(images10):
    images, labels = images10
    batches = GpuBatches(images, labels, batch_size=4, train=True, seed=3, drop_last=False)
    order, offsets, flips = batches.epoch_plan(0)
    assert sorted(order.tolist()) == list(range(10))
    assert offsets.min() >= 0 and offsets.max() <= 8
    xs, ys = zip(*batches.epoch_iter(0))
    assert [len(y) for y in ys] == [4, 4, 2]
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and x.shape == (10, 3, 32, 32) and y.dtype == torch.int64
    mean_hwc = images.astype(np.float64).mean(0) / 255
    for j in range(10):
        i = int(order[j])
        ref = reference_augment(images[i], int(offsets[j, 0]), int(offsets[j, 1]), bool(flips[j]))
        expected = (ref.astype(np.float32) / 255 - mean_hwc).transpose(2, 0, 1)
        np.testing.assert_allclose(x[j].numpy(), expected, atol=1e-5)
        assert y[j] == labels[i]


def test_every_training_crop_is_a_valid_pad4_crop_or_its_mirror(images10):
    """Independent of epoch_plan: each output must be one of the 81 x 2 allowed crops of its source image."""
    images, labels = images10
    unique_labels = np.arange(10)
    batches = GpuBatches(images, unique_labels, batch_size=5, train=True, seed=11)
    for x, y in batches.epoch_iter(2):
        for pixels, i in zip(to_pixels(x, batches.mean.cpu()), y.tolist()):
            candidates = [
                reference_augment(images[i], top, left, flip)
                for top in range(9) for left in range(9) for flip in (False, True)
            ]
            assert any(np.array_equal(pixels, c) for c in candidates)


def test_flip_mirrors_the_image():
    image = np.zeros((1, 4, 6, 3), dtype=np.uint8)
    image[0, :, :2] = 255  # left third white
    batches = GpuBatches(np.repeat(image, 64, 0), np.zeros(64), batch_size=64, train=True, seed=0, pad=0, mean=0.0)
    _, _, flips = batches.epoch_plan(0)
    x, _ = next(iter(batches))
    left_white = x[:, 0, :, :2].eq(1).all(dim=(1, 2))
    right_white = x[:, 0, :, 4:].eq(1).all(dim=(1, 2))
    assert torch.equal(right_white, flips) and torch.equal(left_white, ~flips)
    assert 0 < int(flips.sum()) < 64


def test_augmentation_statistics():
    batches = GpuBatches(np.zeros((4000, 2, 2, 3), np.uint8), np.zeros(4000), batch_size=100, train=True, seed=1)
    _, offsets, flips = batches.epoch_plan(0)
    assert abs(flips.float().mean().item() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    counts = torch.bincount(offsets.flatten(), minlength=9)
    assert len(counts) == 9 and counts.min() > 0.8 * 8000 / 9  # uniform over offsets 0..8


def test_eval_batches_are_exact_normalised_images_in_order(images10):
    images, labels = images10
    train = GpuBatches(images, labels, batch_size=4, train=True)
    test = GpuBatches(images[:7], labels[:7], batch_size=3, train=False, mean=train.mean)
    assert len(test) == 3  # 3 + 3 + 1: every sample kept
    xs, ys = zip(*test)
    x, y = torch.cat(xs), torch.cat(ys)
    expected = (images[:7].astype(np.float32) / 255 - images.astype(np.float64).mean(0) / 255).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels[:7])
    assert list(test.epoch_iter(5))[0][0].equal(xs[0])  # the same in every epoch
    next(iter(test))  # a partial pass does not shift the next one
    assert torch.cat([y for _, y in test]).tolist() == labels[:7].tolist()


def test_mean_defaults_to_the_training_pixel_mean_and_std_divides(images10):
    images, labels = images10
    plain = GpuBatches(images, labels, batch_size=10, train=False, mean=pixel_mean(images))
    np.testing.assert_allclose(plain.mean.numpy(), images.mean(0) / 255, atol=1e-6)
    assert GpuBatches(images, labels, batch_size=10, train=True).mean.equal(plain.mean)
    std = (0.25, 0.5, 1.0)
    scaled = GpuBatches(images, labels, batch_size=10, train=False, mean=plain.mean, std=std)
    torch.testing.assert_close(next(iter(scaled))[0] * torch.tensor(std).view(1, 3, 1, 1), next(iter(plain))[0])
    with pytest.raises(ConfigError, match="training set's per-pixel mean"):
        GpuBatches(images, labels, batch_size=10, train=False)
    with pytest.raises(ConfigError, match=r"\(H, W, C\)"):
        GpuBatches(images, labels, batch_size=10, train=True, mean=torch.zeros(3, 32, 32))


def test_channels_last_and_half_precision_change_layout_not_values(images10):
    images, labels = images10
    ref = GpuBatches(images, labels, batch_size=4, train=True, seed=2)
    fast = GpuBatches(images, labels, batch_size=4, train=True, seed=2, channels_last=True, dtype=torch.bfloat16)
    for (a, ya), (b, yb) in zip(ref, fast):
        assert b.dtype == torch.bfloat16 and b.is_contiguous(memory_format=torch.channels_last)
        assert a.is_contiguous()
        torch.testing.assert_close(b.float(), a, atol=1e-2, rtol=1e-2)
        assert torch.equal(ya, yb)


def test_drop_last_defaults(images10):
    images, labels = images10
    assert len(GpuBatches(images, labels, batch_size=4, train=True)) == 2
    assert len(GpuBatches(images, labels, batch_size=4, train=False, mean=0.5)) == 3
    with pytest.raises(ConfigError, match="no batch"):
        GpuBatches(images, labels, batch_size=11, train=True)


def collect(iterator, n):
    return [(x.clone(), y.clone()) for _, (x, y) in zip(range(n), iterator)]


def test_batches_are_deterministic_given_seed_and_epoch(images10):
    images, labels = images10
    a = GpuBatches(images, labels, batch_size=4, train=True, seed=5)
    b = GpuBatches(images, labels, batch_size=4, train=True, seed=5)
    for epoch in (0, 3):
        for (xa, ya), (xb, yb) in zip(a.epoch_iter(epoch), b.epoch_iter(epoch)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first, other_epoch = next(a.epoch_iter(0))[0], next(a.epoch_iter(1))[0]
    other_seed = next(GpuBatches(images, labels, batch_size=4, train=True, seed=6).epoch_iter(0))[0]
    assert not torch.equal(first, other_epoch) and not torch.equal(first, other_seed)


def test_resume_mid_epoch_sees_exactly_the_same_batches(images10):
    images, labels = images10
    make = lambda: GpuBatches(images, labels, batch_size=3, train=True, seed=9)  # noqa: E731 - 3 batches/epoch
    uninterrupted = collect(make().forever(), 8)
    first = make()
    head = collect(first.forever(), 4)  # epoch 0 and one batch of epoch 1
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 1)
    resumed = make()
    resumed.load_state_dict(dict(state))
    tail = collect(resumed.forever(), 4)
    for (xa, ya), (xb, yb) in zip(uninterrupted, head + tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Iterating epoch by epoch continues from the same state too.
    by_epoch = make()
    by_epoch.load_state_dict(state)
    assert [len(y) for _, y in by_epoch] == [3, 3]
    assert by_epoch.state_dict()["epoch"] == 2


def test_resume_with_different_data_is_refused(images10):
    images, labels = images10
    state = GpuBatches(images, labels, batch_size=3, train=True, seed=9).state_dict()
    with pytest.raises(CheckpointError, match="seed saved 9 vs now 10"):
        GpuBatches(images, labels, batch_size=3, train=True, seed=10).load_state_dict(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_the_reference(images10):
    images, labels = images10
    batches = GpuBatches(images, labels, batch_size=4, train=True, seed=3, device="cuda", channels_last=True)
    order, offsets, flips = (t.cpu() for t in batches.epoch_plan(0))
    x = torch.cat([xb.float().cpu() for xb, _ in batches.epoch_iter(0)])
    mean_hwc = images.astype(np.float64).mean(0) / 255
    for j in range(len(x)):
        ref = reference_augment(images[int(order[j])], int(offsets[j, 0]), int(offsets[j, 1]), bool(flips[j]))
        np.testing.assert_allclose(x[j].numpy(), (ref / 255 - mean_hwc).transpose(2, 0, 1), atol=1e-5)


# --- ImageNet-style folders -------------------------------------------------------------------------------


@pytest.fixture
def tiny_imagenet(tmp_path):
    rng = np.random.default_rng(12)
    pictures = lambda n: [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(n)]  # noqa: E731
    return write_png_tree(tmp_path / "nette", {
        "train": {"n01": pictures(3), "n02": pictures(3)},
        "val": {"n01": pictures(2), "n02": pictures(1)},
    })


def test_imagenet_loaders_shapes_labels_and_single_crop_test(tiny_imagenet):
    loaders = ImageNetLoaders(tiny_imagenet, batch_size=2, workers=0, train_size=16, test_size=24)
    train, test = loaders
    x, y = next(iter(train))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 3  # 6 images, drop_last
    xs, ys = zip(*test)
    assert torch.cat(xs).shape == (3, 3, 24, 24) and torch.cat(ys).tolist() == [0, 0, 1]
    resize = loaders.test_transform.transforms[0]
    assert resize.size == [round(24 * 256 / 224)]
    assert loaders.class_names == ("n01", "n02") and loaders.num_classes == 2
    assert loaders.dataset_id == "imagenet-folder:nette"
    d = loaders.to_dict()
    assert (d["num_train"], d["num_test"]) == (6, 3) and d["fingerprint"] == loaders.fingerprint


def test_imagenet_fingerprint_follows_the_file_list(tiny_imagenet):
    first = ImageNetLoaders(tiny_imagenet, batch_size=2, workers=0).fingerprint
    assert ImageNetLoaders(tiny_imagenet, batch_size=2, workers=0).fingerprint == first
    (tiny_imagenet / "val" / "n02" / "0.png").rename(tiny_imagenet / "val" / "n02" / "9.png")
    assert ImageNetLoaders(tiny_imagenet, batch_size=2, workers=0).fingerprint != first


def test_imagenet_folder_without_val_is_a_format_error(tiny_imagenet):
    import shutil

    shutil.rmtree(tiny_imagenet / "val")
    with pytest.raises(DataFormatError, match="val/"):
        ImageNetLoaders(tiny_imagenet, batch_size=2, workers=0)


def test_hidden_folders_and_files_are_never_classes_or_images(tiny_imagenet, tmp_path):
    for split in ("train", "val"):
        (tiny_imagenet / split / ".ipynb_checkpoints").mkdir()  # what Jupyter leaves behind
        (tiny_imagenet / split / "n01" / "._0.png").write_bytes(b"macOS metadata, not an image")
    loaders = ImageNetLoaders(tiny_imagenet, batch_size=2, workers=0)
    assert loaders.class_names == ("n01", "n02")
    assert (len(loaders.train_set), len(loaders.test_set)) == (6, 3)
    cifar = write_png_tree(tmp_path / "cifar", {"train": {"a": random_images(1)}, "test": {"a": random_images(1)}})
    for split in ("train", "test"):
        (cifar / split / ".ipynb_checkpoints").mkdir()
    assert load_arrays("folder", cifar, cache_dir=tmp_path / "cache").class_names == ("a",)


@pytest.mark.parametrize("load", [lambda root: load_arrays("folder", root, cache_dir=root.parent / "cache"),
                                  lambda root: ImageNetLoaders(root, batch_size=2, workers=0)],
                         ids=["folder", "imagenet-folder"])
def test_a_flat_val_of_images_says_how_to_sort_it_into_class_folders(load, tmp_path):
    root = write_png_tree(tmp_path / "ilsvrc", {"train": {"n01": random_images(2)}})
    (root / "val").mkdir()
    for i, image in enumerate(random_images(3, seed=1)):
        Image.fromarray(image).save(root / "val" / f"ILSVRC2012_val_{i:08d}.png")
    with pytest.raises(DataFormatError, match=r"val holds 3 images directly.*val/<wnid>/.*valprep") as info:
        load(root)
    assert "\n" not in str(info.value)


def test_pca_lighting_adds_one_colour_shift_per_image_with_imagenet_covariance():
    lighting = PCALighting(0.1)
    image = torch.rand(3, 5, 7)
    shifted = lighting(image)
    shift = shifted - image
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))  # same for every pixel
    torch.manual_seed(0)
    shifts = torch.stack([lighting(torch.zeros(3, 1, 1)).flatten() for _ in range(4000)]).double()
    eigvec = torch.tensor(folders.IMAGENET_PCA_EIGVEC, dtype=torch.float64)
    eigval = torch.tensor(folders.IMAGENET_PCA_EIGVAL, dtype=torch.float64)
    expected = eigvec @ torch.diag((0.1 * eigval) ** 2) @ eigvec.T
    torch.testing.assert_close(shifts.T.cov(), expected, atol=3e-5, rtol=0.1)
    with pytest.raises(TypeError, match="float RGB"):
        lighting(torch.zeros(3, 2, 2, dtype=torch.uint8))


# --- damaged files ---------------------------------------------------------------------


def _damaged(path: Path, how: str) -> Path:
    blob = bytearray(path.read_bytes())
    if how == "truncated":
        del blob[len(blob) * 2 // 3:]
    else:  # one bit flipped inside the stored arrays: the zip's CRC catches it when the array is read
        blob[len(blob) // 3] ^= 0x10
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_npz_is_one_line_naming_it(fake_copy, tmp_path, how, capsys):
    """It was a BadZipFile or EOFError traceback (the JPEG copy; Imagewoof reads through the same code)."""
    from ranlib.data import imagewoof
    from ranlib.errors import print_error

    folder, _, _ = fake_copy
    _damaged(folder / "cifar10-jpeg.npz", how)
    with pytest.raises(DataFormatError, match=r"cifar10-jpeg.npz is damaged or not a readable .npz file .*again") as err:
        load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    print_error(err.value)
    assert capsys.readouterr().err.count("\n") == 1
    woof = folder / imagewoof.NPZ_NAME
    woof.write_bytes((folder / "cifar10-jpeg.npz").read_bytes())
    with pytest.raises(DataFormatError, match="imagewoof-112.npz is damaged"):
        imagewoof.load_imagewoof(woof, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_decode_cache_is_skipped_and_rebuilt(fake_copy, tmp_path, how):
    folder, _, _ = fake_copy
    first = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    [cache] = (tmp_path / "cache").glob("cifar10-jpeg-*.npz")
    _damaged(cache, how)
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        again = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    assert again.fingerprint == first.fingerprint
    decode.read_npz(cache)  # rewritten whole
    third = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")  # from the cache, no warning
    assert third.fingerprint == first.fingerprint


def _imagenet_tree(root: Path) -> Path:
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                (root / split / c / f"{i}.jpg").write_bytes(encode(random_images(1, seed=i, size=48)[0]))
    return root


def test_a_truncated_jpeg_in_an_imagenet_folder_is_found_before_training(tmp_path):
    """It stopped training mid-run with a traceback that named no file and left no checkpoint."""
    root = _imagenet_tree(tmp_path / "nette")
    bad = root / "train" / "n02" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataFormatError, match=r"n02/3\.jpg is truncated .*replace it with an intact copy"):
        ImageNetLoaders(root, batch_size=2, workers=0, train_size=32, test_size=32)
    bad.write_bytes(encode(random_images(1, size=48)[0]))
    ImageNetLoaders(root, batch_size=2, workers=0, train_size=32, test_size=32)  # intact again


def test_an_image_that_fails_to_decode_names_its_file(tmp_path):
    root = _imagenet_tree(tmp_path / "nette")
    bad = root / "val" / "n01" / "0.jpg"
    bad.write_bytes(b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9")  # ends as a JPEG should, decodes as nothing
    loaders = ImageNetLoaders(root, batch_size=2, workers=0, train_size=32, test_size=32)
    with pytest.raises(DataFormatError, match=r"n01/0\.jpg is not a readable image"):
        next(iter(loaders.test))


# --- what a number is labelled with is verified ---------------------------------------


def test_a_file_named_like_the_copy_is_not_labelled_the_copy(fake_copy, tmp_path):
    """Any file called cifar10-jpeg.npz was labelled "CIFAR-10 (JPEG q75 copy)", even one of random
    images: its sha256 was computed but never compared with the copy's."""
    folder, blobs, labels = fake_copy
    ds = load_arrays("cifar10-jpeg", folder, cache_dir=tmp_path / "cache")
    digest = decode.sha256_file(folder / "cifar10-jpeg.npz")
    assert ds.dataset_id == f"jpeg-npz:{digest[:12]}" and "not the CIFAR-10 JPEG copy" in ds.label
    assert JPEG_COPY_LABEL not in ds.label
    tree = unpack_like_the_script(blobs, labels, tmp_path / "unpacked")  # the unpack script's names
    assert load_arrays("folder", tree, cache_dir=tmp_path / "cache").label == "image folder unpacked"


@pytest.mark.skipif(not REAL_NPZ.is_file(), reason="the shared JPEG copy is not on this machine")
def test_the_shared_copy_has_the_digests_its_readme_gives():
    from ranlib.study import jpeg_gap

    readme = (REAL_NPZ.parent / "README.md").read_text()
    assert data.JPEG_COPY_SHA256 in readme and jpeg_gap.EXACT_SUBSET_SHA256 in readme
    assert decode.sha256_file(REAL_NPZ) == data.JPEG_COPY_SHA256
    assert decode.sha256_file(REAL_NPZ.parent / jpeg_gap.EXACT_SUBSET_FILE) == jpeg_gap.EXACT_SUBSET_SHA256
