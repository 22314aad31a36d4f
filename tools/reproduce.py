"""Run the study's notebooks through papermill and keep the executed copies for the book.

    python tools/reproduce.py --profile quick --dataset cifar10-jpeg --data-root ../shared/data/cifar10-jpeg
    python tools/reproduce.py --report-only          # re-render from results/, no training (make book)

Experiment notebooks (notebooks/<name>.ipynb) are executed into book/experiments/<name>.ipynb; the
book's own pages (book/pages/<name>.md, MyST notebooks) into book/<name>.ipynb. A failing notebook
does not stop the others: its partial copy is kept under book/_build/reproduce-failed/, the page it
would replace is left as it was, and the exit status is 1 once everything has run. Training runs
(not --report-only) append what each notebook cost to results/reproduce_ledger.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
BOOK_DIR = REPO / "book"
PAGE_SOURCE_DIR = BOOK_DIR / "pages"

# One notebook per paper experiment, in the book's order (book/_toc.yml lists the same).
NOTEBOOKS = (
    "models",
    "attention_types",
    "arl_vs_nal",
    "mask_structure",
    "label_noise",
    "cifar_sota",
    "imagenet",
    "imagewoof",
    "attention_masks",
)
# The book's own generated pages, each with the options it takes (open_choices reads no results);
# they only read results, so they run after the experiments.
PAGES = {"intro": ("results_dir",), "summary": ("results_dir",), "setup": ("results_dir",), "performance": ("results_dir",),
         "open_choices": (), "compute": ("results_dir",)}
PROFILES = ("smoke", "quick", "full", "paper")
LEDGER_FIELDS = (
    "finished_at", "notebook", "status", "duration_s", "profile", "dataset", "device",
    "device_name", "git_commit", "git_dirty", "error",
)


KERNEL_NAME = "ranlib-reproduce"  # the kernel of this interpreter that own_kernel writes for a run


class MissingKernel(Exception):
    """This interpreter cannot run a notebook kernel (no ipykernel)."""


@contextlib.contextmanager
def own_kernel():
    """The name of a kernelspec that starts this interpreter (``sys.executable``) with ipykernel,
    written to a temporary folder put first on ``JUPYTER_PATH`` while the notebooks run, so that
    they run here and not in whichever ``python3`` kernelspec comes first. Raises MissingKernel."""
    try:
        from ipykernel.kernelspec import write_kernel_spec
    except ImportError:
        raise MissingKernel(f"this interpreter ({sys.executable}) has no ipykernel to run the notebooks in; "
                            "install the project's requirements into it (make venv)") from None
    previous = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="ranlib-kernel-") as folder:
        write_kernel_spec(Path(folder) / "kernels" / KERNEL_NAME,
                          overrides={"display_name": "Python 3 (ipykernel)"})
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [folder, previous]))
        try:
            yield KERNEL_NAME
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "failed" or "missing"
    duration_s: float
    error: str = ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def _page_notebook(source: Path):
    """Read a book page written as a MyST Markdown notebook into an nbformat notebook."""
    from myst_nb.core.read import read_myst_markdown_notebook

    return read_myst_markdown_notebook(source.read_text(encoding="utf8"), path=source)


def _as_notebook(source: Path, folder: Path) -> Path:
    """``source`` itself if it is a .ipynb; a book page (.md) written as ``folder/<stem>.ipynb``."""
    import nbformat

    if source.suffix != ".md":
        return source
    path = folder / f"{source.stem}.ipynb"
    nbformat.write(_page_notebook(source), path)
    return path


def undeclared_parameters(source: Path, parameters: dict) -> str | None:
    """What is wrong, in one line, if ``parameters`` has a key ``source``'s `parameters` cell lacks.

    ``source`` (a notebook or a book page) must exist. The declared parameters are the ones
    papermill infers, so a line papermill cannot parse declares nothing.
    """
    import papermill

    with tempfile.TemporaryDirectory(prefix="ranlib-reproduce-") as tmp:
        declared = papermill.inspect_notebook(str(_as_notebook(source, Path(tmp))))
    unknown = [key for key in parameters if key not in declared]
    if not unknown:
        return None
    return (f"{source.relative_to(REPO) if source.is_relative_to(REPO) else source} does not take "
            f"parameter(s) {', '.join(unknown)}; its parameters are {', '.join(declared) or 'none'}")


def execute(name: str, source: Path, output: Path, parameters: dict, *, failed_dir: Path, kernel_name: str,
            log_output: bool, timeout: float | None, hide_parameters: bool = False) -> Outcome:
    """Execute one notebook with papermill in kernel ``kernel_name`` (:func:`own_kernel`); on success it
    replaces ``output``.

    ``parameters`` must be ones the notebook declares (:func:`undeclared_parameters`).
    Papermill's injected-parameters cell is kept (a rerun needs it) and tagged for the book like
    the notebook's own `parameters` cell: ``hide-cell`` (folded on the page: it says how the
    chapter was run), or with ``hide_parameters`` ``remove-cell`` (the book's own pages).
    """
    import nbformat
    import papermill

    if not source.exists():
        return Outcome(name, "missing", 0.0, f"{source} does not exist")
    with tempfile.TemporaryDirectory(prefix="ranlib-reproduce-") as tmp:
        scratch = Path(tmp) / output.name
        source = _as_notebook(source, Path(tmp))
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(scratch), parameters=parameters or None, cwd=str(REPO),
                kernel_name=kernel_name, progress_bar=False, log_output=log_output,
                execution_timeout=timeout,
            )
        except Exception as exc:  # papermill raises several kinds; each one is a failed notebook
            failed_dir.mkdir(parents=True, exist_ok=True)
            if scratch.exists():
                shutil.copyfile(scratch, failed_dir / scratch.name)
            return Outcome(name, "failed", time.perf_counter() - start, _one_line(exc))
        executed = nbformat.read(scratch, as_version=4)
        fold = "remove-cell" if hide_parameters else "hide-cell"
        for i, cell in enumerate(executed.cells):
            tags = cell.metadata.get("tags", [])
            cell["id"] = f"cell-{i}"  # papermill and nbformat draw random ones
            if "injected-parameters" in tags and fold not in tags:
                cell.metadata["tags"] = [*tags, fold]
            # When each cell ran: churn in every commit of a re-rendered book, and not a result.
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
        # The book publishes the executed notebook: no absolute path of this machine in it.
        from ranlib.paths import display_path

        run = executed.metadata.get("papermill", {})
        run.update({"input_path": display_path(source if source.is_relative_to(REPO) else source.name, REPO),
                    "output_path": display_path(output, REPO)})
        # papermill's own measure of the run. A render from committed results (no training) drops
        # the clock times, so that rebuilding the book changes nothing that was not re-measured.
        duration = run.get("duration")
        if not (parameters or {}).get("train"):
            for key in ("start_time", "end_time", "duration"):
                run.pop(key, None)
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(executed, output)
    return Outcome(name, "ok", float(duration if duration is not None else time.perf_counter() - start))


def device_label(device: str) -> str:
    """The GPU (or CPU) name the notebooks will run on, as the results files record it."""
    import torch

    from ranlib.training.provenance import device_name

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return device_name(device)
    except (RuntimeError, AssertionError) as exc:  # e.g. DEVICE=cuda on a machine without one
        return f"unavailable ({_one_line(exc)})"


def append_ledger(ledger: Path, outcomes: list[Outcome], args, device_name: str) -> None:
    from ranlib.training.provenance import git_state, utc_now

    commit, dirty = git_state()
    new = not ledger.exists()
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEDGER_FIELDS)
        if new:
            writer.writeheader()
        for outcome in outcomes:
            writer.writerow({
                "finished_at": utc_now(), "notebook": outcome.name, "status": outcome.status,
                "duration_s": f"{outcome.duration_s:.1f}", "profile": args.profile,
                "dataset": args.dataset or "", "device": args.device, "device_name": device_name,
                "git_commit": commit or "", "git_dirty": "" if dirty is None else str(dirty).lower(),
                "error": outcome.error,
            })


def print_summary(outcomes: list[Outcome], device_name: str) -> None:
    rows = [("notebook", "status", "duration", "device")]
    rows += [(o.name, o.status, f"{o.duration_s:.1f} s", device_name) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))
    for outcome in outcomes:
        if outcome.error:
            print(f"{outcome.name}: {outcome.error}")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="training profile passed to every notebook (default: smoke when training; "
                             "the notebooks' own default with --report-only)")
    parser.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS), metavar="NAME",
                        help=f"experiments to run (default: all of {', '.join(NOTEBOOKS)})")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: re-render every page from the results already on disk")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dataset", default=None, help="dataset name passed to the notebooks (ranlib.data.cifar.DATASETS)")
    parser.add_argument("--data-root", default=None, help="folder holding the dataset")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds passed to the notebooks")
    parser.add_argument("--results-dir", default="results", help="results folder (relative to the repository)")
    parser.add_argument("--book-dir", type=Path, default=BOOK_DIR,
                        help="where executed notebooks go (<book-dir>/experiments/<name>.ipynb, <book-dir>/<page>.ipynb)")
    parser.add_argument("--no-pages", action="store_true", help="run the experiments only, not the book's pages")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="cost ledger CSV (default: <results-dir>/reproduce_ledger.csv; never written with --report-only)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks executed at once (default: 2 with --report-only, else 1 so that "
                             "trainings do not share a GPU unasked)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds one notebook cell may run (default: no limit)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.notebooks if name not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebook {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    if not args.report_only and args.profile is None:
        args.profile = "smoke"
    if args.jobs is None:
        args.jobs = 2 if args.report_only else 1
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1 (got {args.jobs})")
    return args


def parameters_for(args) -> dict:
    """The notebooks' tagged `parameters` cell values to override; unset options keep the notebook's default."""
    parameters = {"results_dir": args.results_dir, "train": not args.report_only, "device": args.device}
    optional = {"profile": args.profile, "dataset": args.dataset, "data_root": args.data_root, "seeds": args.seeds}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    return parameters


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))  # so that `python tools/reproduce.py` finds ranlib without installing it
    device_name = device_label(args.device)
    book_dir = args.book_dir.resolve()
    failed_dir = book_dir / "_build" / "reproduce-failed"
    parameters = parameters_for(args)
    mode = "report only (train=False)" if args.report_only else f"train=True, profile {args.profile}"
    print(f"reproduce: {len(args.notebooks)} notebook(s), {mode}, device {args.device} ({device_name})", flush=True)

    ledger = None if args.report_only else args.ledger or REPO / args.results_dir / "reproduce_ledger.csv"
    ledger_lock = threading.Lock()

    def run_all(jobs: list[tuple[str, Path, Path, dict, bool]]) -> list[Outcome]:
        """Execute (name, source, output, parameters, is_page) jobs, ``args.jobs`` at a time, in order."""
        def one(job):
            name, source, output, job_parameters, is_page = job
            print(f"-> {name}", flush=True)
            outcome = execute(name, source, output, job_parameters, failed_dir=failed_dir, kernel_name=kernel,
                              log_output=not args.report_only and not is_page, timeout=args.timeout,
                              hide_parameters=is_page)
            if ledger is not None and not is_page:
                # Recorded as each training notebook ends, so a run cut short keeps what it spent.
                with ledger_lock:
                    append_ledger(ledger, [outcome], args, device_name)
            return outcome
        # Threads suffice: each notebook runs in its own kernel process.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            return list(pool.map(one, jobs))

    experiments = [(name, NOTEBOOK_DIR / f"{name}.ipynb", book_dir / "experiments" / f"{name}.ipynb",
                    parameters, False) for name in args.notebooks]
    pages = [] if args.no_pages else [
        (f"page:{name}", PAGE_SOURCE_DIR / f"{name}.md", book_dir / f"{name}.ipynb",
         {key: getattr(args, key) for key in options}, True) for name, options in PAGES.items()]
    # A parameter a notebook does not declare would change nothing there: refuse before running any.
    for _, source, _, job_parameters, _ in experiments + pages:
        problem = source.exists() and undeclared_parameters(source, job_parameters)
        if problem:
            print(f"reproduce: error: {problem}", file=sys.stderr)
            return 2
    try:
        with own_kernel() as kernel:
            outcomes = run_all(experiments)
            # The book's pages read results only, after the experiments have written theirs.
            outcomes += run_all(pages)
    except MissingKernel as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2

    print_summary(outcomes, device_name)
    failed = [o.name for o in outcomes if o.status != "ok"]
    if failed:
        print(f"reproduce: {len(failed)} of {len(outcomes)} failed: {', '.join(failed)} "
              f"(partial notebooks in {failed_dir})", file=sys.stderr)
        return 1
    print(f"reproduce: all {len(outcomes)} notebooks ran; executed copies in {book_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
