"""Why small bf16 channels-last GroupNorm maps go through fp32 on a CPU (``motfm.nn.blocks.GroupNorm``).

``python scripts/bench_groupnorm_bf16.py [--out benchmarks]`` times, alternating in one process:

1. the kernel: PyTorch's bf16 channels-last ``group_norm`` against an fp32 copy normalised and cast back, at
   the shapes of the suite's 2D networks;
2. the networks: one bf16-autocast evaluation of ``unet2d_small`` (64² x 16, mask + class) and ``motfm_camus``
   (64² x 4) with the fp32 route (``GroupNorm.SMALL_MAP = 256``) and without it (0).

Writes ``<date>-cpu-groupnorm-bf16.{json,md}`` with the machine, versions and date. Meaningful only where bf16
is native (AMX, AVX512-BF16); run it alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402

from motfm.data_spec import DataSpec  # noqa: E402
from motfm.nn.blocks import GroupNorm  # noqa: E402
from motfm.nn.velocity import build_velocity_net  # noqa: E402

KERNEL_SHAPES = [  # (shape, groups): unet2d_small (8 groups) and the paper's 2D network (32 groups)
    ((16, 64, 32, 32), 8),
    ((16, 64, 16, 16), 8),
    ((4, 128, 32, 32), 32),
    ((4, 128, 16, 16), 32),
    ((4, 224, 8, 8), 32),
    ((8, 256, 16, 16), 32),
]
NETWORKS = [("unet2d_small", 16), ("motfm_camus", 4)]


def alternating(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, called in turns so that all see the same machine."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def kernel_rows(repeats: int) -> list[dict]:
    """The bf16 channels-last kernel against the fp32 route, per shape."""
    rows = []
    for shape, groups in KERNEL_SHAPES:
        w, b = torch.ones(shape[1]), torch.zeros(shape[1])
        x = torch.randn(*shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ms = alternating(
                {
                    "bf16_channels_last": lambda x=x, g=groups, w=w, b=b: F.group_norm(x, g, w, b),
                    "fp32_route": lambda x=x, g=groups, w=w, b=b: F.group_norm(x.float(), g, w, b).to(
                        x.dtype
                    ),
                },
                repeats,
            )
        rows.append(
            {
                "shape": list(shape),
                "groups": groups,
                **ms,
                "route_over_kernel": ms["fp32_route"] / ms["bf16_channels_last"],
            }
        )
    return rows


def network_row(name: str, batch: int, repeats: int) -> dict:
    """A bf16 evaluation of ``conf/model/<name>.yaml`` (mask + class, 64²) with and without the fp32 route."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"model={name}", "paths.output_dir=/tmp/motfm_gn"])
    kwargs = {k: v for k, v in cfg.model.items() if k not in ("_target_", "_partial_", "conditioning")}
    kwargs.pop("spatial_dims", None)
    spec = DataSpec(2, 1, (64, 64), num_classes=4, num_mask_labels=4)
    net = build_velocity_net(spec, conditioning=("class", "mask"), **kwargs).eval()
    x, t = torch.randn(batch, 1, 64, 64), torch.rand(batch)
    cond, mask = torch.randint(0, 4, (batch,)), torch.randint(0, 4, (batch, 1, 64, 64))

    def evaluate(threshold: int) -> None:
        GroupNorm.SMALL_MAP = threshold
        net(x, t, cond=cond, mask=mask)

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ms = alternating({"without_route": lambda: evaluate(0), "with_route": lambda: evaluate(256)}, repeats)
    GroupNorm.SMALL_MAP = 256
    return {
        "network": name,
        "batch": batch,
        **ms,
        "with_over_without": ms["with_route"] / ms["without_route"],
    }


def main() -> None:
    """Measure and write the results files."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "benchmarks"))
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
    }
    kernels = kernel_rows(args.repeats)
    networks = [network_row(name, batch, max(4, args.repeats // 5)) for name, batch in NETWORKS]
    out = Path(args.out)
    stem = out / f"{info['date'][:10]}-cpu-groupnorm-bf16"
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": info, "kernels": kernels, "networks": networks}, indent=1)
    )
    lines = [f"# bf16 channels-last GroupNorm on a CPU, {info['date']}", "", f"- {json.dumps(info)}", ""]
    lines += [
        "| shape | groups | bf16 channels-last ms | fp32 route ms | route / kernel |",
        "|---|---|---|---|---|",
    ]
    for r in kernels:
        ms = f"{r['bf16_channels_last']:.3f} | {r['fp32_route']:.3f} | {r['route_over_kernel']:.2f}"
        lines.append(f"| {r['shape']} | {r['groups']} | {ms} |")
    lines += [
        "",
        "| network (bf16 evaluation, 64²) | batch | without the route ms | with ms | with / without |",
    ]
    lines.append("|---|---|---|---|---|")
    for r in networks:
        ms = f"{r['without_route']:.1f} | {r['with_route']:.1f} | {r['with_over_without']:.3f}"
        lines.append(f"| {r['network']} | {r['batch']} | {ms} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
