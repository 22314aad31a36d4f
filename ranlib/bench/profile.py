"""The profiler breakdown of the training step (``python -m ranlib.bench --profile DIR``): a few more
steps after the timed ones run under ``torch.profiler`` (:func:`profile_training`), and
``DIR/<figures file stem>-profile.json`` gets the top ops (CPU) or kernels (GPU) by self time and the
self time split into ``PROFILE_CATEGORIES`` (convolution/matmul, batch norm, elementwise, the
mask branch's pool/upsample, copies, optimizer), host and device separately on CUDA, with the
fraction of the profiled window in which the GPU ran nothing (:func:`idle_fraction`);
:func:`profile_report` prints it.
"""

from __future__ import annotations

from typing import Callable

import torch

# Where self time goes, by op (CPU) or kernel (GPU) name: the first category with a substring
# of the lower-cased name wins, "other" if none. The order matters: copies first (casts run as
# elementwise copy kernels, cuDNN's layout transposes are named nchwToNhwc), batch norm and
# pooling before convolution (cuDNN names its BN and pooling kernels cudnn::...), matrix
# products before elementwise ("addmm" contains "add"). "mulbackward"/"mulfunctor" rather than
# "mul", which would match AccumulateGrad.
PROFILE_CATEGORIES = (
    ("memcpy/copy", ("copy", "memcpy", "memset", "nchwtonhwc", "nhwctonchw")),
    ("optimizer", ("optimizer.", "_foreach", "multi_tensor_apply", "sgd")),
    ("batchnorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
    ("pool/upsample", ("pool", "upsample", "interpolate")),
    ("conv/matmul", ("conv", "gemm", "xmma", "cutlass", "cudnn", "winograd", "wgrad", "dgrad", "addmm", "aten::mm",
                     "matmul")),
    ("elementwise/activation", ("elementwise", "add", "aten::mul", "mulbackward", "mulfunctor", "sub", "div",
                                "sigmoid", "relu", "threshold", "clamp")),
)
PROFILE_STEPS = 5  # profiled steps after the timed ones
PROFILE_TOP = 25  # ops/kernels listed by self time


def profile_category(name: str) -> str:
    lowered = name.lower()
    for category, substrings in PROFILE_CATEGORIES:
        if any(s in lowered for s in substrings):
            return category
    return "other"


def _time_breakdown(rows: list[tuple[str, int, float]], steps: int) -> dict:
    """Self times (name, calls, microseconds): total, per category and the top names."""
    total = sum(us for _, _, us in rows)
    categories = {name: 0.0 for name, _ in PROFILE_CATEGORIES} | {"other": 0.0}
    for name, _, us in rows:
        categories[profile_category(name)] += us
    top = sorted(rows, key=lambda row: -row[2])[:PROFILE_TOP]
    return {"total_self_us": total, "per_step_ms": total / steps / 1e3, "categories_us": categories,
            "top": [{"name": name, "count": count, "self_us": us, "category": profile_category(name)}
                    for name, count, us in top]}


def idle_fraction(busy: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by none of the (start, end) spans in ``busy``."""
    covered, reach = 0.0, start
    for span_start, span_end in sorted(busy):
        if span_end > reach:
            covered += span_end - max(span_start, reach)
            reach = span_end
    return 1.0 - covered / (end - start)


def profile_training(step: Callable[[], None], device: torch.device, steps: int) -> dict:
    """Run ``steps`` training steps under torch.profiler; where their self time goes.

    ``host``: self CPU time of every op, autograd node and annotation (all of the time the
    profiler sees on the CPU). On CUDA also ``device``: self time of every kernel, copy and memset
    (what the profiler's table calls self CUDA time), ``gpu_idle_fraction`` (the share of the
    profiled window in which no kernel ran: host overhead and waiting) and ``host_synchronizations``
    (calls of cuda*Synchronize; the profiler's own at stop is one of them).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
    averages = prof.key_averages()
    host = [(e.key, e.count, e.self_cpu_time_total) for e in averages if e.device_type == DeviceType.CPU]
    summary = {"profiled_steps": steps, "host": _time_breakdown(host, steps)}
    if cuda:
        def on_device(e):  # kernels, copies, memsets; not the GPU-side spans of record_function ranges
            return e.device_type == DeviceType.CUDA and not e.is_user_annotation

        summary["device"] = _time_breakdown(
            [(e.key, e.count, e.self_device_time_total) for e in averages if on_device(e)], steps)
        events = prof.events()
        summary["gpu_idle_fraction"] = idle_fraction(
            [(e.time_range.start, e.time_range.end) for e in events if on_device(e)],
            min(e.time_range.start for e in events), max(e.time_range.end for e in events))
        summary["host_synchronizations"] = sum(e.count for e in averages
                                               if e.device_type == DeviceType.CPU and "synchronize" in e.key.lower())
    return summary


def profile_report(record: dict) -> str:
    side = "device" if "device" in record else "host"
    breakdown = record[side]
    total = breakdown["total_self_us"] or 1.0
    lines = [f"profile of {record['profiled_steps']} steps, self {side} time: {breakdown['per_step_ms']:.2f} ms "
             "per step" + (f", GPU idle {100 * record['gpu_idle_fraction']:.1f} % of the window, "
                           f"{record['host_synchronizations']} host synchronisations" if side == "device" else "")]
    lines += [f"  {name:<24} {us / record['profiled_steps'] / 1e3:>9.2f} ms {100 * us / total:>6.1f} %"
              for name, us in sorted(breakdown["categories_us"].items(), key=lambda item: -item[1])]
    lines.append("  top by self time:")
    lines += [f"  {row['self_us'] / record['profiled_steps'] / 1e3:>9.2f} ms {row['count']:>6}x  {row['name'][:90]}"
              for row in breakdown["top"][:10]]
    return "\n".join(lines)
