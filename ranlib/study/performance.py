"""The benchmarks' figures as the Performance page shows them: reading ``results/performance/``
(``python -m ranlib.bench``), the step, profile, concurrency, fused and CPU tables, and the
targets they are checked against."""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import pandas as pd

from ranlib.paths import resolve_path
from ranlib.training.results import benchmark_file_name, setup_text

# Targets for the training step on one H100 (the Performance page checks the figures against them).
TARGET_SPEEDUP = 3.0  # ranlib's CIFAR path over the plain baseline, Attention-92


TARGET_PAPER_SCHEDULE_MIN = 20.0  # Attention-92, the paper-length CIFAR schedule


TARGET_QUICK_MIN = 3.0  # Attention-92, the quick profile


TARGET_MEMORY_BYTES = 11e9  # Attention-56 at 224, batch 64, a whole training step


def read_benchmarks(results_root: str | os.PathLike = "results") -> list[dict]:
    """The figures files ``python -m ranlib.bench --out results/performance`` wrote, with their
    profiles (``--profile results/performance/profiles``) under ``"profile"`` when present."""
    folder = resolve_path(results_root) / "performance"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    records = [r for r in records if "ranlib" in r]  # not bench --fused's file (read_fused_benchmarks)
    profiles = {p.name.removesuffix("-profile.json"): json.loads(p.read_text())
                for p in sorted(folder.glob("profiles/*-profile.json"))}

    named = [(r, benchmark_file_name(r)) for r in records]
    return [{**r, "file": name, "profile": profiles.get(name.removesuffix(".json"))} for r, name in named]


def performance_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """One line per benchmarked configuration: ranlib vs the plain baseline."""

    lines = []
    for b in benchmarks:
        fast, plain = b["ranlib"], b.get("baseline") or {}
        lines.append({
            "model": b["model"], "size": b["input_size"], "batch": b["batch_size"],
            "setup": setup_text(fast), "images/s": round(fast["images_per_s"], 1),
            "baseline images/s": round(plain["images_per_s"], 1) if plain else math.nan,
            "speed-up": round(b["speedup"], 2) if b.get("speedup") else math.nan,
            "step ms": round(fast["step_time_ms_median"], 2),
            "peak GiB": round(fast["peak_memory_bytes"] / 2**30, 2),
            "baseline peak GiB": round(plain["peak_memory_bytes"] / 2**30, 2) if plain else math.nan,
            "MFU %": round(100 * fast["mfu"], 1) if fast.get("mfu") is not None else math.nan,
            "paper schedule min": round(b["projection"]["paper_schedule_min"], 1),
            "device": b["device_name"], "torch": b["provenance"].get("torch")})
    return pd.DataFrame(lines)


def performance_targets(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """The step targets (:data:`TARGET_SPEEDUP` and the others) against every figures file that speaks
    to one: met, or not."""
    from ranlib.training.recipes import PROFILES

    quick_batch = PROFILES["cifar"]["quick"].batch_size
    lines = []

    def add(target, b, value, unit, met):
        lines.append({"target": target, "model": b["model"], "batch": b["batch_size"],
                      "setup": setup_text(b["ranlib"]), "measured": f"{value:.2f} {unit}",
                      "met": "yes" if met else "no", "device": b["device_name"]})

    for b in benchmarks:
        if b["model"] == "cifar_attention92":
            if b.get("speedup"):
                add(f"CIFAR path >= {TARGET_SPEEDUP:g}x the plain baseline", b, b["speedup"], "x",
                    b["speedup"] >= TARGET_SPEEDUP)
            minutes = b["projection"]["paper_schedule_min"]
            add(f"paper-length schedule <= {TARGET_PAPER_SCHEDULE_MIN:g} min (projected)", b, minutes, "min",
                minutes <= TARGET_PAPER_SCHEDULE_MIN)
            if b["batch_size"] == quick_batch:
                minutes = b["projection"]["quick_profile_min"]
                add(f"quick profile <= {TARGET_QUICK_MIN:g} min (projected)", b, minutes, "min",
                    minutes <= TARGET_QUICK_MIN)
        if (b["model"], b["input_size"], b["batch_size"]) == ("attention56", 224, 64):
            # What the card must hold: the allocator's reserved peak when recorded, else allocated.
            peak = b["ranlib"].get("peak_reserved_bytes") or b["ranlib"]["peak_memory_bytes"]
            add(f"training step <= {TARGET_MEMORY_BYTES / 1e9:g} GB peak memory", b, peak / 1e9, "GB",
                peak <= TARGET_MEMORY_BYTES)
    return pd.DataFrame(lines, columns=["target", "model", "batch", "setup", "measured", "met", "device"])


def read_performance(benchmark: str, results_root: str | os.PathLike = "results") -> list[dict]:
    """The files of one kind (their ``"benchmark"``: ``fused``, ``cpu``, ``precision_check``) that
    ``python -m ranlib.bench ... --out results/performance`` wrote."""
    folder = resolve_path(results_root) / "performance"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in records if r.get("benchmark") == benchmark]


def read_fused_benchmarks(results_root: str | os.PathLike = "results") -> list[dict]:
    """The files ``python -m ranlib.bench --fused --out results/performance`` wrote."""
    return read_performance("fused", results_root)


def cpu_table(records: Sequence[dict]) -> pd.DataFrame:
    """The CPU's training-step figures (``python -m ranlib.bench --device cpu``): one line per precision,
    memory format and batch, with the share of that precision's measured matrix peak."""
    lines = [{"model": r["model"], "precision": s["precision"], "format": "channels_last" if s["channels_last"] else "NCHW",
              "batch": s["batch_size"], "images/s": round(s["images_per_s"], 1),
              "GFLOP/s": round(1e3 * s["achieved_tflops"]), "% of peak": round(100 * s["peak_share"], 1),
              "images per CPU-s": round(s["images_per_cpu_s"], 1),
              "% of peak (CPU time)": round(100 * s["peak_share_cpu_time"], 1),
              "peak GFLOP/s": round(1e3 * r["matmul_peak"][s["precision"]]["tflops"]),
              "peak GFLOP per CPU-s": round(1e3 * r["matmul_peak"][s["precision"]]["cpu_tflops"]),
              "threads": r["conditions"]["start"]["threads"], "load": round(r["conditions"]["start"]["load_average"][0], 1),
              "device": r["device_name"]}
             for r in records for s in r["step"]]
    return pd.DataFrame(lines)


def loop_share_table(records: Sequence[dict]) -> pd.DataFrame:
    """The real loop against the bare step at the same settings (``python -m ranlib.bench --device cpu --dataset ...``)."""
    lines = [{"model": r["model"], "batch": r["loop"]["batch_size"], "precision": r["loop"]["precision"],
              "data": r["loop"]["dataset"]["label"], "iterations": r["loop"]["iterations"],
              "loop images/s": round(r["loop"]["loop_images_per_s"], 1),
              "bare step images/s": " / ".join(f"{v:.1f}" for v in r["loop"]["bare_step_images_per_s"]),
              "loop share %": round(100 * r["loop"]["share"], 1),
              "loop share by CPU time %": round(100 * r["loop"]["share_cpu_time"], 1)
              if r["loop"].get("share_cpu_time") else None,
              "threads": r["conditions"]["start"]["threads"], "device": r["device_name"]}
             for r in records if r.get("loop")]
    return pd.DataFrame(lines)


def precision_check_table(records: Sequence[dict]) -> pd.DataFrame:
    """bf16 against two fp32 seeds (``python -m ranlib.bench --precision-check``): one line per check."""
    lines = [{"model": r["model"], "batch": r["batch_size"], "iterations": r["iterations"],
              "data": r["runs"][0]["dataset"]["label"],
              "mean |loss gap| bf16 vs fp32, seed 0": round(r["mean_abs_gap"]["bf16_vs_fp32_same_seed"], 4),
              "mean |loss gap| fp32 seed 1 vs 0": round(r["mean_abs_gap"]["fp32_seeds"], 4),
              "test error % (fp32 s0, fp32 s1, bf16 s0)": ", ".join(f"{x['test_top1_error']:.1f}" for x in r["runs"]),
              "test images": r["runs"][0]["num_test"],
              "images/s (fp32 s0, fp32 s1, bf16 s0)": ", ".join(f"{x['images_per_s']:.0f}" for x in r["runs"]),
              "bf16 trains like fp32": "yes" if r["agree"] else "no", "device": r["device_name"],
              "threads": r["conditions"]["start"]["threads"]}
             for r in records]
    return pd.DataFrame(lines)


def fused_table(records: Sequence[dict]) -> pd.DataFrame:
    """One line per fused configuration (K members as one model): rates, TFLOP/s and the ratios."""
    def ratio(value):
        return round(value, 2) if value is not None else math.nan

    lines = [{"model": f["model"], "batch": f["batch_size"], "K": f["members"],
              "graphs": ("on" if f["graph_captured"] else "capture failed") if f["graphs"] else "off",
              "images/s (all)": round(f["images_per_s"], 1), "images/s (each)": round(f["images_per_s_per_member"], 1),
              "step ms": round(f["step_time_ms_mean"], 2), "TFLOP/s": round(f["achieved_tflops"], 2),
              "% of bf16 peak": round(100 * f["peak_share"], 1), "x separate": ratio(f["vs_separate"]),
              "x best solo": ratio(f["vs_best_solo"]), "x baseline": ratio(f["vs_baseline"]),
              "device": r["device_name"]}
             for r in records for f in r["fused"]]
    return pd.DataFrame(lines)


def fused_targets(records: Sequence[dict]) -> pd.DataFrame:
    """The fused benchmark's targets as it judged them (met, not met, or not measured)."""
    lines = [{"target": t["target"],
              "measured": "not measured" if t["measured"] is None else
              (f"{100 * t['measured']:.1f} %" if "peak" in t["target"] else f"{t['measured']:.2f}x"),
              "met": {True: "yes", False: "no", None: "not measured"}[t["met"]], "device": r["device_name"]}
             for r in records for t in r["targets"]]
    return pd.DataFrame(lines, columns=["target", "measured", "met", "device"])


def profile_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """Where a step's time goes (``bench --profile``): per configuration, the share of self time
    of each category, device kernels on a GPU (host ops otherwise), and the GPU's idle share."""

    lines = []
    for b in benchmarks:
        profiled = b.get("profile")
        if not profiled:
            continue
        side = "device" if "device" in profiled else "host"
        total = profiled[side]["total_self_us"] or 1.0
        lines.append({"model": b["model"], "batch": b["batch_size"], "setup": setup_text(b["ranlib"]),
                      "time": f"{side} self", "ms per step": round(profiled[side]["per_step_ms"], 2),
                      **{f"{k} %": round(100 * v / total, 1) for k, v in profiled[side]["categories_us"].items()},
                      "GPU idle %": round(100 * profiled["gpu_idle_fraction"], 1)
                      if "gpu_idle_fraction" in profiled else math.nan})
    return pd.DataFrame(lines)


def concurrency_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """``bench --processes K``: K trainings at once on one device against one alone."""
    lines = [{"model": b["model"], "batch": b["batch_size"], "processes": c["processes"],
              "one process images/s": round(c["one_process_images_per_s"], 1),
              "all together images/s": round(c["aggregate_images_per_s"], 1), "ratio": round(c["ratio"], 2),
              "device": b["device_name"]}
             for b in benchmarks if (c := b.get("concurrent"))]
    return pd.DataFrame(lines)
