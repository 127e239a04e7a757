"""The GPU checks and figures of the suite, in one run: ``python scripts/gpu_check.py --out DIR [--quick]``.

Prepared for a bare CUDA machine that has torch and lightning (``scripts/gpu_check.sh`` installs what it
lacks from wheels). Every part's result goes into ``--out/gpu_check.json`` as soon as it finishes, so a run
cut short keeps what it measured. ``--smoke`` runs the same logic on small nets on whatever device is there
(a check of this script on a CPU). The parts:

1. ``env``: GPU, versions, the measured bf16 / TF32 matmul rate (the peak the fractions refer to);
2. ``no_sync``: a forward pass and a full training step (loss, backward, fused AdamW with the device-side
   non-finite skip, EMA) under ``torch.cuda.set_sync_debug_mode("error")``, every conditioning mode;
3. ``attention``: which SDPA kernel runs in bf16 (profiler kernel names); GroupNorm channels-last vs
   contiguous in 2D and 3D;
4. ``sampling``: per-evaluation time of the paper's networks eager vs CUDA-graph replay, TF32 and bf16, with
   launches per evaluation and GPU-busy fraction from ``torch.profiler``; graph outputs vs eager;
5. ``train``: the real Lightning loop (``GenerativeModule``, bf16-mixed, fused AdamW) images/s for
   ``motfm_camus`` and ``motfm_msd``, eager and ``compile=true`` (the first step's time holds the
   compilation).
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
    dev = DEVICE
    kw: dict[str, Any] = {"x": torch.randn(b, 1, *size, device=dev), "t": torch.rand(b, device=dev)}
    if "class" in conditioning:
        kw["cond"] = torch.randint(0, 4, (b,), device=dev)
    if "mask" in conditioning:
        kw["mask"] = torch.randint(0, 4, (b, 1, *size), device=dev)
    return kw


def part_env(out: Path, smoke: bool) -> dict[str, Any]:
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


def part_attention(out: Path) -> None:
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
    save(out, "attention", res)


def profile_launches(fn: Callable[[], Any]) -> dict[str, float]:
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


def lightning_fit(module: GenerativeModule, dm: Any, steps: int) -> tuple[list[float], Any]:
    """Fit for ``steps`` steps; returns the seconds (from the start of fit) at which each step ended."""
    import lightning as L

    times: list[float] = []
    t0 = time.perf_counter()

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            if CUDA:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)

    trainer = L.Trainer(
        accelerator="gpu" if CUDA else "cpu",
        devices=1,
        precision="bf16-mixed" if CUDA else "32-true",
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


def part_train(out: Path, quick: bool, smoke: bool) -> None:
    res: dict[str, Any] = {}
    runs = [("motfm_camus", "echo_phantom", 128, 32, False), ("motfm_msd", "brain_phantom", 64, 4, False)]
    if not quick:
        runs.append(("motfm_msd", "brain_phantom", 64, 4, True))
    if smoke:
        runs = [("unet2d_small", "echo_phantom", 32, 4, False)]
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
                    "data.num_workers=4" if CUDA else "data.num_workers=0",
                    f"+data.pin_memory={str(CUDA).lower()}",
                    "trainer=gpu" if CUDA else "trainer=cpu",
                    f"compile={str(use_compile).lower()}",
                    "coupling=independent",
                ]
            )
            dm = instantiate(cfg.data, seed=0)
            module = GenerativeModule.from_config(cfg, dm.spec)
            times, trainer = lightning_fit(module, dm, 6 if smoke else 25 if quick else 40)
            warm = 2 if smoke else 10
            step_s = (times[-1] - times[warm]) / (len(times) - 1 - warm)
            res[key] = {
                "ms_per_step": step_s * 1e3,
                "images_per_s": b / step_s,
                "first_step_s": times[0],  # from the start of fit; includes compilation when compiled
                "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if CUDA else None,
            }
        except Exception as err:
            res[key] = {
                "error": f"{type(err).__name__}: {err}"[:500],
                "trace": traceback.format_exc()[-1500:],
            }
        save(out, "train", res)
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="small nets on whatever device: checks this script"
    )
    parser.add_argument("--parts", default="env,no_sync,attention,sampling,train")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    env = part_env(out, args.smoke)
    peak = env["bf16_matmul_TFLOP_s"]
    for part, fn in (
        ("no_sync", lambda: part_no_sync(out)),
        ("attention", lambda: part_attention(out)),
        ("sampling", lambda: part_sampling(out, args.quick, peak, args.smoke)),
        ("train", lambda: part_train(out, args.quick, args.smoke)),
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
