"""Parts ``env``, ``no_sync`` and ``kernels``: the GPU, host synchronisation, attention and GroupNorm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpu_checks.common import CUDA, DEVICE, compose_train, cuda_time, inputs, save
from motfm.data_spec import DataSpec
from motfm.lit.module import GenerativeModule


def part_env(out: Path, smoke: bool) -> dict[str, Any]:
    """The GPU, versions, xformers, and the bf16 / TF32 matmul rate (the peak the fractions refer to)."""
    n = 512 if smoke else 8192
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16 if CUDA else torch.float32)
    ms = cuda_time(lambda: a @ a, 10, 3)
    torch.backends.cuda.matmul.allow_tf32 = True
    f = torch.randn(n, n, device=DEVICE)
    ms32 = cuda_time(lambda: f @ f, 5, 2)
    info = {
        "gpu": torch.cuda.get_device_name() if CUDA else "cpu (smoke run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_matmul_TFLOP_s": 2 * n**3 / ms / 1e9,
        "tf32_matmul_TFLOP_s": 2 * n**3 / ms32 / 1e9,
    }
    try:
        import xformers  # noqa: F401

        info["xformers"] = xformers.__version__
    except ImportError:
        info["xformers"] = None
    save(out, "env", info)
    return info


def part_no_sync(out: Path) -> None:
    """A forward pass and a training step (fused AdamW, device-side skip, EMA) with syncs made errors."""
    results = {}
    for dims, size in ((2, (32, 32)), (3, (16, 16, 16))):
        for conditioning in ((), ("class",), ("mask",), ("class", "mask")):
            name = f"{dims}d_{'+'.join(conditioning) or 'uncond'}"
            try:
                cfg = compose_train(
                    [
                        "model=unet3d" if dims == 3 else "model=unet2d_small",
                        f"model.conditioning=[{','.join(conditioning)}]",
                        "coupling=independent",  # minibatch OT reads the cost matrix on the host, by design
                    ]
                )
                spec = DataSpec(dims, 1, size, num_classes=4, num_mask_labels=4)
                module = GenerativeModule.from_config(cfg, spec).to(DEVICE)
                opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4, fused=True)
                batch = inputs(size, 4, conditioning)
                batch = {
                    "image": batch["x"].clamp(-1, 1),
                    "label": batch.get("cond"),
                    "mask": batch.get("mask"),
                }
                gen = torch.Generator(device=DEVICE).manual_seed(0)
                module.ema.current_decay()  # reads the stored update count once, at the start of a run
                if CUDA:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
                        loss, _ = module.objective.loss(module.net, batch, gen)
                    loss.backward()
                    grads = [p.grad for p in module.net.parameters() if p.grad is not None]
                    found = (~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())).float()
                    opt.found_inf, opt.grad_scale = found, None
                    opt.step()
                    module.ema.update(module.net)
                    with torch.inference_mode():
                        module.net(
                            batch["image"],
                            torch.rand(4, device=DEVICE),
                            cond=batch["label"],
                            mask=batch["mask"],
                        )
                    results[name] = "no host synchronisation"
                finally:
                    if CUDA:
                        torch.cuda.set_sync_debug_mode("default")
            except Exception as err:  # record and go on: this is a report
                results[name] = f"{type(err).__name__}: {err}"[:400]
    save(out, "no_sync", results)


def part_kernels(out: Path) -> None:
    """Which SDPA kernel runs in bf16; GroupNorm channels-last vs contiguous in 2D and 3D."""
    from torch.profiler import ProfilerActivity, profile

    res: dict[str, Any] = {}
    dtype = torch.bfloat16 if CUDA else torch.float32
    q = torch.randn(8, 8, 1024, 64, device=DEVICE, dtype=dtype)
    activities = [ProfilerActivity.CUDA] if CUDA else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        if CUDA:
            torch.cuda.synchronize()
    kind = "CUDA" if CUDA else "CPU"
    res["sdpa_kernels"] = sorted({e.name for e in prof.events() if e.device_type.name == kind})[:8]
    for dims in (2, 3):
        size = (64, 64) if dims == 2 else (32, 32, 32)
        fmts = {"contiguous": torch.contiguous_format}
        fmts["channels_last"] = torch.channels_last if dims == 2 else torch.channels_last_3d
        for fmt_name, fmt in fmts.items():
            x = torch.randn(16, 256, *size, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
            gn = torch.nn.GroupNorm(32, 256).to(DEVICE, dtype)
            res[f"groupnorm_{dims}d_{fmt_name}_ms"] = cuda_time(lambda gn=gn, x=x: gn(x), 20, 5)
    save(out, "kernels", res)
