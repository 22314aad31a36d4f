"""Write the study's papermill notebooks, notebooks/<experiment>.ipynb, from one template.

    python tools/make_notebooks.py            # (re)write every notebook
    python tools/make_notebooks.py --check    # exit 1 if a committed notebook differs from this script

The notebooks stay thin: every table and verdict is a call into ranlib.study.report and every plot into
ranlib.study.plots (unit-tested in tests/test_report.py); training goes through ranlib.training.loop.run via
planning.train_experiment. Paper numbers never appear here: claims and rows come from
ranlib.study.experiments.EXPERIMENTS, built from ranlib.study.paper. Prose cites numbers and verdicts through myst-nb glue keys only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ranlib.study.experiments import EXPERIMENTS  # noqa: E402
from ranlib.study.verdicts import JPEG_LABEL  # noqa: E402

KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}

# How a chapter is made (its parameters, papermill's injected ones, the set-up) stays in the
# executed notebook for reruns but is folded on the page; the reader meets the claim, the tables,
# the verdicts and the figures first. Result cells show their output and fold their code.
# (The paths note lives once on the Rerun page, book/rerun.md.)
FOLDED = {"tags": ["hide-cell"]}
CODE_FOLDED = {"tags": ["hide-input"]}


def parameters_cell(name: str, extra: str = "") -> nbformat.NotebookNode:
    exp = EXPERIMENTS.get(name)
    dataset = exp.dataset if exp else "cifar10-jpeg"
    data_root = exp.data_root if exp else ".data/cifar10-jpeg"
    source = f'''\
profile = "quick"  # training budget: "smoke" (seconds on a CPU) | "quick" | "paper" (ranlib.training.recipes.PROFILES)
seeds = [0, 1]
dataset = "{dataset}"  # a ranlib.data.cifar.DATASETS name
data_root = "{data_root}"
device = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
results_dir = "results"  # results/<experiment>/*.json are read from (and written to) here
checkpoint_dir = "checkpoints"
train = False  # True: train the runs that have no results yet (ranlib.training.loop.run); False: report only
rows = None  # row keys to train (None: all rows; the smoke profile trains a small subset)
train_overrides = {{}}  # extra ranlib.training.config.TrainConfig fields for every run, e.g. {{"iterations": 4}}
''' + extra
    return new_code_cell(source, metadata={"tags": ["parameters", "hide-cell"]})


def setup_cell(name: str, modules: str = "planning, plots, report, status") -> nbformat.NotebookNode:
    return new_code_cell(f'''\
import sys
from pathlib import Path

# Use this checkout's ranlib even when it is not installed (papermill may start us in notebooks/).
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "pyproject.toml").is_file()), None)
if ROOT is not None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from myst_nb import glue

from ranlib.study import {modules}
from ranlib.options import check_notebook_parameters
from ranlib.paths import display_path, resolve_path

EXPERIMENT = "{name}"
check_notebook_parameters(EXPERIMENT, globals())  # one line if a parameter has the wrong type (-p train false)
RESULTS = resolve_path(results_dir)
print(f"results: {{display_path(RESULTS / EXPERIMENT)}}; data: {{display_path(resolve_path(data_root))}} ({{dataset}})")''',
                         metadata=FOLDED)


def train_cell(name: str, guard: str = "") -> nbformat.NotebookNode:
    return new_code_cell(f'''\
if train and not resolve_path(data_root).exists():
    display(Markdown(report.missing_data_markdown(EXPERIMENT, dataset, data_root))){guard}
elif train:
    planning.train_experiment(EXPERIMENT, profile=profile, seeds=seeds, dataset=dataset,
                              data_root=data_root, results_dir=results_dir,
                              checkpoint_dir=checkpoint_dir, device=device, rows=rows,
                              overrides=train_overrides)
records = planning.load_records(RESULTS, EXPERIMENT)
if not records:
    display(Markdown(status.no_results_markdown(EXPERIMENT, RESULTS)))''', metadata={"tags": ["hide-input"]})


def intro(name: str) -> nbformat.NotebookNode:
    exp = EXPERIMENTS[name]
    return new_markdown_cell(
        f"# {exp.title}\n\n**Claim checked.** {exp.claim}\n\n"
        "Paper numbers come from `ranlib.study.paper` and are labelled as the paper's. Ours come from "
        f"the results files in `results/{name}/`, written by `ranlib.training.loop.run` (final model, never "
        "the best epoch), each with its budget, hardware, precision, data and cost. Every number "
        f"measured on the JPEG copy of CIFAR-10 is labelled *{JPEG_LABEL}*. The rule each verdict "
        "follows is stated beside the verdicts.")


def table_cells(name: str) -> list[nbformat.NotebookNode]:
    return [
        new_markdown_cell("## Paper vs ours\n\nOne line per row of the paper's table and budget we ran "
                          "it at: top-1 error in %, ours as the mean ± sample std over seeds (n seeds), "
                          "and ours − paper in points of top-1 error."),
        new_code_cell(f"table = report.show_results(EXPERIMENT, records)\n"
                      f"glue(\"{name}_table\", table, display=False)", metadata=CODE_FOLDED),
        new_markdown_cell("## Verdicts"),
        new_code_cell("claims = report.claims_table(EXPERIMENT, records, RESULTS)\n"
                      "report.glue_claims(EXPERIMENT, records, claims)\n"
                      "report.show_claims(EXPERIMENT, records, claims, RESULTS)", metadata=CODE_FOLDED),
        new_code_cell("ax = plots.plot_learning_curves(EXPERIMENT, records)\n"
                      "if ax is not None:\n    plt.show()", metadata=CODE_FOLDED),
    ]


def experiment_notebook(name: str, extra_cells: list | None = None, *, extra_params: str = "",
                        train_guard: str = "") -> nbformat.NotebookNode:
    shows_tables = any("tables.show(" in "".join(cell.source) for cell in extra_cells or [])
    cells = [intro(name), parameters_cell(name, extra_params),
             setup_cell(name, "planning, plots, report, status" + (", tables" if shows_tables else "")),
             train_cell(name, train_guard), *table_cells(name), *(extra_cells or [])]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL})


def arl_vs_nal() -> nbformat.NotebookNode:
    return experiment_notebook("arl_vs_nal", [
        new_markdown_cell("## Stage responses (Figure 4)\n\nMean absolute response of each "
                          "stage's output on a fixed batch of test images, normalised to stage 1 (log "
                          "scale): the values read off the paper's Figure 4 (Attention-164 ARL and NAL, "
                          "ResNet-164), and ours for every row we trained, named with its depth and "
                          "budget (the paper's curves are Attention-164; ours are the depths we ran). "
                          "NAL's products of masks should make the later stages' responses collapse."),
        new_code_cell("responses = plots.responses_frame(EXPERIMENT, records)\n"
                      "ax = plots.plot_stage_responses(EXPERIMENT, records)\nplt.show()\n"
                      "if not responses.empty:\n"
                      '    tables.show(plots.responses_table(responses), digits=3)', metadata=CODE_FOLDED),
    ])


def label_noise() -> nbformat.NotebookNode:
    return experiment_notebook("label_noise", [
        new_markdown_cell("## Error vs noise level\n\nTable 5 as a plot: ours (mean ± sd over "
                          "seeds, per budget) beside the paper's. The test set stays clean."),
        new_code_cell("ax = plots.plot_error_vs_noise(records)\nplt.show()", metadata=CODE_FOLDED),
        new_markdown_cell("## The noise we injected"),
        new_code_cell("noise = plots.noise_frame(records)\n"
                      "if noise.empty:\n"
                      "    display(Markdown(\"Once a label-noise run exists, this section shows each run's requested \"\n"
                      "                     \"vs achieved flip rate and the noisiest run's transition matrix.\"))\n"
                      "else:\n"
                      "    display(Markdown(\"Requested vs achieved flip rate of every run (labels are drawn per \"\n"
                      "                     \"sample from Q, so the achieved rate scatters around the requested \"\n"
                      "                     \"one), and the empirical transition matrix of the noisiest run.\"))\n"
                      "    noisiest = max((r for r in records if r.get(\"noise\")), key=lambda r: r[\"noise\"][\"level\"])\n"
                      "    plots.plot_transition_matrix(noisiest)\n"
                      "    plt.show()\n"
                      "    tables.show(noise.rename(columns={\"level\": \"requested\", \"achieved_rate\": \"achieved\"}),\n"
                      "                [\"network\", \"seed\", \"requested\", \"achieved\"], formats=plots.NOISE_FORMATS)",
                      metadata=CODE_FOLDED),
    ])


def imagenet() -> nbformat.NotebookNode:
    guard = ('\nelif train and dataset != "imagenet-folder":\n'
             '    display(Markdown(f"**Not run here:** this notebook trains ImageNet models and needs '
             'an ImageNet-style folder (`dataset=\\"imagenet-folder\\"`), not `{dataset}`."))')
    return experiment_notebook("imagenet", [
        new_markdown_cell("Any ImageNet-style folder works (`<root>/train/<class>/*`, "
                          "`<root>/val/<class>/*`): the full ImageNet, or a subset such as "
                          "Imagenette for a cheap check of the orderings. Absolute errors are "
                          "judged only on the full ImageNet; a subset's numbers are not the "
                          "paper's experiment."),
    ], train_guard=guard)


def imagewoof() -> nbformat.NotebookNode:
    exp = EXPERIMENTS["imagewoof"]
    intro_cell = new_markdown_cell(
        f"# {exp.title}\n\n**Claim checked.** {exp.claim}\n\nFull ImageNet cannot be had here. "
        "What can be shown honestly is Table 7's networks, with the ImageNet training pipeline "
        "(RandomResizedCrop, flips, PCA lighting; the single centre crop for testing), on real "
        "photos at small scale: Imagewoof, fast.ai's ten dog breeds of ImageNet with its official "
        "split, at 112 px (`ranlib.data.imagewoof`). Every number here is labelled *Imagewoof (10 "
        "ImageNet dog classes, 112 px)*; the paper's ImageNet errors appear only as the paper's, "
        "for the ordering they claim, and are never compared with ours as numbers. "
        "Inception-ResNet-v1/v2 are left out: they are not ranlib models. Our results come from "
        "`results/imagewoof/` (final model, never the best epoch); the verdict rules are in "
        "`ranlib.study.verdicts`' docstring.")
    guard = ('\nelif train and dataset != "imagewoof":\n'
             '    display(Markdown(f"**Not run here:** this chapter trains on Imagewoof '
             '(`dataset=\\"imagewoof\\"`), not `{dataset}`."))\n'
             'elif train and profile == "paper":\n'
             '    display(Markdown("**Not run here:** there is no paper budget for Imagewoof (the paper '
             'never trained on it); use `profile=\\"quick\\"`."))')
    budget = 'profile if profile != "paper" else "quick"'
    body = [
        new_markdown_cell("## The recipe\n\nThe ImageNet recipe's optimiser and schedule shape, cut to "
                          "{glue:md}`imagewoof_epochs` epochs of Imagewoof's 9,025 training images: "
                          "{glue:md}`imagewoof_recipe`. The estimate below is 6 FLOPs per multiply-add "
                          "per training image (forward and backward) at an assumed share of the "
                          "H200's dense bf16 peak, plus a start-up per training process: an "
                          "assumption until `python -m ranlib.bench` measures it (the open-choices page says "
                          "why these numbers). Both seeds of a network train as one fused process "
                          "(`ranlib train --seeds 0 1`). All rows, 2 seeds: "
                          "{glue:md}`imagewoof_estimate`."),
        new_code_cell(f'''\
plan = imagewoof.schedule({budget})
glue("imagewoof_epochs", Markdown(f"{{plan['epochs']:.0f}}"), display=False)
glue("imagewoof_recipe", Markdown(
    f"batch {{plan['batch_size']}}, lr {{plan['lr']:g}} (SGD, momentum {{plan['momentum']:g}}, weight decay "
    f"{{plan['weight_decay']:g}}), {{plan['iterations']}} iterations, lr / 10 at {{plan['milestones']}}, linear "
    f"warm-up over {{plan['warmup_iterations']}} iterations ({{plan['warmup_epochs']:.1f}} epochs), "
    f"{{plan['train_size']}} px crops"), display=False)
cost = imagewoof.cost_table({budget}, seeds=2)
estimates = [c for c in cost.columns if c.startswith("est.")]
glue("imagewoof_estimate", Markdown(
    f"about {{cost[estimates[0]].iloc[-1] / 3600:.2f}} GPU-hours at "
    f"{{100 * imagewoof.ASSUMED_MFU:.0f}} % of the peak, {{cost[estimates[1]].iloc[-1] / 3600:.2f}} at "
    f"{{100 * imagewoof.PESSIMISTIC_MFU:.0f}} %"), display=False)
tables.show(cost, formats=imagewoof.FORMATS)''', metadata=CODE_FOLDED),
        new_markdown_cell("## Ours\n\nOne line per network and budget: top-1 error on Imagewoof's "
                          "3,929 validation images (mean ± sample std over seeds), parameters (10-way "
                          "classifier) and multiply-adds at the input size, epochs, the CPU- or "
                          "GPU-hours it cost. The paper's ImageNet parameters and error stand beside "
                          "as context for the orderings only."),
        new_code_cell('table = imagewoof.results_table(records)\n'
                      'glue("imagewoof_table", table, display=False)\n'
                      'tables.show(table, ["network", "top-1 error (%)", "params (M)", "GMACs", "budget"],\n'
                      '            details=["network", "input", "epochs", "seeds", "cost", "trained on",\n'
                      '                     "paper ImageNet params (M)", "paper ImageNet top-1 (%)"],\n'
                      '            summary="Input, epochs, seeds, cost and the paper\'s ImageNet figures",\n'
                      '            formats=imagewoof.FORMATS)',
                      metadata=CODE_FOLDED),
        new_markdown_cell("## Verdicts\n\nNo absolute claims: the paper gives no Imagewoof numbers. Its "
                          "*paper* column is the ImageNet gap of Table 7, for the ordering it claims."),
        new_code_cell("claims = report.claims_table(EXPERIMENT, records, RESULTS)\n"
                      "report.glue_claims(EXPERIMENT, records, claims)\n"
                      "report.show_claims(EXPERIMENT, records, claims, RESULTS)", metadata=CODE_FOLDED),
        new_markdown_cell("## Context: a public yardstick\n\nfast.ai's leaderboard trains Imagewoof "
                          "at 128 px with its own recipe and tricks; its error at the epoch count "
                          "nearest ours ({glue:md}`imagewoof_leaderboard`) is context, not a target."),
        new_code_cell(f'''\
context = imagewoof.leaderboard_context(records, {budget})
line = context.iloc[0]
glue("imagewoof_leaderboard", Markdown(
    f"{{line['leaderboard top-1 error (%)']:.2f}} % top-1 error after {{line['leaderboard epochs']}} epochs; "
    f"ours: {{line['our top-1 error (%), best – worst network']}}"), display=False)
tables.show(context, ["our epochs", "our top-1 error (%), best – worst network", "leaderboard epochs",
                      "leaderboard top-1 error (%)"], details=["best", "worst", "leaderboard"],
            summary="Networks and source")''', metadata=CODE_FOLDED),
        new_code_cell("ax = plots.plot_learning_curves(EXPERIMENT, records)\n"
                      "if ax is not None:\n    plt.show()", metadata=CODE_FOLDED),
    ]
    return new_notebook(cells=[intro_cell, parameters_cell("imagewoof"),
                               setup_cell("imagewoof", "imagewoof, planning, plots, report, status, tables"),
                               train_cell("imagewoof", guard), *body],
                        metadata={"kernelspec": KERNEL})


def models() -> nbformat.NotebookNode:
    intro_cell = new_markdown_cell(
        "# Model size and cost (Tables 2, 6, 7)\n\n**Claim checked.** Our models have the "
        "parameter counts and multiply-adds the paper gives (Tables 2, 6 and 7), and the ImageNet "
        "attention networks match the official Caffe deploy files' counts exactly (conv + FC + "
        "BN scale/shift; multiply-adds at 224×224).\n\nCounts are exact, so there are no seeds "
        "and no training budget; the verdict rule for counts is in `ranlib.study.verdicts`.")
    params = parameters_cell("models", '''\
complexity_file = "results/models/complexity.json"  # (re)written when train is True; else read if present
model_names = []  # models to count (empty: every registered model)
''')
    body = [
        new_code_cell('''\
if train:  # count again and keep the counts (with provenance) as this experiment's results
    complexity.write_complexity(complexity_file, model_names or None)
entries = complexity.read_complexity(complexity_file)
if entries is not None:
    source = f"read from `{display_path(resolve_path(complexity_file))}`"
else:
    entries = complexity.complexity_entries(model_names or None)
    source = (f"computed live with `ranlib.complexity` in this notebook "
              f"(`{display_path(resolve_path(complexity_file))}` does not exist)")
glue("models_source", Markdown(source), display=False)
display(Markdown(f"Counts {source}."))''', metadata=CODE_FOLDED),
        new_markdown_cell("## Ours vs the paper vs the official deploy files"),
        new_code_cell('table = complexity.complexity_table(entries)\n'
                      'glue("models_table", table, display=False)\n'
                      'tables.show(table, complexity.COMPLEXITY_COLUMNS, details=complexity.COMPLEXITY_DETAILS,\n'
                      '            summary="Input sizes and differences in %", digits=3,\n'
                      '            formats=complexity.COMPLEXITY_FORMATS)',
                      metadata=CODE_FOLDED),
        new_markdown_cell("## Verdicts"),
        new_code_cell('''\
claims = complexity.complexity_claims(entries)
glue("models_verdicts", Markdown(", ".join(f"{n} {v}" for v, n in claims["verdict"].value_counts().items())), display=False)
tables.show(claims, ["claim", "paper", "ours", "verdict", "reason"], details=["claim", "delta"],
            summary="Differences", digits=3, formats={"paper": "{:g}"})''', metadata=CODE_FOLDED),
        new_markdown_cell("Counts {glue:md}`models_source`. Verdicts over every count the paper "
                          "or the deploy files give: {glue:md}`models_verdicts`."),
    ]
    setup = setup_cell("models", "complexity, tables")
    return new_notebook(cells=[intro_cell, params, setup, *body], metadata={"kernelspec": KERNEL})


def attention_masks() -> nbformat.NotebookNode:
    exp = EXPERIMENTS["attention_masks"]
    intro_cell = new_markdown_cell(
        f"# {exp.title}\n\n**Idea checked.** {exp.claim}\n\nEach picture shows a test image and, left to "
        "right, every attention module's soft mask M(x) averaged over channels and upsampled to the image. "
        "A figure's data is kept as a small file under `results/attention_masks/`, written from the trained "
        "checkpoint where it was trained (`plots.write_checkpoint_masks`), so the book shows it without "
        "the checkpoint (hundreds of MB, never committed).")
    params = parameters_cell("attention_masks", '''\
checkpoint = None  # a CIFAR Attention-56 last.pt; None: the latest under checkpoint_dir, if any
masks_file = None  # the CIFAR figure's data, kept; None: <results_dir>/attention_masks/cifar_attention56_masks.npz
num_images = 4
woof_checkpoint = None  # an Imagewoof Attention-56 last.pt; None: the imagewoof chapter's run, if any
woof_masks_file = None  # the Imagewoof figure's data; None: <results_dir>/attention_masks/imagewoof_attention56_masks.npz
woof_num_images = 6
''')
    body = [
        new_markdown_cell("## On CIFAR-10 test images"),
        new_code_cell('''\
masks_file = resolve_path(masks_file) if masks_file else RESULTS / "attention_masks" / plots.CIFAR_MASKS_NAME
path = (resolve_path(checkpoint) if checkpoint
        else plots.latest_checkpoint(checkpoint_dir, records, model="cifar_attention56"))
if path is not None and path.is_file() and (train or checkpoint or not masks_file.is_file()):
    plots.write_checkpoint_masks(path, masks_file, num_images=num_images, device=device)
cifar = plots.read_masks(masks_file)
if cifar is None:
    display(Markdown("Once an Attention-56 is trained on CIFAR-10, this shows its masks on the first test "
                     f"images. It needs that run's checkpoint and one command:\\n\\n```bash\\n"
                     f"{plots.masks_command(display_path(masks_file))}\\n```"))
else:
    images, masks, source = cifar
    display(Markdown(f"Masks of `{source}`: {plots.masks_label(source, records)}. Each panel is scaled to its "
                     "own range (printed under it). A mask near 1 passes the trunk's features through; with "
                     "attention residual learning the output is (1 + M)·T, so a mask never suppresses them "
                     "below the trunk."))
    fig = plots.plot_masks(images, masks, max_images=num_images)
    glue("attention_masks_figure", fig, display=False)
    plt.show()''', metadata=CODE_FOLDED),
        new_markdown_cell("## On real photos (Imagewoof)\n\nFigure 1 is about real photos: a sky "
                          "mask and a balloon mask. Masks on 32 × 32 CIFAR images say little, so here "
                          "is an Attention-56 trained in the Imagewoof chapter (ImageNet layout, "
                          "112 px) with each stage's soft mask beside a validation photo (the first "
                          "photo of each breed in turn, at the test crop)."),
        new_code_cell('''\
from ranlib.study import imagewoof

woof_masks_file = (resolve_path(woof_masks_file) if woof_masks_file
                   else RESULTS / "attention_masks" / plots.WOOF_MASKS_NAME)
woof_records = planning.load_records(RESULTS, "imagewoof")
woof_path = (resolve_path(woof_checkpoint) if woof_checkpoint
             else plots.latest_checkpoint(checkpoint_dir, woof_records, model="attention56"))
if woof_path is not None and woof_path.is_file() and (
        train or woof_checkpoint or not woof_masks_file.is_file()):
    plots.write_checkpoint_masks(woof_path, woof_masks_file, num_images=woof_num_images, device=device)
woof = plots.read_masks(woof_masks_file)
if woof is None:
    display(Markdown("Once an Attention-56 is trained on Imagewoof (about a GPU minute), this shows its masks "
                     "on photos. It needs that run and its masks written:\\n\\n"
                     f"```bash\\n{imagewoof.masks_commands()}\\n```"))
else:
    images, masks, woof_source = woof
    display(Markdown(f"Masks of `{woof_source}`: {plots.masks_label(woof_source, woof_records)}. Each panel "
                     "is scaled to its own range (printed under it)."))
    fig = plots.plot_masks(images, masks, max_images=woof_num_images)
    glue("attention_masks_woof_figure", fig, display=False)
    plt.show()''', metadata=CODE_FOLDED),
    ]
    return new_notebook(cells=[intro_cell, params, setup_cell("attention_masks"),
                               train_cell("attention_masks"), *body],
                        metadata={"kernelspec": KERNEL})


NOTEBOOKS = {
    "models": models,
    "attention_types": lambda: experiment_notebook("attention_types"),
    "arl_vs_nal": arl_vs_nal,
    "mask_structure": lambda: experiment_notebook("mask_structure"),
    "label_noise": label_noise,
    "cifar_sota": lambda: experiment_notebook("cifar_sota", [new_markdown_cell(
        "The CIFAR-100 rows show the paper's numbers only until a run with `dataset=\"cifar100\"` "
        "(the official data, `download=True` on a machine with internet) writes results.")]),
    "imagenet": imagenet,
    "imagewoof": imagewoof,
    "attention_masks": attention_masks,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed notebooks instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for name, build in NOTEBOOKS.items():
        nb = build()
        for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
            cell["id"] = f"{name}-{i}"
        text = nbformat.writes(nb)
        path = REPO / "notebooks" / f"{name}.ipynb"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"stale notebooks (run python tools/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
