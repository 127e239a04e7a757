"""Measure PyTorch's CPU kernel choice for single-volume 3D convolutions against oneDNN called directly.

    python scripts/bench_conv3d_routing.py [--out-dir benchmarks] [--repeats 10]

For every (volume side S, channels C, kernel k) where PyTorch's rule (``N*C*D*H <= 20480`` at batch 1) picks
``aten::slow_conv3d_forward``, it times ``nn.Conv3d`` as PyTorch runs it and ``aten::mkldnn_convolution``, in
turns, forward (inference) and forward + backward, on channels-last (the suite's layout) and contiguous
inputs, and notes which kernel :class:`motfm.nn.conv3d.Conv3d` uses. Writes
``<date>-cpu-conv3d-routing.{json,md}`` with the machine, versions and date. Run it alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from motfm.bench.timing import machine_info, timed_alternating
from motfm.nn.conv3d import ONEDNN_MIN_VOXELS, ONEDNN_MIN_VOXELS_CHANNELS_LAST, Conv3d, routes_to_onednn

SIDES = (4, 8, 12, 16, 24, 32)
CHANNELS = (16, 32, 64, 160, 480)
KERNELS = (3, 1)
FORMATS = {"channels_last_3d": torch.channels_last_3d, "contiguous": torch.contiguous_format}


def stock_is_slow(side: int, channels: int) -> bool:
    """PyTorch's rule for a float32 CPU batch of one with a kernel of size 3 (or 1 with several threads)."""
    return channels * side * side <= 20480


def measure(
    side: int, channels: int, kernel: int, memory_format: str, repeats: int
) -> dict[str, float | int | bool | str]:
    """Median seconds of both kernels on one shape, forward and forward + backward."""
    torch.manual_seed(0)
    fmt = FORMATS[memory_format]
    conv = Conv3d(channels, channels, kernel, padding=kernel // 2).to(memory_format=fmt)
    x = torch.randn(1, channels, side, side, side).contiguous(memory_format=fmt)
    args = (conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)

    def stock(inp: torch.Tensor = x) -> torch.Tensor:
        return F.conv3d(inp, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def onednn() -> torch.Tensor:
        return torch.ops.aten.mkldnn_convolution(x, *args)

    with torch.inference_mode():
        fwd = timed_alternating({"stock": stock, "onednn": onednn}, repeats, 3, torch.device("cpu"))
    xg = x.detach().clone().requires_grad_()

    def stock_train() -> None:
        stock(xg).sum().backward()

    def onednn_train() -> None:
        torch.ops.aten.mkldnn_convolution(xg, *args).sum().backward()

    train = timed_alternating({"stock": stock_train, "onednn": onednn_train}, repeats, 2, torch.device("cpu"))
    return {
        "side": side,
        "channels": channels,
        "kernel": kernel,
        "memory_format": memory_format,
        "stock_fwd_ms": 1e3 * fwd["stock"],
        "onednn_fwd_ms": 1e3 * fwd["onednn"],
        "fwd_speedup": fwd["stock"] / fwd["onednn"],
        "stock_train_ms": 1e3 * train["stock"],
        "onednn_train_ms": 1e3 * train["onednn"],
        "train_speedup": train["stock"] / train["onednn"],
        "motfm_uses": "onednn" if routes_to_onednn(x, conv) else "stock",
    }


def main() -> None:
    """Measure every shape and write the JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="benchmarks")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    info = machine_info(torch.device("cpu"))
    rows = []
    for memory_format in FORMATS:
        for kernel in KERNELS:
            for side in SIDES:
                for channels in CHANNELS:
                    if stock_is_slow(side, channels):
                        rows.append(measure(side, channels, kernel, memory_format, args.repeats))
                        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{info['date'][:10]}-cpu-conv3d-routing"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Single-volume Conv3d on the CPU: PyTorch's kernel choice against oneDNN",
        "",
        f"{info['date']}, {info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
        f"load {info['load_average_1min']}. Batch 1, float32, C -> C channels, stride 1, 'same' padding; "
        f"median of {args.repeats} in turns. speedup = stock / oneDNN (> 1: oneDNN faster). "
        "`motfm.nn.conv3d.Conv3d` sends volumes with a kernel of more than one tap to oneDNN from "
        f"{ONEDNN_MIN_VOXELS_CHANNELS_LAST} voxels in channels-last layout, "
        f"{ONEDNN_MIN_VOXELS} in contiguous.",
        "",
        "| format | k | side | C | stock fwd ms | oneDNN fwd ms | fwd speedup "
        "| stock fwd+bwd ms | oneDNN fwd+bwd ms | fwd+bwd speedup | motfm uses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['memory_format']} | {r['kernel']} | {r['side']} | {r['channels']} "
            f"| {r['stock_fwd_ms']:.2f} | {r['onednn_fwd_ms']:.2f} "
            f"| {r['fwd_speedup']:.2f} | {r['stock_train_ms']:.2f} | {r['onednn_train_ms']:.2f} "
            f"| {r['train_speedup']:.2f} | {r['motfm_uses']} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
