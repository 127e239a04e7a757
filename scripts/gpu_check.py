"""The GPU checks and figures of the suite, in one run: ``python scripts/gpu_check.py --out DIR [--quick]``.

Prepared for a bare CUDA machine that has torch and lightning (``scripts/gpu_check.sh`` installs what it lacks
from wheels). Each part writes its own JSON into ``--out`` as soon as it finishes, so a run cut short keeps
what it measured:

1. ``env.json``: GPU, versions, the measured bf16 / TF32 matmul rate (the peak the fractions refer to);
2. ``no_sync.json``: a forward pass and a full training step (loss, backward, fused AdamW with the device-side
   non-finite skip, EMA) under ``torch.cuda.set_sync_debug_mode("error")``, every conditioning mode;
3. ``attention.json``: which SDPA kernel runs in bf16 (profiler kernel names) and the xformers backend where
   installed; GroupNorm channels-last vs contiguous;
4. ``sampling.json``: per-evaluation time of the paper's networks eager vs CUDA-graph replay, fp32 (TF32) and
   bf16, with launches per evaluation and GPU-busy fraction from ``torch.profiler``; graph samples vs eager;
5. ``train.json``: the real Lightning loop (``GenerativeModule``, bf16-mixed, fused AdamW) images/s for
   ``motfm_camus`` and ``motfm_msd``, eager and ``compile=true`` (compile time reported separately).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from motfm.data.base import DataSpec  # noqa: E402
from motfm.lit.module import GenerativeModule  # noqa: E402
from motfm.nn.captured import CapturedNet  # noqa: E402
from motfm.nn.velocity import build_velocity_net  # noqa: E402

CASES = {  # name: (model config, spatial size, batch, conditioning)
    "2d_mask_class_128_b32": ("motfm_camus", (128, 128), 32, ("class", "mask")),
    "2d_mask_class_256_b16": ("motfm_camus", (256, 256), 16, ("class", "mask")),
    "3d_uncond_64_b4": ("motfm_msd", (64, 64, 64), 4, ()),
}


def save(out: Path, name: str, obj: Any) -> None:
    (out / f"{name}.json").write_text(json.dumps(obj, indent=1, default=str))
    print(f"== {name}: {json.dumps(obj, default=str)[:2000]}", flush=True)


def cuda_time(fn: Callable[[], Any], repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` (CUDA events)."""
    for _ in range(warmup):
        fn()
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
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", [*overrides, "paths.output_dir=/tmp/motfm_gpu", "logger=none"])


def model_cfg(name: str) -> dict[str, Any]:
    cfg = compose_train([f"model={name}"])
    return {k: v for k, v in dict(cfg.model).items() if k not in ("_target_", "conditioning")}


def build(name: str, size: tuple[int, ...], conditioning: tuple[str, ...], **extra: Any) -> torch.nn.Module:
    spec = DataSpec(len(size), 1, size, num_classes=4, num_mask_labels=4)
    kwargs = {**model_cfg(name), **extra}
    kwargs.pop("spatial_dims", None)
    return build_velocity_net(spec, spatial_dims=len(size), conditioning=conditioning, **kwargs)


def inputs(size: tuple[int, ...], b: int, conditioning: tuple[str, ...]) -> dict[str, Any]:
    dev = "cuda"
    kw: dict[str, Any] = {"x": torch.randn(b, 1, *size, device=dev), "t": torch.rand(b, device=dev)}
    if "class" in conditioning:
        kw["cond"] = torch.randint(0, 4, (b,), device=dev)
    if "mask" in conditioning:
        kw["mask"] = torch.randint(0, 4, (b, 1, *size), device=dev)
    return kw


def part_env(out: Path) -> dict[str, Any]:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ a, 10, 3)
    torch.backends.cuda.matmul.allow_tf32 = True
    f = torch.randn(8192, 8192, device="cuda")
    ms32 = cuda_time(lambda: f @ f, 5, 2)
    info = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_matmul_TFLOP_s": 2 * 8192**3 / ms / 1e9,
        "tf32_matmul_TFLOP_s": 2 * 8192**3 / ms32 / 1e9,
    }
    try:
        import xformers  # noqa: F401

        info["xformers"] = xformers.__version__
    except ImportError:
        info["xformers"] = None
    save(out, "env", info)
    return info


def part_no_sync(out: Path) -> None:
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
                module = GenerativeModule.from_config(cfg, spec).cuda()
                opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4, fused=True)
                batch = inputs(size, 4, conditioning)
                batch = {
                    "image": batch["x"].clamp(-1, 1),
                    "label": batch.get("cond"),
                    "mask": batch.get("mask"),
                }
                gen = torch.Generator(device="cuda").manual_seed(0)
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
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
                            torch.rand(4, device="cuda"),
                            cond=batch["label"],
                            mask=batch["mask"],
                        )
                    results[name] = "no host synchronisation"
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            except Exception as err:  # record and go on: this is a report
                results[name] = f"{type(err).__name__}: {err}"[:400]
    save(out, "no_sync", results)


def part_attention(out: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    res: dict[str, Any] = {}
    q = torch.randn(8, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.cuda.synchronize()
    res["sdpa_bf16_kernels"] = sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})[:8]
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.randn(16, 256, 64, 64, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
        gn = torch.nn.GroupNorm(32, 256).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res[f"groupnorm_{fmt_name}_ms"] = cuda_time(lambda gn=gn, x=x: gn(x), 20, 5)
    save(out, "attention", res)


def profile_launches(fn: Callable[[], Any]) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(getattr(e, "device_time_total", 0.0) for e in kernels) / 1e3
    return {"kernels": len(kernels), "gpu_busy_ms": busy, "wall_ms": wall, "busy_fraction": busy / wall}


def measure_sampling(net: torch.nn.Module, kw: dict[str, Any], flops: int, peak: float) -> dict[str, Any]:
    """Eager vs CUDA-graph time per evaluation (TF32 and bf16), launch profiles and the graph's error."""
    row: dict[str, Any] = {"TFLOP_per_NFE": flops / 1e12}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for prec in ("tf32", "bf16"):
        captured = CapturedNet(net)
        amp = torch.autocast("cuda", torch.bfloat16, enabled=prec == "bf16", cache_enabled=False)
        with torch.inference_mode(), amp:
            eager_ms = cuda_time(lambda: net(**kw))
            graph_ms = cuda_time(lambda: captured(**kw))  # noqa: B023 - called inside this iteration
            diff = (captured(**kw).float() - net(**kw).float()).abs().max().item()
            row[f"{prec}_eager_ms"] = eager_ms
            row[f"{prec}_graph_ms"] = graph_ms
            row[f"{prec}_graph_vs_eager_maxabs"] = diff
            row[f"{prec}_graph_TFLOP_s"] = flops / graph_ms / 1e9
            row[f"{prec}_graph_fraction_of_bf16_peak"] = flops / graph_ms / 1e9 / peak
            if prec == "bf16":
                row["bf16_eager_profile"] = profile_launches(lambda: net(**kw))
                row["bf16_graph_profile"] = profile_launches(lambda: captured(**kw))  # noqa: B023
    return row


def part_sampling(out: Path, quick: bool, peak: float) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    res: dict[str, Any] = {}
    for case, (name, size, b, conditioning) in CASES.items():
        if quick and case != "2d_mask_class_128_b32":
            continue
        try:
            net = build(name, size, conditioning).cuda().eval()
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
        torch.cuda.empty_cache()


def lightning_fit(module: GenerativeModule, dm: Any, steps: int) -> tuple[list[float], Any]:
    """Fit for ``steps`` steps; returns the seconds (from the start of fit) at which each step ended."""
    import lightning as L

    times: list[float] = []
    t0 = time.perf_counter()

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)

    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[Clock()],
        gradient_clip_val=1.0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    return times, trainer


def part_train(out: Path, quick: bool) -> None:
    res: dict[str, Any] = {}
    runs = [("motfm_camus", "echo_phantom", 128, 32, False), ("motfm_msd", "brain_phantom", 64, 4, False)]
    if not quick:
        runs.append(("motfm_msd", "brain_phantom", 64, 4, True))
    for name, data, size, b, use_compile in runs:
        key = f"{name}_{size}_b{b}" + ("_compiled" if use_compile else "")
        try:
            cond = "[class,mask]" if name == "motfm_camus" else "[]"
            cfg = compose_train(
                [
                    f"model={name}",
                    f"data={data}",
                    f"data.dataset.size={size}",
                    f"data.batch_size={b}",
                    f"model.conditioning={cond}",
                    "data.num_workers=4",
                    "+data.pin_memory=true",
                    "trainer=gpu",
                    f"compile={str(use_compile).lower()}",
                    "coupling=independent",
                ]
            )
            dm = instantiate(cfg.data, seed=0)
            module = GenerativeModule.from_config(cfg, dm.spec)
            times, trainer = lightning_fit(module, dm, 25 if quick else 40)
            warm = 10
            step_s = (times[-1] - times[warm]) / (len(times) - 1 - warm)
            res[key] = {
                "ms_per_step": step_s * 1e3,
                "images_per_s": b / step_s,
                "first_step_s": times[0],  # from the start of fit; includes compilation when compiled
                "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
            }
        except Exception as err:
            res[key] = {
                "error": f"{type(err).__name__}: {err}"[:500],
                "trace": traceback.format_exc()[-1500:],
            }
        save(out, "train", res)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="env,no_sync,attention,sampling,train")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    env = part_env(out)
    peak = env["bf16_matmul_TFLOP_s"]
    for part, fn in (
        ("no_sync", lambda: part_no_sync(out)),
        ("attention", lambda: part_attention(out)),
        ("sampling", lambda: part_sampling(out, args.quick, peak)),
        ("train", lambda: part_train(out, args.quick)),
    ):
        if part in parts:
            t0 = time.perf_counter()
            try:
                fn()
            except Exception:
                save(out, f"{part}_crash", {"trace": traceback.format_exc()[-3000:]})
            print(f"-- {part} took {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
