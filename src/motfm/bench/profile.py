"""Where one network evaluation spends its time: the operators with the most self time (torch.profiler)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from motfm.bench.timing import synchronize


def top_operators(fn: Callable[[], Any], device: torch.device, top: int = 8) -> list[dict[str, Any]]:
    """Profile one call of ``fn`` (after one untimed call) and return its ``top`` operators by self time.

    On a CUDA device the time is the kernels' device time, on a CPU the operators' self CPU time; either way
    the shares add up to the whole call, so two candidates' lists show what one does that the other does not.

    Args:
        fn: the call to profile (one network evaluation).
        device: where it runs.
        top: how many operators to keep.

    Returns:
        ``[{"op": name, "ms": self time, "share": of the total self time, "calls": count}]``, largest first.
    """
    fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    rows = []
    for event in prof.key_averages():
        us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if us > 0:
            rows.append({"op": event.key, "ms": us / 1e3, "calls": event.count})
    total = sum(r["ms"] for r in rows) or 1.0
    rows.sort(key=lambda r: r["ms"], reverse=True)
    return [{**r, "share": r["ms"] / total} for r in rows[:top]]
