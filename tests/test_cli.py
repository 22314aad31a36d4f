"""The command line: bad input is one clear line and a non-zero exit; train, eval and models work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ranlib.cli import main
from ranlib.training import checkpoint as ckpt

from test_train import REPO, TINY_MODEL, make_folder_dataset, one_thread, single_thread, subprocess_env  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("cli") / "tiny", n_train=16, n_test=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A 2-iteration run through the CLI: its results file and its checkpoint."""
    tmp = tmp_path_factory.mktemp("trained")
    with single_thread():
        code = main(["train", "--model", TINY_MODEL, "--dataset", "folder", "--data-root", str(data_root),
                     "--profile", "smoke", "--batch-size", "4", "--iterations", "2", "--device", "cpu",
                     "--experiment", "cli", "--run-name", "tiny", "--results-dir", str(tmp / "results"),
                     "--checkpoint-dir", str(tmp / "checkpoints"), "--no-progress",
                     "--model-kwargs", "attention=mixed", "residual_attention=true"])
    assert code == 0
    return tmp


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ranlib: error: ")
    return lines[0]


def train_args(data_root, tmp_path, *extra):
    return ["train", "--model", TINY_MODEL, "--dataset", "folder", "--data-root", str(data_root), "--profile",
            "smoke", "--device", "cpu", "--results-dir", str(tmp_path / "r"), "--checkpoint-dir",
            str(tmp_path / "c"), "--no-progress", *extra]


def test_train_prints_the_final_error_and_writes_results(trained, capsys):
    record = json.loads((trained / "results" / "cli" / "tiny.json").read_text())
    assert record["config"]["model_kwargs"] == {"attention": "mixed", "residual_attention": True}
    assert record["config"]["iterations"] == 2


def test_eval_reproduces_the_final_error(trained, capsys, tmp_path):
    capsys.readouterr()
    record = json.loads((trained / "results" / "cli" / "tiny.json").read_text())
    out_json = tmp_path / "eval.json"
    checkpoint = trained / "checkpoints" / "cli" / "tiny" / "last.pt"
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--json", str(out_json)]) == 0
    assert f"top-1 error {record['final']['top1_error']:.2f} %" in capsys.readouterr().out
    written = json.loads(out_json.read_text())
    assert written["top1_error"] == pytest.approx(record["final"]["top1_error"])
    assert written["dataset"]["fingerprint"] == record["dataset"]["fingerprint"]
    assert written["num_test"] == record["final"]["num_test"] == 8
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--json", str(out_json)]) == 1
    assert "--overwrite" in error_line(capsys)


def test_models_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RANLIB_CACHE_DIR", str(tmp_path))
    assert main(["models", "cifar_resnet164", "attention56"]) == 0
    out = capsys.readouterr().out
    [cache] = tmp_path.glob("complexity-*.json")
    assert json.loads(cache.read_text())["cifar_resnet164"]["params"] == 1_703_258
    assert "cifar_resnet164" in out and "1.70" in out  # 1.7M parameters (Table 6)
    assert "attention56" in out and "6.27" in out  # 6.27 G multiply-adds at 224 (deploy files)
    assert main(["models", "--dataset", "cifar", "cifar_resnet164", "attention56"]) == 0  # from the cache
    second = capsys.readouterr().out
    assert "1.70" in second and "attention56 " not in second.split("cifar_resnet164")[1]


@pytest.mark.parametrize("extra, expected", [
    (["--model", "resnet9000"], "valid models: attention56"),
    (["--dataset", "mnist"], "valid: cifar10"),
    (["--noise-level", "1.0"], "outside [0, 1)"),
    (["--noise-level", "-0.2"], "outside [0, 1)"),
    (["--profile", "forever"], "valid: smoke, quick, paper"),
    (["--model-kwargs", "attention"], "not key=value"),
    (["--model-kwargs", "colour=red"], "does not take colour"),
])
def test_bad_train_input_is_one_line(data_root, tmp_path, capsys, extra, expected):
    assert main(train_args(data_root, tmp_path, *extra)) == 1
    assert expected in error_line(capsys)


def test_missing_data_root_says_how_to_get_the_data(tmp_path, capsys):
    args = train_args(tmp_path / "nowhere", tmp_path, "--dataset", "cifar10-jpeg")
    assert main(args) == 1
    line = error_line(capsys)
    assert "nowhere" in line and ("download" in line or "unpack" in line or "cifar10-jpeg" in line)


def test_wrong_image_size(tmp_path, capsys):
    big = make_folder_dataset(tmp_path / "big", n_train=3, n_test=3, size=40)
    assert main(train_args(big, tmp_path)) == 1
    assert "40x40" in error_line(capsys)


def _imagenet_layout(root, broken: str):
    """A tiny ImageNet-style folder (train/ and val/ of class folders) with one layout fault."""
    from PIL import Image

    image = Image.new("RGB", (40, 40), (90, 30, 200))
    for split, cls in (("train", "n01"), ("train", "n02"), ("val", "n01"), ("val", "n02")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        image.save(root / split / cls / "0.png")
    if broken == "flat val/":  # ILSVRC's original validation layout
        for cls in ("n01", "n02"):
            (root / "val" / cls / "0.png").rename(root / "val" / f"ILSVRC2012_val_{cls}.png")
            (root / "val" / cls).rmdir()
    elif broken == "extra val class":
        (root / "val" / "n03").mkdir()
    elif broken == "no val/":
        for cls in ("n01", "n02"):
            (root / "val" / cls / "0.png").unlink()
            (root / "val" / cls).rmdir()
        (root / "val").rmdir()
    elif broken == "flat train/":
        for cls in ("n01", "n02"):
            (root / "train" / cls / "0.png").rename(root / "train" / f"{cls}.png")
            (root / "train" / cls).rmdir()
    return root


@pytest.mark.parametrize("broken, expected", [
    ("flat val/", "val holds 2 images directly, not in class folders: move each into"),
    ("extra val class", "class folders ['n03'] that the train split does not have"),
    ("no val/", "has no train/ and test/ (or val/) folders"),
    ("flat train/", "has no class folders"),
])
def test_imagenet_folder_layout_faults_are_one_line(tmp_path, capsys, broken, expected):
    root = _imagenet_layout(tmp_path / "nette", broken)
    for split in ("train", "val"):
        if (root / split).is_dir():
            (root / split / ".ipynb_checkpoints").mkdir()  # never a class, whatever else is wrong
    args = train_args(root, tmp_path, "--model", "attention56", "--dataset", "imagenet-folder")
    assert main(args) == 1
    assert expected in error_line(capsys)


def test_an_image_that_fails_mid_run_is_one_line_and_leaves_a_checkpoint(tmp_path, capsys, one_thread):
    """ImageNet-style folders decode as they train: a damaged image stopped the run with a traceback
    that named no file and left no checkpoint (a truncated one is found before training, test_data)."""
    from PIL import Image

    root = tmp_path / "nette"
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (72, 72), (40 * i, 90, 200)).save(root / split / c / f"{i}.jpg")
    bad = root / "train" / "n02" / "1.jpg"
    bad.write_bytes(b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9")  # ends as a JPEG should, decodes as nothing
    args = train_args(root, tmp_path, "--model", "attention56", "--dataset", "imagenet-folder", "--batch-size", "2",
                      "--iterations", "6", "--train-size", "64", "--test-size", "64", "--num-workers", "1",
                      "--experiment", "nette", "--run-name", "damaged")
    assert main(args) == 1
    line = error_line(capsys)
    assert "n02/1.jpg is not a readable image" in line and "checkpoint saved to" in line
    assert ckpt.load_checkpoint(tmp_path / "c" / "nette" / "damaged" / "last.pt")["iteration"] < 6


def test_results_that_would_be_overwritten(trained, data_root, capsys):
    args = ["train", "--model", TINY_MODEL, "--dataset", "folder", "--data-root", str(data_root), "--profile",
            "smoke", "--device", "cpu", "--experiment", "cli", "--run-name", "tiny", "--results-dir",
            str(trained / "results"), "--checkpoint-dir", str(trained / "other")]
    assert main(args) == 1
    assert "already exists" in error_line(capsys)


def test_corrupt_and_mismatched_checkpoints(trained, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    assert main(["eval", "--checkpoint", str(corrupt)]) == 1
    assert "corrupt" in error_line(capsys)
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "not found" in error_line(capsys)

    state = ckpt.load_checkpoint(trained / "checkpoints" / "cli" / "tiny" / "last.pt")
    state["config"]["model"] = "cifar_attention92"  # same switches, more modules
    mismatched = tmp_path / "mismatched.pt"
    ckpt.save_checkpoint(mismatched, {k: v for k, v in state.items() if k != "format_version"})
    assert main(["eval", "--checkpoint", str(mismatched), "--device", "cpu"]) == 1
    assert "does not match the model" in error_line(capsys)


def test_python_dash_m_exits_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "ranlib", "models", "no_such_model"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("ranlib: error: unknown model 'no_such_model'") and "Traceback" not in proc.stderr


CLOSED_PIPE_SCRIPT = """
from ranlib.errors import quiet_on_closed_pipe

@quiet_on_closed_pipe
def main():
    for i in range(200_000):  # far more than a pipe buffer, so the write after the reader left fails
        print("line", i)
    return 0

raise SystemExit(main())
"""


def test_reader_closing_the_pipe_ends_a_command_quietly():
    """`campaign status | head`: the reader takes one line and leaves; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-c", CLOSED_PIPE_SCRIPT], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "line 0\n"
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert stderr == ""


@pytest.mark.parametrize("module", ["ranlib.cli", "ranlib.campaign.cli", "ranlib.bench.cli", "ranlib.study.jpeg_gap"])
def test_every_command_survives_a_closed_pipe(module):
    import importlib

    assert hasattr(importlib.import_module(module).main, "__wrapped__"), f"{module}.main is not quiet_on_closed_pipe"


# --- benchmark ------------------------------------------------------------------------------------------

def test_bench_runs_on_cpu_with_two_steps(tmp_path, capsys, one_thread):
    from ranlib.bench import cli as bench

    out = tmp_path / "bench.json"
    argv = ["--model", TINY_MODEL, "--batch-size", "2", "--steps", "2", "--warmup", "0", "--device", "cpu",
            "--baseline", "--baseline-workers", "0", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "speed-up ranlib / baseline" in printed
    record = json.loads(out.read_text())
    for path in ("ranlib", "baseline"):
        figures = record[path]
        assert figures["images_per_s"] == pytest.approx(2 / (figures["step_time_ms_mean"] / 1e3))
        assert figures["timer"] == "perf_counter" and figures["mfu"] is None  # no GPU peak on CPU
        assert figures["achieved_tflops"] == pytest.approx(6 * record["macs"] * figures["images_per_s"] / 1e12)
    assert record["ranlib"]["data"] == "gpu_batches" and record["baseline"]["data"] == "dataloader"
    assert record["speedup"] == pytest.approx(record["ranlib"]["images_per_s"] / record["baseline"]["images_per_s"])
    assert record["provenance"]["torch"] == torch.__version__
    assert record["projection"]["paper_schedule_min"] == pytest.approx(
        160_000 * 64 / record["ranlib"]["images_per_s"] / 60)
    assert bench.main(argv) == 1  # the figures file is not overwritten silently
    assert "--overwrite" in error_line(capsys)


def test_bench_of_a_224_model_feeds_device_tensors(tmp_path, capsys, one_thread):
    from ranlib.bench import cli as bench

    assert bench.main(["--model", "attention56", "--image-size", "64", "--batch-size", "1", "--steps", "1",
                       "--warmup", "0", "--device", "cpu", "--precision", "fp32", "--no-channels-last",
                       "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["attention56-64-b1-fp32-nchw.json"]
    printed = capsys.readouterr().out
    assert "at 64x64" in printed and "synthetic_device" in printed and "data loading is not measured" in printed
    assert bench.main(["--model", TINY_MODEL, "--image-size", "64", "--device", "cpu"]) == 1
    assert "32x32 CIFAR model" in error_line(capsys)


def test_bf16_peaks_by_gpu_name():
    from ranlib.bench.step import bf16_peak_tflops

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("NVIDIA GeForce GTX 1080") is None


# --- typed options ---------------------------------------------------------------

# Bad values of the string options; every other option's wrong value follows from its declared type.
BAD_STRINGS = {"experiment": ["a/b"], "run_name": [".hidden"], "model": ["resnet9000"], "dataset": ["mnist"],
               "data_root": ["{tmp}/nowhere"], "profile": ["forever"], "device": ["gpu"], "precision": ["fp8"],
               "compile_mode": ["fast", "--compile"], "results_dir": ["{tmp}/a-file/r"],
               "checkpoint_dir": ["{tmp}/a-file/c"]}


def _bad_train_options():
    """(option, extra argv, exit status, what the error must name) for every `ranlib train` option."""
    from ranlib.training.config import TRAIN_OPTIONS
    from ranlib.training.flags import TRAIN_HELP

    cases = []
    for name in TRAIN_HELP:
        option, flag = TRAIN_OPTIONS[name], "--" + name.replace("_", "-")
        if option.kind is bool:
            cases.append((name, [f"{flag}=maybe"], 2, flag))  # argparse: a flag takes no value
        elif option.kind in (int, float, list):
            cases.append((name, [flag, "abc"], 2, flag))
            low = option.minimum - 1 if option.minimum is not None else option.above
            if low is not None:
                cases.append((name, [flag, f"{low:g}"], 1, name))
        elif option.kind is dict:
            cases += [(name, [flag, f"residual_attention={v}"], 1, "residual_attention") for v in ("no", "off", "n")]
        elif name in BAD_STRINGS:
            value, *more = BAD_STRINGS[name]
            cases.append((name, [flag, value, *more], 1, flag if "a-file" in value else value.split("/")[-1]))
    # once, -1 silently dropped the last test image, -20 evaluated 4 of 24
    cases += [("max_test_samples", ["--max-test-samples", n], 1, "max_test_samples") for n in ("-1", "-20")]
    cases += [("seeds", ["--seeds", "x"], 2, "--seeds"), ("seeds", ["--seeds", "-1"], 1, "seed"),
              ("noise_levels", ["--noise-levels", "x"], 2, "--noise-levels"),
              ("noise_levels", ["--noise-levels", "1.5"], 1, "outside [0, 1)")]
    return cases


TRAIN_CASES = _bad_train_options()


@pytest.mark.parametrize("name, extra, status, named", TRAIN_CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])}" for c in TRAIN_CASES])
def test_every_train_option_rejects_a_value_of_the_wrong_type(name, extra, status, named, data_root, tmp_path,
                                                              capsys):
    """A value of the wrong type or range is one line before anything trains. A newcomer's first tries
    were --batch-size 0 (became the profile's batch), --max-test-samples -1 (dropped the last test
    image), --device gpu (a torch traceback), residual_attention=no (trained ARL)."""
    (tmp_path / "a-file").write_text("a file where a folder should be")  # a folder nothing can be written in
    argv = train_args(data_root, tmp_path, "--experiment", "typed", *[a.format(tmp=tmp_path) for a in extra])
    if status == 2:  # argparse's own check: usage and one error line
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert named in capsys.readouterr().err.strip().splitlines()[-1]
    else:
        assert main(argv) == 1
        assert named in error_line(capsys)
    assert not (tmp_path / "r").exists()  # nothing ran: no results, no checkpoint, no metrics
    assert not [p for p in (tmp_path / "c").rglob("*") if p.name in ("last.pt", "metrics.jsonl")]


def test_every_train_option_has_a_wrong_type_case():
    from ranlib.training.flags import TRAIN_HELP

    assert {c[0] for c in TRAIN_CASES} == set(TRAIN_HELP) | {"seeds", "noise_levels"}


@pytest.mark.parametrize("extra, named", [(["--batch-size", "0"], "batch_size"),
                                          (["--max-test-samples", "-1"], "max_test_samples"),
                                          (["--test-size", "0"], "test_size"), (["--device", "gpu"], "gpu")])
def test_eval_options_are_checked_before_anything_loads(trained, extra, named, capsys):
    checkpoint = trained / "checkpoints" / "cli" / "tiny" / "last.pt"
    assert main(["eval", "--checkpoint", str(checkpoint), *extra]) == 1
    assert named in error_line(capsys)


def _typed_campaign_options():
    from ranlib.campaign.cli import build_parser

    cases = []
    for command, sub in build_parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.type in (int, float) and action.option_strings:
                cases.append((command, action.option_strings[0]))
    return cases


@pytest.mark.parametrize("command, flag", _typed_campaign_options())
def test_every_typed_campaign_option_rejects_a_word(command, flag, capsys):
    from ranlib.campaign import cli as campaign

    required = {"sitting": ["--minutes", "1", "--out", "x"], "pack": ["--out", "x"]}.get(command, [])
    with pytest.raises(SystemExit) as exit_info:
        campaign.main([command, *required, flag, "abc"])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("setting, named", [("iterations=abc", "iterations"), ("resume=no", "resume"),
                                            ("batch_size=0", "batch_size"), ("device=gpu", "gpu")])
def test_campaign_set_is_typed(setting, named, tmp_path, capsys):
    from ranlib.campaign import cli as campaign

    assert campaign.main(["plan", "--experiments", "label_noise", "--profile", "smoke", "--seeds", "0",
                          "--results-dir", str(tmp_path), "--set", setting]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("ranlib: error:") and named in line and "\n" not in line
