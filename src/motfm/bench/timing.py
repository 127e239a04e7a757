"""Timers that alternate between candidates, FLOP counting, the peak FLOP/s probes and the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


def _cpu_sdpa_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad, query, key, value)


def _onednn_conv_flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape)


# torch.utils.flop_counter counts the CUDA attention kernels but not the CPU one (it would count 0 FLOPs for
# the suite's attention on a CPU, while the reference's bmm-based attention is counted), and counts
# aten.convolution but not the oneDNN operator that motfm.nn.conv3d.Conv3d calls directly (its backward is
# aten.convolution_backward, which is counted).
CPU_KERNEL_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    aten.mkldnn_convolution: _onednn_conv_flops,
}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_alternating(
    fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median wall time in seconds of each function, measured in turns (A B A B ...).

    Alternating spreads slow phases of a shared machine (other processes, clock changes) over every
    candidate instead of penalising whichever ran during them.

    Args:
        fns: name -> a function to time.
        repeats: timed calls of each function.
        warmup: untimed calls of each function first (also in turns).
        device: synchronised around every call.

    Returns:
        name -> median seconds.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions and attention, by ``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_KERNEL_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def _best_flops(
    fn: Callable[[], Any], flops: int, device: torch.device, warmup_s: float, measure_s: float
) -> float:
    """FLOP/s of ``fn``'s best call, after ``warmup_s`` untimed, over at least ``measure_s`` and 5 calls."""
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        fn()
        synchronize(device)
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < measure_s:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return flops / best


@torch.no_grad()
def peak_flops(
    device: torch.device, dtype: torch.dtype, n: int = 2048, warmup_s: float = 1.0, measure_s: float = 2.0
) -> dict[str, float]:
    """Achieved FLOP/s of two dense kernels: the reference for "fraction of peak".

    An ``n x n`` matmul (the BLAS) and a 3x3 convolution of 256 channels on 8 x 32 x 32 (oneDNN, the
    kernel the UNets spend their time in); the peak is the better of the two. Each probe runs untimed for
    ``warmup_s`` first (thread pool start, clock ramp-up: with a single warm-up call the matmul read 84
    GFLOP/s on a 2-core AVX2 EPYC, warmed up 160, the convolution 172), then its best call over at least
    ``measure_s`` seconds counts.

    Args:
        device: where to measure.
        dtype: the probes' dtype.
        n: the matmul's size.
        warmup_s: untimed seconds per probe.
        measure_s: timed seconds per probe.

    Returns:
        ``{"matmul": FLOP/s, "conv3x3": FLOP/s, "peak": the larger}``.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    x = torch.randn(8, 256, 32, 32, device=device, dtype=dtype)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
    out = {
        "matmul": _best_flops(lambda: a @ b, 2 * n**3, device, warmup_s, measure_s),
        "conv3x3": _best_flops(
            lambda: torch.nn.functional.conv2d(x, w, padding=1),
            2 * 8 * 256 * 256 * 9 * 32 * 32,
            device,
            warmup_s,
            measure_s,
        ),
    }
    out["peak"] = max(out.values())
    return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    load = None
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[0]
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu_name()}",
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average_1min": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
    }
