"""Which runs an experiment needs, which results records are the same training, and training them.

The campaign (:mod:`ranlib.campaign`), the notebooks and the command lines plan through here:
:func:`plan_runs` gives the :class:`ranlib.training.config.TrainConfig` arguments of every run of an
experiment, :func:`same_training` and :func:`find_training` find a run already trained (one
training of Attention-56 serves Tables 1, 3 and 4), :func:`train_experiment` trains what is
missing through :func:`ranlib.training.loop.run` only, and :func:`load_records` reads back every record
an experiment's page shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ranlib.paths import resolve_path
from ranlib.training.results import load_results, results_path

from .experiments import EXPERIMENTS, Row, experiment, record_noise_level, with_model_defaults
from .ledger import charged_device_s, with_charged_time


def run_name(row: Row, profile: str, seed: int) -> str:
    """A planned run's name before its identity suffix (:func:`named`)."""
    return f"{row.key}-{profile}-s{seed}"


def named(config: dict) -> dict:
    """``config`` with its run name ending in the identity suffix its training calls for
    (:func:`ranlib.training.config.identity_suffix`: ``-bB`` for a batch other than the profile's, a digest
    for other fields that change the training), in place of any suffix it had; two planned
    trainings never share a name. Raises :class:`ranlib.errors.ConfigError` for a config that
    does not resolve, naming the run."""
    from ranlib.training.config import IDENTITY_SUFFIX, identity_suffix, resolve_fields

    base = IDENTITY_SUFFIX.sub("", config["run_name"])
    resolved = resolve_fields({**config, "run_name": base}, f"the planned run {config.get('experiment')}/{base}")
    return {**config, "run_name": base + identity_suffix(resolved)}


def plan_runs(name: str, *, profile: str, seeds: Sequence[int], dataset: str, data_root: str,
              results_dir: str | os.PathLike = "results",
              checkpoint_dir: str | os.PathLike = "checkpoints", device: str = "auto",
              rows: Sequence[str] | None = None, overrides: dict | None = None) -> list[dict]:
    """The ``TrainConfig`` keyword arguments of every run an experiment needs.

    ``rows`` picks row keys (default: the smoke subset for ``profile="smoke"``, else all rows of
    the experiment's dataset: CIFAR-100 rows only when ``dataset`` is ``cifar100``).
    ``overrides`` go into every config (e.g. ``{"iterations": 4}`` for a test); a run whose
    overrides change its training gets a name of its own (:func:`named`).
    """
    exp = experiment(name)
    if rows is None:
        rows = exp.smoke_rows if profile == "smoke" else [
            r.key for r in exp.rows if r.cifar100 == (dataset == "cifar100")]
    known = {r.key for r in exp.rows}
    unknown = [k for k in rows if k not in known]
    if unknown:
        raise ValueError(f"unknown row(s) {unknown} for experiment {name!r}; valid: "
                         f"{', '.join(sorted(known))}")
    plan = []
    for key in rows:
        row = exp.row(key)
        for seed in seeds:
            config = dict(experiment=name, run_name=run_name(row, profile, seed), model=row.model,
                          model_kwargs=dict(row.kwargs), dataset=dataset,
                          data_root=str(resolve_path(data_root)), profile=profile, seed=int(seed),
                          results_dir=str(resolve_path(results_dir)),
                          checkpoint_dir=str(resolve_path(checkpoint_dir)), device=device)
            if row.noise_level:
                config["noise_level"] = row.noise_level
            config.update(overrides or {})
            plan.append(named(config))
    return plan


# What makes two trainings the same one (with the plan's overrides, see `same_training`).
_TRAINING_KEYS = ("model", "dataset", "profile", "seed")


def same_training(config: dict, record: dict) -> bool:
    """Whether ``record`` is a run of the training ``config`` (a :func:`plan_runs` entry) asks
    for: same model and switches (defaults filled in), data, label noise, profile and seed, and
    the same value of every extra field the config sets (overrides such as ``iterations``).
    Experiment, run name, folders and device do not count."""
    done = record["config"]
    if any(done.get(k) != config.get(k) for k in _TRAINING_KEYS):
        return False
    if with_model_defaults(done.get("model_kwargs")) != with_model_defaults(config.get("model_kwargs")):
        return False
    if record_noise_level(record) != float(config.get("noise_level") or 0.0):
        return False
    from ranlib.training.config import RESUMABLE_CHANGES

    # Fields a resumed run may change do not change what is trained (compiling, checkpointing...).
    extra = set(config) - set(_TRAINING_KEYS) - _NOT_TRAINING - RESUMABLE_CHANGES
    return all(done.get(k) == config[k] for k in extra)


# plan_runs fields that name where a run goes, not what it trains.
_NOT_TRAINING = {"experiment", "run_name", "model_kwargs", "noise_level", "data_root", "results_dir",
                 "checkpoint_dir", "device"}


def find_training(config: dict, results_dir: str | os.PathLike) -> dict | None:
    """A record under ``results_dir`` (any experiment's folder) of the same training as
    ``config``, so that it is not trained twice; None when there is none."""
    root = resolve_path(results_dir)
    for name in EXPERIMENTS:
        for record in _folder_records(root, name):
            if same_training(config, record):
                return record
    return None


def train_experiment(name: str, *, skip_existing: bool = True, max_group: int = 8, **plan_kwargs) -> list[dict]:
    """Train :func:`plan_runs`'s configs through :func:`ranlib.training.loop.run_group`; returns their records.

    A run is skipped (``skip_existing``) when its results file exists or another experiment
    already trained the same thing (:func:`find_training`: Attention-56 with mixed attention,
    ARL and the encoder-decoder mask is one row of Tables 1, 3 and 4), so re-running a notebook
    with ``train=True`` only trains what is missing. The rest train as fused groups of up to
    ``max_group`` runs (:func:`group_runs`), each exactly as if trained alone.
    """
    from ranlib.training.config import TrainConfig
    from ranlib.training.loop import run_group

    records: dict[int, dict] = {}
    missing = []
    configs = plan_runs(name, **plan_kwargs)
    for i, config in enumerate(configs):
        path = results_path(config["results_dir"], config["experiment"], config["run_name"])
        if skip_existing and path.is_file():
            [records[i]] = load_results(path)
            continue
        done = find_training(config, config["results_dir"]) if skip_existing else None
        if done is not None:
            records[i] = done
        else:
            missing.append(i)
    position = {id(configs[i]): i for i in missing}
    for group in group_runs([configs[i] for i in missing], max_group):
        trained = run_group([TrainConfig(**config) for config in group])
        records.update({position[id(config)]: record for config, record in zip(group, trained)})
    return [records[i] for i in range(len(configs))]


def train_commands(name: str, *, profile: str = "quick", seed: int = 0) -> str:
    """The commands that produce an experiment's results (for a page that has none yet): the
    batch rerun, then one ``ranlib train`` line per run of one seed."""
    import shlex

    from ranlib.training.flags import train_argv

    exp = experiment(name)
    lines = [f"make reproduce PROFILE={profile} NOTEBOOKS={name}",
             "# or, several trainings at once on one GPU, then `make book`:",
             f"python -m ranlib.campaign run --experiments {name} --profile {profile} --dataset {exp.dataset} "
             f"--data-root {exp.data_root} --device cuda --concurrent 4",
             "# or, run by run:"]
    # Planned as for a GPU, as the campaign line above: on a CPU, resolving would time each model's
    # batch (ranlib.training.cpu_batch), and the book's commands would change with the machine that renders it.
    for config in plan_runs(name, profile=profile, seeds=[seed], dataset=exp.dataset,
                            data_root=exp.data_root, device="cuda"):
        # plan_runs resolves folders to absolute paths; the commands keep the defaults.
        shown = {k: v for k, v in config.items()
                 if k not in ("results_dir", "checkpoint_dir", "device") and v != {}}
        shown["data_root"] = exp.data_root
        lines.append(shlex.join(["python", "-m", "ranlib", "train", *train_argv(shown)]))
    return "\n".join(lines)


def _folder_records(root: Path, name: str) -> list[dict]:
    folder = root / name
    return load_results(folder) if folder.is_dir() else []


def load_records(results_dir: str | os.PathLike, name: str, *, shared: bool = True) -> list[dict]:
    """Every validated record under ``<results_dir>/<name>/``; empty when there is none.

    ``shared``: also the records in other experiments' folders that are runs of one of this
    experiment's rows (one training of Attention-56 serves Tables 1, 3 and 4), each listed once
    and counted in the compute ledger of the experiment that trained it.
    """
    root = resolve_path(results_dir)
    records = _folder_records(root, name)
    if shared and name in EXPERIMENTS:
        rows = experiment(name).rows
        records += [r for other in EXPERIMENTS if other != name
                    for r in _folder_records(root, other) if any(row.matches(r) for row in rows)]
    return with_charged_time(records, charged_device_s(root))


# What the members of one fused group may differ in (ranlib.training.config.check_group): the run's name,
# seed, label noise and the ARL/NAL switch.
_MEMBER_FIELDS = ("experiment", "run_name", "seed", "noise_level", "model_kwargs")


def group_runs(runs: Sequence[dict], max_members: int = 8) -> list[list[dict]]:
    """Planned runs gathered into fused groups of at most ``max_members``, in the order of their
    first run: runs join a group when everything but seed, noise level and ARL/NAL is the same."""
    if max_members < 1:
        raise ValueError(f"a fused group holds at least one run, not {max_members}")
    groups: list[list[dict]] = []
    open_group: dict[str, list[dict]] = {}
    for config in runs:
        switches = with_model_defaults(config.get("model_kwargs"))
        switches.pop("residual_attention")
        shared = {k: v for k, v in config.items() if k not in _MEMBER_FIELDS}
        key = json.dumps([shared, switches], sort_keys=True, default=str)
        group = open_group.get(key)
        if group is None or len(group) >= max_members:
            group = open_group[key] = []
            groups.append(group)
        group.append(config)
    return groups


def training_size(config: dict) -> dict:
    """Images and multiply-adds a planned run trains on (a training step costs about three
    forward passes), from the resolved schedule and the model variant's counts."""
    from ranlib.models.complexity import model_counts
    from ranlib.training.config import TrainConfig, resolve

    resolved = resolve(TrainConfig(**config))
    images = resolved.iterations * resolved.batch_size
    macs = model_counts(config["model"], config.get("model_kwargs"), input_size=resolved.train_size)["macs"]
    return {"iterations": resolved.iterations, "batch_size": resolved.batch_size, "images": images,
            "train_macs": 3 * macs * images}


# The order a CPU trains the study in, by claims per CPU-hour (the first finished runs settle the most claims): (why, rows as
# (experiment, row key)), each part seed by seed. A planned run takes the place of the first row it
# is a training of, whichever experiment planned it (Attention-56 with the default switches is
# Table 1's mixed row, Table 3's ARL row and Table 4's encoder-decoder row).
CPU_ORDER = (
    ("the Attention-56 rows: mixed/ARL (Tables 1, 3 and 4), NAL, channel, spatial, the local mask",
     (("attention_types", "attention56-mixed"), ("arl_vs_nal", "attention56-nal"),
      ("attention_types", "attention56-channel"), ("attention_types", "attention56-spatial"),
      ("mask_structure", "attention56-local"))),
    ("Table 5 at 70 % and 50 % noise, the clean Attention-92 and ResNet-164 (Table 6's ordering) and "
     "Table 3's Attention-92 NAL",
     (("label_noise", "attention92-noise70"), ("label_noise", "resnet164-noise70"),
      ("label_noise", "attention92-noise50"), ("label_noise", "resnet164-noise50"),
      ("arl_vs_nal", "attention92-arl"), ("arl_vs_nal", "resnet164"), ("arl_vs_nal", "attention92-nal"))),
    ("Attention-164 ARL/NAL (Table 3's largest gap, Figure 4's stage responses)",
     (("arl_vs_nal", "attention164-arl"), ("arl_vs_nal", "attention164-nal"))),
)


def cpu_order(runs: Sequence[dict]) -> list[tuple[str, dict]]:
    """Planned runs in :data:`CPU_ORDER`, each with the name of its part: each part's rows for the
    first seed, then for the next, part after part; the runs of no part ("the rest") follow in
    their planned order."""
    seeds = sorted({config["seed"] for config in runs})
    rows = [(part, experiment(name).row(key)) for part, (_, keys) in enumerate(CPU_ORDER) for name, key in keys]

    def rank(item: tuple[int, dict]) -> tuple:
        index, config = item
        record = {"model": {"name": config["model"], "kwargs": config.get("model_kwargs")},
                  "dataset": {"name": config["dataset"]}, "config": config}
        for position, (part, row) in enumerate(rows):
            if row.matches(record):
                return part, seeds.index(config["seed"]), position
        return len(CPU_ORDER), index

    ranked = sorted(((rank(item), item[1]) for item in enumerate(runs)), key=lambda pair: pair[0])
    return [(CPU_ORDER[r[0]][0] if r[0] < len(CPU_ORDER) else "the rest", config) for r, config in ranked]
