"""Every notebook runs through papermill: trained in the smoke profile on tiny data made here (CPU),
and rendered from an empty results folder (the "no results yet" page).

Smoke runs here are cut to one iteration of two images and the cheapest rows of each table
(``rows=``), so that a notebook takes well under a minute on two CPU cores; the profile's own
subset (``experiments.EXPERIMENTS[...].smoke_rows``) is what ``make reproduce PROFILE=smoke`` trains.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
papermill = pytest.importorskip("papermill")
pytest.importorskip("myst_nb")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
PAGE_DIR = REPO / "book" / "pages"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["arl_vs_nal", "attention_masks", "attention_types", "cifar_sota", "imagenet",
            "imagewoof", "label_noise", "mask_structure", "models"]
# The Imagewoof chapter trains on a tiny slice of the shared file (skipped where it is absent).
WOOF_ROOT = REPO.parent / "shared" / "data" / "imagewoof"
COMMON_PARAMETERS = ("profile", "seeds", "dataset", "data_root", "device", "results_dir", "train")

# The cheapest rows per notebook (attention56 where the table has it) and a one-step schedule.
TINY_TRAINING = {"iterations": 1, "batch_size": 2, "max_train_samples": 8, "max_test_samples": 4,
                 "num_workers": 0}
SMOKE_ROWS = {
    "attention_types": ["attention56-mixed", "attention56-spatial"],
    "arl_vs_nal": ["attention56-arl", "attention56-nal"],
    "mask_structure": ["attention56-encoder_decoder", "attention56-local"],
    "label_noise": ["resnet164-noise70"],
    "cifar_sota": ["resnet164"],
    "imagenet": ["attention56"],
    "imagewoof": ["attention56", "resnet152"],  # both sides of the first ordering
    "attention_masks": ["attention56"],
}
# Counting every registered model (ImageNet ones at 224) is too slow for a test.
MODEL_NAMES = ["cifar_attention56", "cifar_resnet164"]
GLUE_REFERENCE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")


def _write_images(root: Path, split: str, classes: int, per_class: int, size: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / split / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image[..., c % 3] = 20 * c  # a little signal per class
            Image.fromarray(image).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 10-class 32x32 `folder` dataset and a 2-class 64x64 `imagenet-folder` one."""
    root = tmp_path_factory.mktemp("data")
    _write_images(root / "cifar", "train", 10, 2, 32, 0)
    _write_images(root / "cifar", "test", 10, 1, 32, 1)
    _write_images(root / "imagenet", "train", 2, 4, 64, 2)
    _write_images(root / "imagenet", "val", 2, 2, 64, 3)
    return root


def _parameters(name: str, data: Path, results: Path, checkpoints: Path, train: bool) -> dict:
    params = {"profile": "smoke", "seeds": [0], "device": "cpu", "train": train,
              "results_dir": str(results), "checkpoint_dir": str(checkpoints),
              "dataset": "folder", "data_root": str(data / "cifar"),
              "train_overrides": dict(TINY_TRAINING)}
    if name == "imagenet":
        params.update(dataset="imagenet-folder", data_root=str(data / "imagenet"))
        params["train_overrides"].update(train_size=64, test_size=64)
    if name == "imagewoof":
        if not (WOOF_ROOT / "imagewoof-112.npz").is_file():
            pytest.skip(f"the shared Imagewoof file is not on this machine ({WOOF_ROOT})")
        params.update(dataset="imagewoof", data_root=str(WOOF_ROOT))
    if name == "attention_masks":
        params["woof_masks_file"] = str(results / "attention_masks" / "woof.npz")
    if name == "models":
        params["model_names"] = MODEL_NAMES
        params["complexity_file"] = str(results / "models" / "complexity.json")
    if name in SMOKE_ROWS:
        params["rows"] = SMOKE_ROWS[name]
    return params


def _execute(name: str, out: Path, params: dict, cwd: Path):
    source = NOTEBOOK_DIR / f"{name}.ipynb"
    assert set(params) <= set(papermill.inspect_notebook(str(source))), "a parameter the notebook lacks"
    papermill.execute_notebook(str(source), str(out), parameters=params,
                               kernel_name="python3", cwd=str(cwd), progress_bar=False)
    return nbformat.read(out, as_version=4)


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            for key, value in output.get("data", {}).items():
                if key.startswith(("text/", "application/papermill.record/text")):
                    parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def _glued_keys(nb) -> set[str]:
    """Names myst_nb.glue stored (it tags each glued output's metadata with "scrapbook")."""
    return {output["metadata"]["scrapbook"]["name"] for cell in nb.cells
            for output in cell.get("outputs", []) if "scrapbook" in output.get("metadata", {})}


def _check_glue_references_resolve(nb):
    """Every {glue:...}`key` in the prose has a glued output (else the book build warns)."""
    referenced = {key for cell in nb.cells if cell.cell_type == "markdown"
                  for key in GLUE_REFERENCE.findall(cell.source)}
    glued = _glued_keys(nb)
    assert referenced <= glued, f"glue keys cited but never glued: {sorted(referenced - glued)}"


def test_every_experiment_has_a_notebook_generated_from_the_template():
    assert NOTEBOOKS == EXPECTED
    spec = importlib.util.spec_from_file_location("make_notebooks", REPO / "tools" / "make_notebooks.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)  # in-process: ranlib (and torch) are already imported
    assert generator.main(["--check"]) == 0, "notebooks/ differ from tools/make_notebooks.py"


def _assigned_names(source: str) -> set[str]:
    """Every name a cell's top-level statements assign (``a = ...``, ``a: int = ...``, ``a = b = ...``)."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("source", [*(NOTEBOOK_DIR / f"{n}.ipynb" for n in EXPECTED),
                                    *sorted(PAGE_DIR.glob("*.md"))], ids=lambda p: p.name)
def test_papermill_sees_every_parameter_the_parameters_cell_assigns(source, tmp_path):
    """papermill skips a line it cannot parse (say, a second ``=`` in the comment): no parameter hides."""
    from myst_nb.core.read import read_myst_markdown_notebook

    if source.suffix == ".md":  # a book page, run as a MyST notebook (tools/reproduce.py)
        nb = read_myst_markdown_notebook(source.read_text(encoding="utf8"), path=source)
        source = tmp_path / f"{source.stem}.ipynb"
        nbformat.write(nb, source)
    nb = nbformat.read(source, as_version=4)
    assigned = {name for c in nb.cells if "parameters" in c.metadata.get("tags", [])
                for name in _assigned_names(c.source)}
    assert set(papermill.inspect_notebook(str(source))) == assigned


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_structure(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "**Claim checked.**" in first.source or "**Idea checked.**" in first.source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for parameter in COMMON_PARAMETERS:
        assert re.search(rf"^{parameter} = ", tagged[0].source, re.M), parameter
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit notebooks without outputs (the book renders executed copies)"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "optimizer" not in code and ".backward(" not in code, "training code belongs in ranlib"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_trains_and_renders_in_the_smoke_profile(name, tiny_data, tmp_path):
    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    params = _parameters(name, tiny_data, results, checkpoints, train=True)
    nb = _execute(name, tmp_path / f"{name}.ipynb", params, NOTEBOOK_DIR)
    _check_glue_references_resolve(nb)
    text = _text_outputs(nb)
    if name == "models":
        assert "read from" in text  # train=True wrote the counts, then the notebook read them
        written = json.loads((results / "models" / "complexity.json").read_text())
        assert [e["name"] for e in written["models"]] == MODEL_NAMES
        assert written["provenance"]["git_commit"]
        return
    written = sorted(p.stem for p in (results / name).glob("*.json"))
    from ranlib.study import planning

    planned = planning.plan_runs(name, profile="smoke", seeds=[0], dataset=params["dataset"],
                                 data_root=params["data_root"], rows=SMOKE_ROWS[name],
                                 overrides=params["train_overrides"])
    assert written == sorted(c["run_name"] for c in planned)
    assert all(n.startswith(f"{row}-smoke-s0-b2-c") for n, row in zip(written, sorted(SMOKE_ROWS[name])))
    record = json.loads((results / name / f"{written[0]}.json").read_text())
    assert record["config"]["profile"] == "smoke"
    if name == "attention_masks":
        assert "image/png" in json.dumps([c.get("outputs") for c in nb.cells])
        assert "Not run here" not in text
    else:
        assert "not run here (smoke only)" in text
        assert "Not run here: no results" not in text
    if name == "label_noise":
        assert record["noise"]["level"] == 0.7


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_without_results_says_so_and_gives_the_command(name, tiny_data, tmp_path):
    results = tmp_path / "empty-results"
    nb = _execute(name, tmp_path / f"{name}.ipynb",
                  _parameters(name, tiny_data, results, tmp_path / "ckpt", train=False), REPO)
    _check_glue_references_resolve(nb)
    text = _text_outputs(nb)
    assert not results.exists() or not any(results.rglob("*.json")), "train=False wrote results"
    if name == "models":
        assert "computed live" in text  # no counts file: counted in the notebook, and said so
        return
    # Said once, with what running the chapter needs, not in every table.
    assert text.count("Not run here") == 1 and "Running it needs" in text
    assert f"make reproduce PROFILE=quick NOTEBOOKS={name}" in text
    assert f"python -m ranlib train --experiment {name}" in text


@pytest.mark.slow
def test_notebook_reports_missing_data_instead_of_failing(tmp_path):
    params = _parameters("mask_structure", tmp_path / "no-data", tmp_path / "r", tmp_path / "c",
                         train=True)
    nb = _execute("mask_structure", tmp_path / "out.ipynb", params, REPO)
    text = _text_outputs(nb)
    assert "Not run here: no data." in text
    assert not (tmp_path / "r").exists()


# --- typed parameters ------------------------------------------------------------

PAGES_WITH_PARAMETERS = sorted(p.stem for p in PAGE_DIR.glob("*.md") if "[parameters" in p.read_text())


def _inspected(name: str, tmp_path: Path) -> set[str]:
    source = NOTEBOOK_DIR / f"{name}.ipynb"
    if not source.is_file():  # a book page, as tools/reproduce.py runs it
        from myst_nb.core.read import read_myst_markdown_notebook

        page = PAGE_DIR / f"{name}.md"
        source = tmp_path / f"{name}.ipynb"
        nbformat.write(read_myst_markdown_notebook(page.read_text(encoding="utf8"), path=page), source)
    return set(papermill.inspect_notebook(str(source)))


@pytest.mark.parametrize("name", EXPECTED + PAGES_WITH_PARAMETERS)
def test_every_notebook_parameter_has_a_declared_type(name, tmp_path):
    from ranlib.options import notebook_parameters

    assert set(notebook_parameters(name)) == _inspected(name, tmp_path)


def _wrong_parameter_cases():
    from ranlib.options import notebook_parameters

    wrong = {bool: "false", int: "4", str: 5, list: "0 1", dict: "{}"}
    return [(name, parameter, wrong[option.kind]) for name in EXPECTED + PAGES_WITH_PARAMETERS
            for parameter, option in notebook_parameters(name).items()]


@pytest.mark.parametrize("name, parameter, value", _wrong_parameter_cases())
def test_every_notebook_parameter_rejects_a_value_of_the_wrong_type(name, parameter, value):
    from ranlib.errors import ConfigError
    from ranlib.options import check_notebook_parameters

    with pytest.raises(ConfigError, match=f"notebook parameter {parameter} must be"):
        check_notebook_parameters(name, {parameter: value})


@pytest.mark.slow
def test_papermill_train_false_as_a_string_is_refused_before_training(tiny_data, tmp_path):
    """``papermill ... -p train false`` passes the string "false", which is true: it used to train."""
    params = _parameters("label_noise", tiny_data, tmp_path / "results", tmp_path / "checkpoints", train=True)
    params["train"] = "false"
    with pytest.raises(papermill.PapermillExecutionError, match="notebook parameter train must be true or false"):
        _execute("label_noise", tmp_path / "out.ipynb", params, REPO)
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()
