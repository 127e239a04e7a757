"""Parts ``precision`` and ``train``: the real Lightning loop in each mixed precision, and its speed."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from gpu_checks.common import CUDA, compose_train, save
from motfm.lit.module import GenerativeModule
from motfm.runtime import trainer_precision


def lightning_fit(
    module: GenerativeModule, dm: Any, steps: int, precision: str | None = None, plugins: list | None = None
) -> tuple[list[float], Any]:
    """Fit for ``steps`` steps with clipping (the default config's) in ``precision`` (default: bf16-mixed on
    a GPU, 32-true on a CPU); returns the seconds (from the start of fit) at which each step ended."""
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
        precision=None if plugins else precision or ("bf16-mixed" if CUDA else "32-true"),
        plugins=plugins,
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
    """Images/s of the paper's networks in the Lightning loop (bf16-mixed, fused AdamW), eager, compiled."""
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


TINY_ON_CPU = [
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=8",
    "model.norm_groups=4",
    "data.batch_size=4",
]


def part_precision(out: Path) -> None:
    """What ``precision=auto`` picks here, and 3 steps of the default config (fused AdamW, clipping at 1.0) in
    ``bf16-mixed`` and ``16-mixed`` (on a CPU: its twin, a CPU loss scaler): each must train, with finite
    weights and the non-finite steps counted (fp16 may skip its first steps while the loss scale settles)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    res: dict[str, Any] = {"auto": trainer_precision("auto", "gpu" if CUDA else "cpu").__dict__}
    for precision in ("bf16-mixed", "16-mixed"):
        try:
            tiny = [] if CUDA else TINY_ON_CPU  # fp16 on a CPU runs reference kernels: keep it small
            cfg = compose_train(
                ["model=unet2d_small", "model.conditioning=[class,mask]", "data.dataset.size=32", *tiny]
            )
            assert cfg.optimizer.fused and cfg.trainer.gradient_clip_val, "the default config changed"
            dm = instantiate(cfg.data, seed=0)
            module = GenerativeModule.from_config(cfg, dm.spec)
            plugins = None
            if precision == "16-mixed" and not CUDA:
                plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
            _, trainer = lightning_fit(module, dm, 3, precision, plugins)
            finite = all(bool(torch.isfinite(p).all()) for p in module.net.parameters())
            res[precision] = {
                "steps": trainer.global_step,
                "finite": finite,
                "skipped": module.nonfinite_total,
            }
        except Exception as err:
            res[precision] = {
                "error": f"{type(err).__name__}: {err}"[:500],
                "trace": traceback.format_exc()[-1500:],
            }
    save(out, "precision", res)
