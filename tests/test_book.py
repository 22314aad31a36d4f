"""The book: it builds from the committed results with broken references as errors, and the HTML
holds the paper's numbers, our tables and, where there are no results, says so.

The build renders every notebook the way `make book` does (tools/reproduce.py --report-only,
then `jupyter-book build` with -W -n --keep-going), into a copy of book/ so the working tree is
left alone. Set RANLIB_BOOK_ARTIFACTS=<folder> to keep the built HTML (.ci/run screenshots it).
"""

from __future__ import annotations

import html
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ranlib.study import compute, paper, planning, report, status, tables, verdicts
from ranlib.study.experiments import EXPERIMENTS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JPEG_LABEL = "CIFAR-10 (JPEG q75 copy)"

pytestmark = pytest.mark.slow  # one worker runs this whole module (Makefile: --dist loadfile)


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "tools" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


reproduce = load_reproduce()


def toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    return [toc["root"]] + [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]


def page_text(path: Path) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    markup = re.sub(r"<(script|style)\b.*?</\1>", " ", path.read_text(encoding="utf8"), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup)))


def says(words: str, text: str) -> bool:
    """Whether ``words`` appear in ``text``, with straight or typographic apostrophes (Sphinx
    curls those of the prose, not those of raw HTML tables)."""
    return words in text or words.replace("'", "’") in text


def shows(value: float, text: str) -> bool:
    """Whether ``value`` appears in ``text`` as pandas or a person would print it."""
    return any(re.search(rf"(?<![\d.]){re.escape(form)}(?!\d)", text)
               for form in {f"{value:g}", f"{value:.2f}", f"{value:.1f}", f"{value:.6f}"})


# ------------------------------------------------------------------------------------------
# Cheap checks of the book's sources


def test_toc_lists_every_notebook_and_page_reproduce_writes():
    expected = [*[f"experiments/{n}" for n in reproduce.NOTEBOOKS], *reproduce.PAGES, "rerun"]
    assert sorted(toc_files()) == sorted(expected)
    assert toc_files()[0] == "intro" and "intro" in reproduce.PAGES  # the first page opens with the status
    for name in reproduce.PAGES:
        assert (REPO / "book" / "pages" / f"{name}.md").is_file(), f"book/pages/{name}.md is missing"
    assert (REPO / "book" / "rerun.md").is_file()
    assert not (REPO / "book" / "intro.md").exists(), "a static intro.md would shadow the rendered one"


def test_config_is_found_from_book_and_keeps_execution_off():
    from jupyter_book.cli.main import find_config_path

    folder, found = find_config_path(REPO / "book")
    assert found and folder == REPO, "jupyter-book build book/ must find the top-level _config.yml"
    assert not (REPO / "book" / "_config.yml").exists(), "a second config under book/ would shadow the top one"
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    assert {"dollarmath", "colon_fence"} <= set(config["parse"]["myst_enable_extensions"])
    assert "suppress_warnings" not in config.get("sphinx", {}).get("config", {}), \
        "suppressing warnings would hide broken references"
    # Jupyter Book's own extensions, less sphinx_thebe (it writes its setup script twice per page).
    from jupyter_book.config import get_default_sphinx_config

    defaults = [name for name in get_default_sphinx_config()["extensions"] if name != "sphinx_thebe"]
    assert config["sphinx"]["config"]["extensions"] == defaults


def test_pages_have_no_typed_in_measurements():
    """Numbers in the book come from results files; the hand-written pages hold none."""
    decimal = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
    allowed = {"1704.06904"}  # the paper's arXiv id
    sources = sorted((REPO / "book").glob("*.md")) + sorted((REPO / "book" / "pages").glob("*.md"))
    assert sources
    for source in sources:
        found = set(decimal.findall(source.read_text())) - allowed
        assert not found, f"{source.relative_to(REPO)} types in numbers {sorted(found)}: glue them from results"


# ------------------------------------------------------------------------------------------
# tools/reproduce.py on notebooks of its own


def write_notebook(path: Path, *cells: str, parameters: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(cell) for cell in cells]
    nbformat.write(nb, path)


def test_reproduce_runs_past_a_failure_keeps_outputs_and_records_cost(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    params = 'profile = "quick"\ntrain = False\nresults_dir = "results"\ndevice = "auto"'
    write_notebook(notebooks / "attention_types.ipynb", "raise RuntimeError('this notebook fails')",
                   parameters=params)
    write_notebook(notebooks / "mask_structure.ipynb", "assert train and profile == 'smoke'\nprint('trained')",
                   parameters=params)
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", notebooks)
    book, ledger = tmp_path / "book", tmp_path / "ledger.csv"

    status = reproduce.main(["--profile", "smoke", "--device", "cpu", "--no-pages", "--book-dir", str(book),
                             "--ledger", str(ledger), "--notebooks", "attention_types", "mask_structure",
                             "models"])

    assert status == 1
    out = capsys.readouterr().out
    table = out[out.index("notebook  "):]
    assert re.search(r"attention_types\s+failed", table) and re.search(r"mask_structure\s+ok", table)
    assert re.search(r"models\s+missing", table)
    assert "this notebook fails" in out
    # The good notebook ran after the failing one, with the parameters it was given.
    import nbformat

    executed = nbformat.read(book / "experiments" / "mask_structure.ipynb", as_version=4)
    assert any("trained" in "".join(o.get("text", "") for o in c.get("outputs", [])) for c in executed.cells)
    assert executed.metadata["papermill"]["duration"] > 0
    assert not (book / "experiments" / "attention_types.ipynb").exists()
    assert (book / "_build" / "reproduce-failed" / "attention_types.ipynb").exists()
    import csv

    rows = list(csv.DictReader(ledger.open()))
    assert [(r["notebook"], r["status"]) for r in rows] == [
        ("attention_types", "failed"), ("mask_structure", "ok"), ("models", "missing")]
    assert all(r["profile"] == "smoke" and r["device"] == "cpu" and r["device_name"] for r in rows)
    assert float(rows[1]["duration_s"]) > 0


def test_reproduce_refuses_a_parameter_the_notebook_does_not_declare_before_running_any(
        tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    # papermill skips a line with a second "=" in its comment: `device` is not a parameter here.
    write_notebook(notebooks / "models.ipynb", "print('ran')", parameters=(
        'results_dir = "results"\ntrain = False\ndevice = "auto"  # cuda=fast'))
    write_notebook(notebooks / "imagenet.ipynb", "print('ran')",
                   parameters='results_dir = "results"\ntrain = False\ndevice = "auto"')
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", notebooks)
    book = tmp_path / "book"

    status = reproduce.main(["--report-only", "--device", "cpu", "--book-dir", str(book),
                             "--notebooks", "imagenet", "models"])

    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reproduce: error: ")
    assert "models.ipynb does not take parameter(s) device; its parameters are results_dir, train" in err[0]
    assert not book.exists(), "a notebook ran"


def test_reproduce_runs_the_notebooks_in_this_interpreter(tmp_path, monkeypatch, capsys):
    """the kernel was named "python3", so another python3 kernelspec earlier on
    JUPYTER_PATH ran the notebooks in another interpreter (or killed them)."""
    import json
    import sys

    import nbformat

    elsewhere = tmp_path / "jupyter" / "kernels" / "python3"
    elsewhere.mkdir(parents=True)
    (elsewhere / "kernel.json").write_text(json.dumps({"argv": ["/bin/false", "{connection_file}"],
                                                       "display_name": "someone else's Python", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "models.ipynb", "import sys\nprint(sys.executable)",
                   parameters='results_dir = "results"\ntrain = False\ndevice = "auto"')
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", notebooks)
    book = tmp_path / "book"
    assert reproduce.main(["--report-only", "--no-pages", "--book-dir", str(book), "--notebooks", "models"]) == 0
    executed = nbformat.read(book / "experiments" / "models.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == sys.executable
    assert executed.metadata["kernelspec"]["name"] == "python3"  # the page's metadata stays as committed
    assert reproduce.os.environ["JUPYTER_PATH"] == str(tmp_path / "jupyter")  # restored

    monkeypatch.setitem(sys.modules, "ipykernel.kernelspec", None)  # an interpreter without ipykernel
    capsys.readouterr()
    assert reproduce.main(["--report-only", "--no-pages", "--book-dir", str(book), "--notebooks", "models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reproduce: error: this interpreter") and "ipykernel" in err[0]


def test_every_notebook_and_page_takes_the_options_reproduce_passes_it():
    args = reproduce.parse_args(["--profile", "quick", "--dataset", "d", "--data-root", "r", "--seeds", "0"])
    for name in reproduce.NOTEBOOKS:
        assert reproduce.undeclared_parameters(reproduce.NOTEBOOK_DIR / f"{name}.ipynb",
                                               reproduce.parameters_for(args)) is None
    for name, options in reproduce.PAGES.items():
        assert reproduce.undeclared_parameters(reproduce.PAGE_SOURCE_DIR / f"{name}.md",
                                               dict.fromkeys(options)) is None


def test_reproduce_refuses_an_unknown_notebook_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.parse_args(["--notebooks", "attention_type"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown notebook attention_type" in err and "attention_types" in err


def test_report_only_trains_nothing_and_keeps_notebook_defaults():
    args = reproduce.parse_args(["--report-only"])
    assert reproduce.parameters_for(args) == {"results_dir": "results", "train": False, "device": "auto"}
    args = reproduce.parse_args(["--profile", "quick", "--dataset", "cifar10-jpeg", "--data-root", "d",
                                 "--seeds", "0", "1"])
    assert reproduce.parameters_for(args) == {
        "results_dir": "results", "train": True, "device": "auto", "profile": "quick",
        "dataset": "cifar10-jpeg", "data_root": "d", "seeds": [0, 1]}


# ------------------------------------------------------------------------------------------
# The built book


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("book")
    shutil.copy(REPO / "_config.yml", root / "_config.yml")
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("_build"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    render = subprocess.run([sys.executable, str(REPO / "tools" / "reproduce.py"), "--report-only",
                             "--book-dir", str(root / "book")], cwd=REPO, env=env, capture_output=True,
                            text=True)
    assert render.returncode == 0, f"re-rendering from results failed:\n{render.stdout[-4000:]}\n{render.stderr[-4000:]}"
    # Exactly as typed in the README, from the folder holding _config.yml.
    build = subprocess.run([str(BIN / "jupyter-book"), "build", "book/", "-W", "-n", "--keep-going"],
                           cwd=root, env=env, capture_output=True, text=True)
    assert build.returncode == 0, f"the book build failed or warned:\n{build.stdout[-6000:]}\n{build.stderr[-3000:]}"
    site = root / "_build" / "html"
    if os.environ.get("RANLIB_BOOK_ARTIFACTS"):
        keep = Path(os.environ["RANLIB_BOOK_ARTIFACTS"]) / "html"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(site, keep)
    return site


def test_every_toc_page_is_built(built_book):
    assert (built_book / "index.html").is_file()
    for name in toc_files():
        assert (built_book / f"{name}.html").is_file(), f"{name}.html was not built"


@pytest.mark.parametrize("page", ["intro", "summary"])
def test_the_intro_and_the_summary_open_with_the_status_box(built_book, page):
    claims = report.claims_summary(REPO / "results")
    groups = status.split_claims(claims)
    markup = _article(built_book / f"{page}.html")
    box = markup.index("Where the study stands")
    assert box < markup.index("reproducibility study" if page == "intro" else "What the verdicts mean")
    assert re.search(r'<div class="(important admonition|admonition important)">\s*'
                     r'<p class="admonition-title">Where the study stands',
                     markup), f"{page}: the status box is not an admonition"
    text = page_text(built_book / f"{page}.html")
    # what was run, how many claims were judged and how, what is not run and what it needs
    assert "Run:" in text and "Judged:" in text and "Not run:" in text
    judged = status.judged_claims(groups["paper"])
    assert says(f"{len(judged)} of the paper's {len(groups['paper'])} claims ({status.counts_text(judged)})", text)
    # the brackets break down the judged claims; the unjudged are counted under "Not run" only
    assert not re.search(r"Judged: \d+ of the paper's \d+ claims \([^)]*not run here", text)
    assert says(f"{len(groups['proxy'])} claims of Table 7's orderings on the Imagewoof proxy", text)
    assert f"{len(groups['facts'])} architecture counts" in text


def test_summary_holds_every_claim_with_the_papers_number_and_ours(built_book):
    claims = report.claims_summary(REPO / "results")
    text = page_text(built_book / "summary.html")
    assert "What the verdicts mean" in text
    for verdict, meaning in verdicts.LEGEND.items():
        assert verdict in text and says(meaning, text)
    for claim in claims.to_dict("records"):
        assert claim["claim"] in text, f"claim {claim['claim']!r} missing from the summary"
        for column in ("paper", "ours"):
            value = claim[column]
            if isinstance(value, float) and not math.isnan(value):
                assert shows(value, text), f"{column} number {value} of {claim['claim']!r} missing"


PAPER_NUMBERS = {
    "attention_types": list(paper.TABLE1_ATTENTION_TYPE.values()),
    "arl_vs_nal": [err for row in paper.TABLE3_ARL_NAL.values() for err in row.values()],
    "mask_structure": list(paper.TABLE4_MASK_STRUCTURE.values()),
    "label_noise": [err for row in paper.TABLE5_LABEL_NOISE.values() for err in row.values()],
    "cifar_sota": [row[1] for row in paper.TABLE6_CIFAR.values()],
    "imagenet": [row["top1"] for name, row in paper.TABLE7_IMAGENET.items() if row["params"] is not None],
    "models": [row["params"] for row in paper.TABLE7_IMAGENET.values() if row["params"] is not None],
}


@pytest.mark.parametrize("name", sorted(PAPER_NUMBERS))
def test_experiment_pages_show_the_papers_numbers_in_a_table(built_book, name):
    page = built_book / "experiments" / f"{name}.html"
    assert "<table" in page.read_text(encoding="utf8"), f"{name} has no table"
    text = page_text(page)
    missing = [value for value in PAPER_NUMBERS[name] if not shows(value, text)]
    assert not missing, f"{name}.html lacks the paper's numbers {missing}"


@pytest.mark.parametrize("name", [n for n in reproduce.NOTEBOOKS if n != "models"])
def test_experiment_pages_show_our_runs_or_say_there_are_none(built_book, name):
    text = page_text(built_book / "experiments" / f"{name}.html")
    records = planning.load_records(REPO / "results", name)
    if not records:
        assert "Not run here: no results for this chapter" in text and "make reproduce" in text
        assert "Running it needs" in text
        return
    for record in records:
        if record["dataset"]["id"].startswith("cifar10-jpeg"):
            assert JPEG_LABEL in text, f"{name} shows JPEG-copy numbers without the {JPEG_LABEL!r} label"


def test_setup_states_the_jpeg_caveat_and_compute_page_the_ledger(built_book):
    assert JPEG_LABEL in page_text(built_book / "setup.html")
    page = page_text(built_book / "compute.html")
    ledger = compute.compute_ledger(REPO / "results").set_index("experiment")
    assert f"from {int(ledger.loc['total', 'runs'])} training runs" in page


def test_performance_page_shows_benchmarks_or_the_command(built_book):
    text = page_text(built_book / "performance.html")
    if sorted((REPO / "results" / "performance").glob("*.json")):
        assert "<table" in (built_book / "performance.html").read_text(encoding="utf8")
    else:
        assert "No performance results yet" in text and "python -m ranlib.bench" in text


def test_open_choices_page_lists_every_choice(built_book):
    from ranlib.models.choices import OPEN_CHOICES

    text = page_text(built_book / "open_choices.html")
    assert OPEN_CHOICES, "ranlib.models.choices.OPEN_CHOICES is empty"
    for choice in OPEN_CHOICES:
        assert says(choice["topic"], text)


def test_no_page_shows_the_building_machines_absolute_paths(built_book):
    """Pages show paths relative to the repository; never where the book was built or run."""
    machine = {str(REPO), str(REPO.resolve()), str(built_book.parent.parent),
               str(Path.home()) + "/", str(Path(os.environ.get("TMPDIR", "/tmp")).resolve()) + "/"}
    pages = sorted(built_book.rglob("*.html"))
    assert pages
    for page in pages:
        markup = page.read_text(encoding="utf8")
        found = sorted(path for path in machine if path in markup)
        assert not found, f"{page.relative_to(built_book)} shows {found}"


def test_chapters_fold_their_parameters_and_show_tables_without_an_index(built_book):
    """The reader meets results first: parameters cells (the notebook's and papermill's) are
    folded, no table carries pandas' index or NaN, and no chapter repeats the paths note."""
    for name in reproduce.NOTEBOOKS:
        markup = (built_book / "experiments" / f"{name}.html").read_text(encoding="utf8")
        for tag in ("tag_parameters", "tag_injected-parameters"):
            cell = re.search(rf'<div class="cell {tag}[^"]*"', markup)
            assert cell and "tag_hide-cell" in cell.group(0), f"{name}: {tag} cell is not folded"
        assert "NaN" not in page_text(built_book / "experiments" / f"{name}.html"), name
        assert 'class="blank level0' not in markup and "<th class=\"row_heading" not in markup, \
            f"{name}: a table shows its index"
        assert "relative ones are taken from the repository root" not in markup, name
    assert "relative ones are taken from the repository root" in page_text(built_book / "rerun.html")


def test_every_verdict_row_shows_the_papers_number(built_book):
    """In every chapter and on the summary, each claim's row carries the paper's number as printed,
    whether or not it has been run."""
    summary = page_text(built_book / "summary.html")
    for name, exp in EXPERIMENTS.items():
        if not exp.claims:
            continue
        text = page_text(built_book / "experiments" / f"{name}.html")
        claims = report.claims_table(name, planning.load_records(REPO / "results", name))
        for line in claims.to_dict("records"):
            shown = line["paper_text"]
            assert shown != tables.MISSING and says(shown, text), f"{name}: {line['claim']!r} lacks {shown!r}"
            assert says(shown, summary), f"summary: {line['claim']!r} lacks {shown!r}"


def test_summary_rows_link_to_their_claim_in_the_chapter(built_book):
    markup = (built_book / "summary.html").read_text(encoding="utf8")
    links = re.findall(r'<a href="experiments/(\w+)\.html#(claim-[\w-]+)">', markup)
    claims = report.claims_summary(REPO / "results")
    assert len(links) == int((claims["kind"] != "complexity").sum())
    for page, anchor in links:
        chapter = (built_book / "experiments" / f"{page}.html").read_text(encoding="utf8")
        assert f'id="{anchor}"' in chapter, f"{page}.html has no {anchor}"


def _article(path: Path) -> str:
    markup = path.read_text(encoding="utf8")
    start = markup.find("<article")
    return markup[start:markup.find("</article>", start)] if start >= 0 else markup


def test_rerun_anything_is_a_link_wherever_it_is_named(built_book):
    for page in sorted(built_book.rglob("*.html")):
        if page.name in ("rerun.html", "search.html", "genindex.html") or "_static" in page.parts:
            continue
        article = _article(page)
        for found in re.finditer("Rerun anything", article):
            before = article[:found.start()]
            assert before.rfind("<a ") > before.rfind("</a>"), f"{page.name}: 'Rerun anything' is not a link"


def test_public_pages_speak_of_gpu_hours_not_of_our_machinery(built_book):
    """"lease", "sitting" and "device min" are the tooling's words; outside code (command names)
    the book says GPU-hours and a time-limited GPU slot."""
    for page in sorted(built_book.rglob("*.html")):
        if "_static" in page.parts or page.name in ("search.html", "genindex.html"):
            continue
        article = re.sub(r"<(code|pre)\b.*?</\1>", " ", _article(page), flags=re.S)
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", article))).lower()
        for word in ("lease", "sitting", "device min"):
            assert not re.search(rf"\b{word}", text), f"{page.relative_to(built_book)} says {word!r}"
