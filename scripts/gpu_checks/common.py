"""What every part of ``scripts/gpu_check.py`` shares: the device, the results file, timing, tiny builders."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from motfm.data_spec import DataSpec  # noqa: E402
from motfm.nn.velocity import build_velocity_net  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # the CPU only for --smoke, a check of this script itself
CASES = {  # name: (model config, spatial size, batch, conditioning)
    "2d_mask_class_128_b32": ("motfm_camus", (128, 128), 32, ("class", "mask")),
    "2d_mask_class_256_b16": ("motfm_camus", (256, 256), 16, ("class", "mask")),
    "3d_uncond_64_b4": ("motfm_msd", (64, 64, 64), 4, ()),
}


RESULTS: dict[str, Any] = {}


def save(out: Path, name: str, obj: Any) -> None:
    """Record a part's result in ``gpu_check.json`` (rewritten after every part: a cut run keeps them)."""
    RESULTS[name] = obj
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    print(f"== {name}: {json.dumps(obj, default=str)[:2000]}", flush=True)


def cuda_time(fn: Callable[[], Any], repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` (CUDA events; the host clock in a CPU smoke run)."""
    for _ in range(warmup):
        fn()
    if not CUDA:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def compose_train(overrides: list[str]) -> Any:
    """The training config composed with ``overrides`` (no logger, a scratch output folder)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", [*overrides, "paths.output_dir=/tmp/motfm_gpu", "logger=none"])


def model_cfg(name: str) -> dict[str, Any]:
    """The architecture keys of ``conf/model/<name>.yaml``."""
    cfg = compose_train([f"model={name}"])
    return {k: v for k, v in dict(cfg.model).items() if k not in ("_target_", "conditioning")}


def build(name: str, size: tuple[int, ...], conditioning: tuple[str, ...], **extra: Any) -> torch.nn.Module:
    """A network of ``conf/model/<name>.yaml`` for one-channel images of ``size`` (4 classes, 4 labels)."""
    spec = DataSpec(len(size), 1, size, num_classes=4, num_mask_labels=4)
    kwargs = {**model_cfg(name), **extra}
    kwargs.pop("spatial_dims", None)
    return build_velocity_net(spec, spatial_dims=len(size), conditioning=conditioning, **kwargs)


def inputs(size: tuple[int, ...], b: int, conditioning: tuple[str, ...]) -> dict[str, Any]:
    """Random network inputs ``x [b, 1, *size]``, ``t [b]`` and the conditions asked for, on the device."""
    dev = DEVICE
    kw: dict[str, Any] = {"x": torch.randn(b, 1, *size, device=dev), "t": torch.rand(b, device=dev)}
    if "class" in conditioning:
        kw["cond"] = torch.randint(0, 4, (b,), device=dev)
    if "mask" in conditioning:
        kw["mask"] = torch.randint(0, 4, (b, 1, *size), device=dev)
    return kw
