"""Pixel vs Haar ``unet3d`` timed in turns, for the ratios of docs/wavelet.md on a shared machine.

``python -m motfm.bench bench=wavelet`` measures its cases one after the other, so on a machine shared with
other work their ratio moves with the load. This script builds the same cases (``unet3d`` 32-64-128, batch 1:
voxels at 64³, one Haar level at 64³ and 128³) and times one evaluation and one training step of all of them
in turns (A B C A B C ...), reporting the median wall time and the median CPU time of this process (less
sensitive to other processes than wall time), then one 10-step Euler sampling of the 128³ Haar model::

    PYTHONPATH=src python scripts/bench_wavelet_alternating.py --precision fp32 --repeats 3 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from motfm.bench.candidates import Candidate, random_batch
from motfm.bench.ours import build_ours
from motfm.bench.timing import count_flops, machine_info

CONF = str(Path(__file__).resolve().parents[1] / "conf")
CASES = {
    "pixel-64": (64, "pixel"),
    "haar1-64": (64, "haar"),
    "haar1-128": (128, "haar"),
}


def build(size: int, representation: str, precision: str) -> Candidate:
    """The benchmark candidate of ``unet3d`` on the brain phantom at ``size``³ in ``representation``."""
    overrides = [
        "model=unet3d",
        "data=brain_phantom",
        f"data.dataset.size={size}",
        "data.dataset.num_samples={train:2,val:1,test:1}",
        "logger=none",
        f"representation={representation}",
        f"paths.output_dir={tempfile.gettempdir()}",  # stands for a run folder; nothing is written
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    spec = instantiate(cfg.data).spec
    batch = random_batch(spec, 1, torch.device("cpu"))
    return build_ours(cfg, spec, batch, torch.device("cpu"), precision)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    cands = {name: build(size, rep, args.precision) for name, (size, rep) in CASES.items()}
    result: dict[str, Any] = {
        "machine": machine_info(torch.device("cpu")),
        "precision": args.precision,
        "cases": {},
    }
    for name, cand in cands.items():
        result["cases"][name] = {
            "eval_flops": count_flops(cand.forward),
            "train_flops": count_flops(cand.train_step),
        }
    for kind in ("forward", "train_step"):
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cands}
        for i in range(args.repeats + 1):  # the first round warms up
            for name, cand in cands.items():
                t = timed(getattr(cand, kind))
                if i:
                    times[name].append(t)
        for name, ts in times.items():
            result["cases"][name][f"{kind}_wall_s"] = statistics.median(w for w, _ in ts)
            result["cases"][name][f"{kind}_cpu_s"] = statistics.median(c for _, c in ts)
    wall, cpu = timed(lambda: cands["haar1-128"].sample(10))
    result["cases"]["haar1-128"]["sample_10_wall_s"], result["cases"]["haar1-128"]["sample_10_cpu_s"] = (
        wall,
        cpu,
    )
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["cases"], indent=2))


if __name__ == "__main__":
    main()
