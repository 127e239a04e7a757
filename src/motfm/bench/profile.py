"""Where one network evaluation spends its time (torch.profiler): the operators with the most self time, and
the whole call by kind of work (convolutions, linear layers, attention, normalisation, dtype casts, layout
copies, ...), the breakdown that tells which part of a precision or layout change pays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

from motfm.bench.timing import synchronize


def self_us(event: Any, cuda: bool) -> float:
    """An operator's own time in microseconds: its kernels' device time on CUDA, else its CPU time. Kernel
    events themselves count 0: their time is already the self time of the operator that launched them."""
    if event.device_type != DeviceType.CPU:
        return 0.0
    return event.self_device_time_total if cuda else event.self_cpu_time_total


# Kinds of work, each a set of substrings of aten operator names; the first kind that matches wins.
OPERATOR_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("conv",)),
    ("attention kernel", ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("normalisation", ("group_norm", "layer_norm", "batch_norm")),
    ("activation", ("silu", "gelu", "relu", "sigmoid", "tanh", "softplus")),
    ("resampling", ("upsample", "pool", "interpolate")),
    ("elementwise", ("add", "mul", "sub", "div", "cat", "fill", "zero", "where", "clamp")),
)
# Copies are told apart by what asked for them: a dtype change (``aten::_to_copy``, which autocast calls), or
# a layout change (contiguous, clone, the copy of a reshaped strided view, dense <-> oneDNN).
COPY_OPS = (
    "aten::copy_",
    "aten::_to_copy",
    "aten::clone",
    "aten::contiguous",
    "aten::to_dense",
    "aten::to_mkldnn",
)


def operator_kind(event: FunctionEvent) -> str:
    """The kind of work of a profiled operator (see :data:`OPERATOR_KINDS`); a copy is a ``dtype cast`` when
    an enclosing operator changes the dtype, else a ``layout copy``."""
    name = event.name
    if name in COPY_OPS:
        node: FunctionEvent | None = event
        while node is not None:
            if node.name == "aten::_to_copy":
                return "dtype cast"
            node = node.cpu_parent
        return "layout copy"
    return next(
        (kind for kind, keys in OPERATOR_KINDS if any(k in name for k in keys)), "other (views, allocation)"
    )


def profile_evaluation(fn: Callable[[], Any], device: torch.device, top: int = 8) -> dict[str, list[dict]]:
    """Profile one call of ``fn`` (after one untimed call): its ``top`` operators and every kind of work.

    On a CUDA device the time is the kernels' device time, on a CPU the operators' self CPU time; either way
    the shares add up to the whole call, so two candidates' lists show what one does that the other does not.

    Args:
        fn: the call to profile (one network evaluation).
        device: where it runs.
        top: how many operators to keep.

    Returns:
        ``operators``: ``[{"op": name, "ms": self time, "share": of the total self time, "calls": count}]``,
        the ``top`` largest first; ``kinds``: ``[{"kind", "ms", "share"}]`` for every kind with time, largest
        first (shares add up to 1).
    """
    fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    cuda = device.type == "cuda"
    rows = []
    for average in prof.key_averages():  # one row per operator name
        if (us := self_us(average, cuda)) > 0:
            rows.append({"op": average.key, "ms": us / 1e3, "calls": average.count})
    total = sum(r["ms"] for r in rows) or 1.0
    rows.sort(key=lambda r: r["ms"], reverse=True)
    kinds: dict[str, float] = {}
    for event in prof.events():  # each call: its kind may depend on its callers (copies)
        if (us := self_us(event, cuda)) > 0:
            kind = operator_kind(event)
            kinds[kind] = kinds.get(kind, 0.0) + us / 1e3
    kind_total = sum(kinds.values()) or 1.0
    return {
        "operators": [{**r, "share": r["ms"] / total} for r in rows[:top]],
        "kinds": [
            {"kind": k, "ms": ms, "share": ms / kind_total}
            for k, ms in sorted(kinds.items(), key=lambda kv: kv[1], reverse=True)
        ],
    }
