"""Benchmark training-step time and sampling throughput: ``python -m motfm.bench [models=[unet2d_small]]``.

For each model config (composed exactly as ``python -m motfm.train model=<name>`` would, on the
configured data) and precision, it measures the median time of a full training step (forward,
backward, optimiser step) and the sampling throughput at each number of Euler steps, and counts FLOPs
with ``torch.utils.flop_counter`` to report the achieved FLOP/s beside every timing. Results go to
``benchmarks/<date>-<device>.json`` and ``.md`` with the machine, library versions and date; compare
ratios only within one file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from motfm.cli import readable_errors
from motfm.io.atomic import atomic_open, write_json
from motfm.lit.module import GenerativeModule

log = logging.getLogger(__name__)


def timed(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu}",
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
    }


def bench_model(cfg: DictConfig, model_name: str, precision: str, device: torch.device) -> dict[str, Any]:
    """Training-step and sampling timings of one model config at one precision."""
    train_cfg = hydra.compose(config_name="train", overrides=[f"model={model_name}", *cfg.train_overrides])
    spec = instantiate(train_cfg.data).spec
    module = GenerativeModule.from_config(train_cfg, spec).to(device)
    net, b = module.net, cfg.batch_size
    batch = {
        "image": torch.randn(b, spec.channels, *spec.image_size, device=device).clamp(-1, 1),
        "label": torch.randint(0, max(spec.num_classes, 1), (b,), device=device),
        "mask": torch.randint(0, max(spec.num_mask_labels, 1), (b, 1, *spec.image_size), device=device),
    }
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step() -> None:
        with amp:
            loss, _ = module.objective.loss(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward() -> None:
        with torch.inference_mode(), amp:
            net(
                batch["image"],
                torch.rand(b, device=device),
                cond=module.conditions(batch)[0],
                mask=module.conditions(batch)[1],
            )

    train_flops, fwd_flops = count_flops(train_step), count_flops(forward)
    step_s = timed(train_step, cfg.repeats, cfg.warmup, device)
    result: dict[str, Any] = {
        "model": model_name,
        "precision": precision,
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "image_size": list(spec.image_size),
        "batch_size": b,
        "train_step_ms": step_s * 1e3,
        "train_GFLOP": train_flops / 1e9,
        "train_GFLOP_s": train_flops / step_s / 1e9,
        "sampling": [],
    }
    cond, mask = module.conditions(batch)
    for steps in cfg.steps:

        def run(steps: int = steps) -> None:
            with amp:
                module.generate(list(range(b)), 0, "euler", steps, cond, mask, use_ema=False)

        seconds = timed(run, cfg.repeats, 1, device)
        result["sampling"].append(
            {
                "steps": steps,
                "nfe": steps,
                "seconds": seconds,
                "images_per_s": b / seconds,
                "GFLOP_s": fwd_flops * steps / seconds / 1e9,
            }
        )
    log.info("%s", result)
    return result


def to_markdown(info: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """A readable table of the results."""
    lines = [
        f"# motfm benchmark, {info['date']}",
        "",
        f"- device: {info['device']} ({info['threads']} threads)",
        f"- python {info['python']}, torch {info['torch']}, lightning {info['lightning']}",
        "",
        "| model | precision | params (M) | image | batch | train step (ms) | train GFLOP/s | "
        "sampling images/s (Euler steps: images/s, GFLOP/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        samp = "; ".join(
            f"{s['steps']}: {s['images_per_s']:.1f}/s, {s['GFLOP_s']:.0f}" for s in r["sampling"]
        )
        size = "x".join(map(str, r["image_size"]))
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['params_M']:.2f} | {size} | "
            f"{r['batch_size']} | {r['train_step_ms']:.0f} | {r['train_GFLOP_s']:.0f} | {samp} |"
        )
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Run the benchmark and write the results file."""
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.manual_seed(0)
    info = machine_info(device)
    results = [bench_model(cfg, m, p, device) for m in cfg.models for p in cfg.precisions]
    stem = Path(cfg.out_dir) / f"{info['date'][:10]}-{device.type}"
    write_json(stem.with_suffix(".json"), {"machine": info, "results": results})
    with atomic_open(stem.with_suffix(".md")) as f:
        f.write(to_markdown(info, results))
    print(to_markdown(info, results))


if __name__ == "__main__":
    main()
