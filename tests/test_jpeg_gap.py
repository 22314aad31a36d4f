"""The JPEG-cost measurement: one trained model on exact official pixels vs their JPEG versions."""

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ranlib.data import cifar as data
from ranlib.data import decode
from ranlib.errors import DataFormatError, DataNotFoundError
from ranlib.study import jpeg_gap
from ranlib.training import loop
from ranlib.training.config import TrainConfig

from fakedata import encode, pack_npz, random_images

N_TEST = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A JPEG copy with its exact-pixel subset, and a checkpoint trained for two steps on the copy."""
    root = tmp_path_factory.mktemp("copy")
    labels = {"train": [i % 10 for i in range(20)], "test": [(3 * i) % 10 for i in range(N_TEST)]}
    exact = {"train": random_images(20, seed=1), "test": random_images(N_TEST, seed=2)}
    pack_npz(root / "cifar10-jpeg.npz", {s: [encode(im) for im in exact[s]] for s in exact}, labels)
    np.savez(root / jpeg_gap.EXACT_SUBSET_FILE, x_test=exact["test"], y_test=np.asarray(labels["test"], np.uint8),
             test_index=np.arange(N_TEST))
    config = TrainConfig(
        model="cifar_resnet164", dataset="cifar10-jpeg", data_root=str(root), profile="smoke", batch_size=4,
        iterations=2, eval_every=2, checkpoint_every=2, device="cpu", experiment="unit", progress=False,
        results_dir=str(root / "results"), checkpoint_dir=str(root / "checkpoints"), num_workers=0)
    with pytest.MonkeyPatch.context() as patch:  # this tiny copy stands for the shared one
        patch.setattr(data, "JPEG_COPY_SHA256", decode.sha256_file(root / "cifar10-jpeg.npz"))
        record = loop.run(config)
    checkpoint = root / "checkpoints" / "unit" / record["run_name"] / "last.pt"
    return root, checkpoint, exact


def test_exact_and_jpeg_errors_of_one_model(trained):
    root, checkpoint, exact = trained
    result = jpeg_gap.jpeg_gap(checkpoint, data_root=root, device="cpu")
    assert result["num_images"] == N_TEST and result["official_test_indices"] == [0, N_TEST - 1]
    assert result["trained_on"]["label"] == "CIFAR-10 (JPEG q75 copy)"  # as it was when it trained
    # here the tiny files are what they are: not the shared copy, and not its known exact subset
    assert "not the CIFAR-10 JPEG copy" in result["jpeg_images"]["label"] and not result["exact_subset_verified"]
    assert result["jpeg_minus_exact"] == pytest.approx(result["top1_error_jpeg"] - result["top1_error_exact"])
    assert result["mean_abs_pixel_difference"] > 1  # JPEG q75 moved the pixels
    low, high = result["jpeg_minus_exact_interval"]
    flips = result["discordant_images"]
    gap = 100 * (flips["only_jpeg_wrong"] - flips["only_exact_wrong"]) / N_TEST
    assert result["jpeg_minus_exact"] == pytest.approx(gap)
    assert low <= result["jpeg_minus_exact"] <= high
    for error in (result["top1_error_exact"], result["top1_error_jpeg"]):
        assert 0 <= error <= 100 and (error * N_TEST / 100) == pytest.approx(round(error * N_TEST / 100))


def test_the_paired_interval_counts_only_the_images_whose_verdict_changed():
    exact = torch.tensor([True] * 90 + [False] * 10)
    same = jpeg_gap.paired_interval(exact, exact.clone())
    assert same == [0.0, 0.0]  # the same predictions: no gap and no doubt about it
    jpeg = exact.clone()
    jpeg[:4] = False  # four images JPEG gets wrong, one it gets right
    jpeg[95] = True
    low, high = jpeg_gap.paired_interval(exact, jpeg)
    half = 1.96 * math.sqrt((5 / 100 - 0.03 ** 2) / 100) * 100
    assert (low, high) == pytest.approx((3.0 - half, 3.0 + half))


def test_identical_pixels_give_no_gap(trained, tmp_path):
    root, checkpoint, _ = trained
    with np.load(root / "cifar10-jpeg.npz") as npz:
        offsets, blob = npz["test_offsets"], npz["test_jpeg"]
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                            for i in range(N_TEST)])
        labels = npz["test_labels"]
    same = tmp_path / "same.npz"
    np.savez(same, x_test=decoded, y_test=labels, test_index=np.arange(N_TEST))
    result = jpeg_gap.jpeg_gap(checkpoint, data_root=root, exact_path=same, device="cpu")
    assert result["jpeg_minus_exact"] == 0 and result["mean_abs_pixel_difference"] == 0


def test_bad_subsets_are_one_clear_error(trained, tmp_path, capsys):
    root, checkpoint, exact = trained
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x_test=exact["test"], y_test=np.zeros(N_TEST, np.uint8) + 1, test_index=np.arange(N_TEST))
    with pytest.raises(DataFormatError, match="labels differ"):
        jpeg_gap.jpeg_gap(checkpoint, data_root=root, exact_path=wrong, device="cpu")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        jpeg_gap.load_exact_test_subset(tmp_path / "nowhere")
    assert jpeg_gap.main(["--checkpoint", str(checkpoint), "--data-root", str(root), "--exact", str(wrong)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ranlib: error:")


def test_cli_writes_and_never_overwrites_and_the_book_reads_it(trained, tmp_path, capsys):
    root, checkpoint, _ = trained
    out = tmp_path / "jpeg_gap" / "gap.json"
    args = ["--checkpoint", str(checkpoint), "--data-root", str(root), "--device", "cpu", "--json", str(out)]
    assert jpeg_gap.main(args) == 0 and out.is_file()
    assert "exact official test images" in capsys.readouterr().out
    assert jpeg_gap.main(args) == 1
    assert "already exists" in capsys.readouterr().err
    [line] = jpeg_gap.jpeg_gap_table(tmp_path).to_dict("records")
    written = json.loads(out.read_text())
    assert line["run"] == checkpoint.parent.name and line["images"] == N_TEST
    assert line["JPEG - exact"] == round(written["jpeg_minus_exact"], 2)
    assert jpeg_gap.jpeg_gap_table(tmp_path / "elsewhere").empty


def test_data_root_may_be_the_npz_file(trained):
    root, checkpoint, _ = trained
    by_file = jpeg_gap.jpeg_gap(checkpoint, data_root=root / "cifar10-jpeg.npz", device="cpu")
    by_folder = jpeg_gap.jpeg_gap(checkpoint, data_root=root, device="cpu")
    assert by_file["top1_error_exact"] == by_folder["top1_error_exact"]
    assert by_file["top1_error_jpeg"] == by_folder["top1_error_jpeg"]
