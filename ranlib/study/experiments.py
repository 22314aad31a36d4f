"""The paper's experiments as data: for each table, the rows it trains and the claims it checks.

An :class:`Experiment` is one notebook and one chapter of the book: its :class:`Row` objects
say what is trained (model, switches, label noise) and the paper's numbers for it, its
:class:`Claim` objects what is judged (:mod:`ranlib.study.verdicts`). Paper numbers come from
:mod:`ranlib.study.paper` only. :meth:`Row.matches` decides which results records are runs of a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import paper

# What a record's model kwargs mean when they leave a variant out (the models' defaults).
MODEL_DEFAULTS = {"attention": "mixed", "residual_attention": True, "mask": "encoder_decoder"}


def with_model_defaults(model_kwargs: dict | None) -> dict:
    """Model switches with every variant the kwargs leave out set to the models' default."""
    return {**MODEL_DEFAULTS, **(model_kwargs or {})}


def record_noise_level(record: dict) -> float:
    """The label-noise level a results record was trained with (0.0 for clean labels)."""
    noise = record.get("noise")
    level = noise.get("level") if noise else record.get("config", {}).get("noise_level")
    return float(level or 0.0)


def _is_cifar100(record: dict) -> bool:
    return str(record["dataset"].get("name", "")).startswith("cifar100")


def _is_imagewoof(record: dict) -> bool:
    return record["dataset"].get("name") == "imagewoof"


@dataclass(frozen=True)
class Row:
    """One line of a paper table: a model variant, optionally at a label-noise level."""

    key: str
    label: str
    model: str
    kwargs: dict = field(default_factory=dict)
    noise_level: float | None = None
    paper_error: float | None = None
    paper_top5: float | None = None
    test_size: int | None = None  # Table 7's test crop (224, 299 or 320 px)
    cifar100: bool = False  # Table 6's CIFAR-100 column
    imagewoof: bool = False  # a row of the Imagewoof chapter: its runs are Imagewoof runs, and only they

    def matches(self, record: dict) -> bool:
        """Whether a results record is a run of this row."""
        model = record["model"]
        if model["name"] != self.model:
            return False
        # Every switch counts, defaults filled in: a NAL run is not Table 1's mixed-attention row.
        if with_model_defaults(model.get("kwargs")) != with_model_defaults(self.kwargs):
            return False
        if record_noise_level(record) != (self.noise_level or 0.0):
            return False
        # An Imagewoof run of Attention-56 is not a run of Table 7's ImageNet row, nor the reverse.
        return _is_cifar100(record) == self.cifar100 and _is_imagewoof(record) == self.imagewoof


@dataclass(frozen=True)
class Claim:
    """A statement of the paper that a table checks.

    ``kind`` is ``"absolute"`` (row ``rows[0]``'s error equals the paper's), ``"ordering"``
    (``rows[0]`` has a lower error than ``rows[1]``), ``"parity"`` (``rows[0]`` and ``rows[1]``
    have the same error: :func:`ranlib.study.verdicts.judge_parity`) or ``"response"`` (Figure 4:
    ``rows[0]`` keeps a larger last-stage response, normalised to stage 1, than ``rows[1]``).
    """

    text: str
    kind: str
    rows: tuple[str, ...]


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str
    task: str  # "cifar" | "imagenet" | "imagewoof"
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...]
    smoke_rows: tuple[str, ...]  # the cheap subset a smoke run trains
    dataset: str = "cifar10-jpeg"  # what the notebook trains on by default
    data_root: str = ".data/cifar10-jpeg"

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def row_for(self, record: dict) -> Row | None:
        """The row a results record is a run of (None: a run of no row of this experiment)."""
        return next((r for r in self.rows if r.matches(record)), None)

    def runs_of(self, records: Iterable[dict]) -> Iterator[tuple[Row, dict]]:
        """(row, record) for each record that is a run of one of this experiment's rows."""
        for record in records:
            row = self.row_for(record)
            if row is not None:
                yield row, record


def _attention56(key: str, label: str, paper_error: float, **kwargs) -> Row:
    return Row(key, label, "cifar_attention56", kwargs, paper_error=paper_error)


def _absolute_claims(rows: Iterable[Row]) -> tuple[Claim, ...]:
    return tuple(Claim(f"{r.label}: error {r.paper_error:.2f} %", "absolute", (r.key,))
                 for r in rows if r.paper_error is not None)


def _table1() -> Experiment:
    rows = tuple(_attention56(f"attention56-{kind}", f"Attention-56, {kind} attention", err,
                              attention=kind)
                 for kind, err in paper.TABLE1_ATTENTION_TYPE.items())
    claims = (Claim("mixed attention beats channel attention", "ordering",
                    ("attention56-mixed", "attention56-channel")),
              Claim("mixed attention beats spatial attention", "ordering",
                    ("attention56-mixed", "attention56-spatial")))
    return Experiment(
        "attention_types", "Attention types (Table 1)",
        "Mixed attention (sigmoid over channels and space) beats channel-only and spatial-only "
        "attention in Attention-56 on CIFAR-10 (Table 1).",
        "cifar", rows, claims + _absolute_claims(rows),
        smoke_rows=("attention56-mixed", "attention56-spatial"))


# The CIFAR models' names as the paper writes them.
MODEL_LABELS = {"cifar_attention56": "Attention-56", "cifar_attention92": "Attention-92",
                "cifar_attention128": "Attention-128", "cifar_attention164": "Attention-164",
                "cifar_attention236": "Attention-236", "cifar_attention452": "Attention-452",
                "cifar_resnet164": "ResNet-164", "cifar_resnet1001": "ResNet-1001",
                "cifar_wrn16_8": "WRN-16-8", "cifar_wrn28_10": "WRN-28-10"}


def _short(model: str) -> str:
    return model.removeprefix("cifar_")


def _table3() -> Experiment:
    rows, claims = [], []
    for model, errors in paper.TABLE3_ARL_NAL.items():
        name = MODEL_LABELS[model]
        for mode, residual in (("arl", True), ("nal", False)):
            rows.append(Row(f"{_short(model)}-{mode}", f"{name} {mode.upper()}", model,
                            {"residual_attention": residual}, paper_error=errors[mode]))
        claims.append(Claim(f"{name}: ARL beats NAL", "ordering",
                            (f"{_short(model)}-arl", f"{_short(model)}-nal")))
    # Figure 4's third curve: the plain ResNet-164 (its error is Table 6's, not this table's).
    rows.append(Row("resnet164", "ResNet-164", "cifar_resnet164"))
    claims.append(Claim("Figure 4: the last stage's response (normalised to stage 1) stays larger "
                        "with ARL than with NAL in Attention-164", "response",
                        ("attention164-arl", "attention164-nal")))
    rows = tuple(rows)
    gaps = ", ".join(f"{e['nal'] - e['arl']:.2f}" for e in paper.TABLE3_ARL_NAL.values())
    return Experiment(
        "arl_vs_nal", "Attention residual learning (Table 3, Figure 4)",
        "Attention residual learning, H = (1 + M) T, beats naive attention learning, H = M T, at "
        "every depth, because NAL's stacked masks shrink each stage's response (Table 3, Figure 4). "
        f"The paper also observes that the gap widens with depth (its gaps, Attention-56 to -164: {gaps} "
        "points); that is its reading of four numbers, not a claim judged here.",
        "cifar", rows, tuple(claims) + _absolute_claims(rows),
        smoke_rows=("attention56-arl", "attention56-nal", "resnet164"))


def _table4() -> Experiment:
    labels = {"encoder_decoder": "encoder-decoder mask", "local": "local convolutions mask"}
    rows = tuple(_attention56(f"attention56-{mask}", f"Attention-56, {labels[mask]}", err,
                              mask=mask)
                 for mask, err in paper.TABLE4_MASK_STRUCTURE.items())
    claims = (Claim("the encoder-decoder (bottom-up top-down) mask beats local convolutions",
                    "ordering", ("attention56-encoder_decoder", "attention56-local")),)
    return Experiment(
        "mask_structure", "Mask structure (Table 4)",
        "A bottom-up top-down (encoder-decoder) soft mask beats a mask of local convolutions with "
        "the same FLOPs in Attention-56 on CIFAR-10 (Table 4).",
        "cifar", rows, claims + _absolute_claims(rows),
        smoke_rows=tuple(r.key for r in rows))


def _noise_key(model: str, level: float) -> str:
    return f"{_short(model)}-noise{round(level * 100):02d}"


def _table5() -> Experiment:
    rows, claims = [], []
    for level, errors in paper.TABLE5_LABEL_NOISE.items():
        for model, err in errors.items():
            rows.append(Row(_noise_key(model, level), f"{MODEL_LABELS[model]}, {level:.0%} noise",
                            model, noise_level=level, paper_error=err))
        claims.append(Claim(f"{level:.0%} label noise: Attention-92 beats ResNet-164", "ordering",
                            (_noise_key("cifar_attention92", level),
                             _noise_key("cifar_resnet164", level))))
    rows = tuple(rows)
    return Experiment(
        "label_noise", "Label noise (Table 5)",
        "Attention-92 stays more accurate than ResNet-164 when 10-70 % of the training labels are "
        "flipped by a uniform transition matrix (Table 5).",
        "cifar", rows, tuple(claims) + _absolute_claims(rows),
        smoke_rows=(_noise_key("cifar_resnet164", 0.1), _noise_key("cifar_attention92", 0.1),
                    _noise_key("cifar_resnet164", 0.7), _noise_key("cifar_attention92", 0.7)))


def _table6() -> Experiment:
    rows = []
    for model, (_, err10, err100) in paper.TABLE6_CIFAR.items():
        rows.append(Row(_short(model), f"{MODEL_LABELS[model]} (CIFAR-10)", model,
                        paper_error=err10))
        rows.append(Row(f"{_short(model)}-c100", f"{MODEL_LABELS[model]} (CIFAR-100)", model,
                        paper_error=err100, cifar100=True))
    rows = tuple(rows)
    claims = []
    for suffix, data in (("", "CIFAR-10"), ("-c100", "CIFAR-100")):
        claims += [Claim(f"Attention-92 beats ResNet-164 (a similar size) on {data}", "ordering",
                         ("attention92" + suffix, "resnet164" + suffix)),
                   Claim(f"Attention-236 beats ResNet-1001 with about half its parameters on {data}", "ordering",
                         ("attention236" + suffix, "resnet1001" + suffix)),
                   Claim(f"Attention-452 beats every baseline, the best being WRN-28-10, on {data}", "ordering",
                         ("attention452" + suffix, "wrn28_10" + suffix))]
    return Experiment(
        "cifar_sota", "CIFAR state of the art (Table 6)",
        "As the paper's text states it (Section 4.1): Attention-452 outperforms all the baselines on "
        "CIFAR-10 and CIFAR-100; Attention-92 beats ResNet-164 at a similar parameter count; and "
        "Attention-236 beats ResNet-1001 with about half its parameters. Not every attention network "
        "beats every larger baseline in the paper's own Table 6 (ResNet-1001 and WRN-16-8 have lower "
        "CIFAR-10 errors than Attention-92; WRN-28-10 a lower CIFAR-100 error than Attention-236).",
        "cifar", rows, tuple(claims) + _absolute_claims(rows),
        smoke_rows=("resnet164", "attention92"))


def _table7() -> Experiment:
    rows = tuple(Row(name, TABLE7_LABELS[name], name, paper_error=spec["top1"], paper_top5=spec["top5"],
                     test_size=spec["test_size"])
                 for name, spec in paper.TABLE7_IMAGENET.items() if name in TABLE7_LABELS)
    claims = (Claim("Attention-56 beats ResNet-152", "ordering", ("attention56", "resnet152")),
              Claim("AttentionNeXt-56 matches ResNeXt-101", "parity", ("attentionnext56", "resnext101")),
              Claim("Attention-92 beats ResNet-200", "ordering", ("attention92", "resnet200")))
    return Experiment(
        "imagenet", "ImageNet (Table 7)",
        "On ImageNet, Attention-56 beats ResNet-152 with about half the parameters and FLOPs, "
        "Attention-92 beats ResNet-200, and AttentionNeXt-56 matches ResNeXt-101 (Table 7).",
        "imagenet", rows, claims + _absolute_claims(rows),
        smoke_rows=("attention56",), dataset="imagenet-folder", data_root=".data/imagenet")


# Table 7's rows the registry has (Inception-ResNet-v1/v2 are not ranlib models: left out).
TABLE7_LABELS = {"attention56": "Attention-56", "resnet152": "ResNet-152",
                 "attentionnext56": "AttentionNeXt-56", "resnext101": "ResNeXt-101",
                 "attentioninception56": "AttentionInception-56", "attention92": "Attention-92",
                 "resnet200": "ResNet-200"}


def model_label(name: str) -> str:
    """A registered model's name as the paper writes it, with its family: ``"Attention-56 (CIFAR)"``,
    ``"ResNeXt-101 (ImageNet)"``; other names as they are."""
    if name in MODEL_LABELS:
        return f"{MODEL_LABELS[name]} (CIFAR)"
    return f"{TABLE7_LABELS[name]} (ImageNet)" if name in TABLE7_LABELS else name


def _imagewoof() -> Experiment:
    # No paper numbers: the paper never trained on Imagewoof. Only Table 7's orderings (and its
    # one parity) are judged, on this proxy, never its ImageNet errors.
    rows = tuple(Row(name, label, name, imagewoof=True) for name, label in TABLE7_LABELS.items())
    claims = (Claim("Attention-56 beats ResNet-152 (with about half the parameters)", "ordering",
                    ("attention56", "resnet152")),
              Claim("AttentionNeXt-56 matches ResNeXt-101 (with fewer parameters)", "parity",
                    ("attentionnext56", "resnext101")),
              Claim("Attention-92 beats ResNet-200", "ordering", ("attention92", "resnet200")))
    return Experiment(
        "imagewoof", "Table 7's networks on Imagewoof",
        "Table 7's orderings, judged as orderings on a proxy: on real photos at small scale "
        "(Imagewoof, 10 ImageNet dog breeds, 112 px), with the same networks and the same "
        "ImageNet-style pipeline, Attention-56 beats ResNet-152 with about half the parameters, "
        "AttentionNeXt-56 matches ResNeXt-101, and Attention-92 beats ResNet-200. ImageNet's "
        "absolute errors are not judged here.",
        "imagewoof", rows, claims, smoke_rows=("attention56", "resnet152"),
        dataset="imagewoof", data_root="../shared/data/imagewoof")


def _masks() -> Experiment:
    return Experiment(
        "attention_masks", "What the soft masks select (Figure 1)",
        "The soft masks of successive stages select different things: low-level colour and "
        "texture early, object parts later (the idea of Figure 1). This is a picture, not a "
        "number: there is no verdict.",
        "cifar", (Row("attention56", "Attention-56", "cifar_attention56"),), (),
        smoke_rows=("attention56",))


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _table1(), _table3(), _table4(), _table5(), _table6(), _table7(), _imagewoof(), _masks())}
# Experiments whose records are not training runs of a table row.
OTHER_EXPERIMENTS = ("models", "performance")


def experiment(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; valid: "
                         f"{', '.join(sorted(EXPERIMENTS))}") from None
