"""Part ``sampling``: time per evaluation of the paper's networks, eager vs CUDA-graph replay (TF32, bf16)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpu_checks.common import CASES, CUDA, DEVICE, build, cuda_time, inputs, save
from motfm.nn.captured import CapturedNet


def profile_launches(fn: Callable[[], Any]) -> dict[str, float]:
    """Kernels launched by one call of ``fn``, the GPU-busy milliseconds, the wall time and their ratio."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync = torch.cuda.synchronize if CUDA else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if CUDA else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = (time.perf_counter() - t0) * 1e3
    kernels = [e for e in prof.events() if e.device_type.name == ("CUDA" if CUDA else "CPU")]
    busy = sum(getattr(e, "device_time_total", 0.0) for e in kernels) / 1e3
    return {"kernels": len(kernels), "gpu_busy_ms": busy, "wall_ms": wall, "busy_fraction": busy / wall}


def measure_sampling(net: torch.nn.Module, kw: dict[str, Any], flops: int, peak: float) -> dict[str, Any]:
    """Eager vs CUDA-graph time per evaluation (TF32 and bf16), launch profiles and the graph's error."""
    row: dict[str, Any] = {"TFLOP_per_NFE": flops / 1e12}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for prec in ("tf32", "bf16") if CUDA else ("fp32",):
        captured = CapturedNet(net) if CUDA else net
        amp = torch.autocast(DEVICE, torch.bfloat16, enabled=prec == "bf16", cache_enabled=False)
        with torch.inference_mode(), amp:
            eager_ms = cuda_time(lambda: net(**kw))
            graph_ms = cuda_time(lambda: captured(**kw))  # noqa: B023 - called inside this iteration
            diff = (captured(**kw).float() - net(**kw).float()).abs().max().item()
            row[f"{prec}_eager_ms"] = eager_ms
            row[f"{prec}_graph_ms"] = graph_ms
            row[f"{prec}_graph_vs_eager_maxabs"] = diff
            row[f"{prec}_graph_TFLOP_s"] = flops / graph_ms / 1e9
            row[f"{prec}_graph_fraction_of_bf16_peak"] = flops / graph_ms / 1e9 / peak
            if prec != "tf32":
                row[f"{prec}_eager_profile"] = profile_launches(lambda: net(**kw))
                row[f"{prec}_graph_profile"] = profile_launches(lambda: captured(**kw))  # noqa: B023
    return row


def part_sampling(out: Path, quick: bool, peak: float, smoke: bool) -> None:
    """Each case of ``CASES`` (``--smoke``: small networks), one row each in ``sampling``."""
    from torch.utils.flop_counter import FlopCounterMode

    res: dict[str, Any] = {}
    for case, (name, size, b, conditioning) in CASES.items():
        if quick and case != "2d_mask_class_128_b32":
            continue
        if smoke:  # this script's logic on a small net and size
            name, size, b = "unet2d_small" if len(size) == 2 else "unet3d", tuple(16 for _ in size), 2
        try:
            net = build(name, size, conditioning).to(DEVICE).eval()
            kw = inputs(size, b, conditioning)
            with torch.inference_mode(), FlopCounterMode(display=False) as fc:
                net(**kw)
            flops = fc.get_total_flops()
            row = measure_sampling(net, kw, flops, peak)
            res[case] = row
        except Exception as err:
            res[case] = {
                "error": f"{type(err).__name__}: {err}"[:500],
                "trace": traceback.format_exc()[-1500:],
            }
        save(out, "sampling", res)
        if CUDA:
            torch.cuda.empty_cache()
