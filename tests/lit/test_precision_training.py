"""Training in every precision with the default optimiser (fused AdamW) and clipping, on any CPU.

The default config is what users run: ``optimizer.fused: true`` and ``trainer.gradient_clip_val: 1.0``.
Lightning's mixed-precision plugin refuses to clip for a fused optimiser (even under bf16, which has nothing
to unscale), which stopped every run on GPUs and bf16 CPUs at the first step; these tests force each
precision, so they fail on any machine if that comes back. ``16-mixed`` runs as its CPU twin: Lightning's
plugin with a CPU loss scaler (Lightning itself maps ``16-mixed`` on a CPU to bf16).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils._python_dispatch import TorchDispatchMode

from cli_helpers import TINY_2D, compose_config
from motfm.lit.module import GenerativeModule, clip_by_global_norm

PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]
# the operators through which a tensor's value reaches the host (.item(), bool(), int(), dynamic shapes)
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}


def build(tmp_path, precision: str, overrides: tuple[str, ...] = (), max_steps: int = 3) -> tuple:
    """The tiny 2D run of the default config (optimiser, clipping) as Trainer, module and data."""
    cfg = compose_config("train", [*TINY_2D, *overrides], tmp_path)
    assert cfg.optimizer.fused is True and cfg.trainer.gradient_clip_val == 1.0  # the defaults under test
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    module = GenerativeModule.from_config(cfg, datamodule.spec)
    plugins = []
    if precision == "16-mixed":  # the CPU twin of a GPU's fp16 run
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        precision=None if plugins else precision,
        plugins=plugins or None,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
    )
    return trainer, module, datamodule


@pytest.mark.bf16
@pytest.mark.parametrize("precision", PRECISIONS)
def test_default_optimiser_trains_with_clipping_in_every_precision(tmp_path, precision):
    trainer, module, datamodule = build(tmp_path, precision, ("optimizer.lr=1e-2",))
    seen = []  # the global gradient norm as the optimiser receives it (after clipping)
    clip = module.configure_gradient_clipping

    def clip_and_record(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad.float() for p in module.net.parameters() if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    module.configure_gradient_clipping = clip_and_record
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer.fit(module, datamodule)
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters()))
    applied = [n for n in seen if torch.isfinite(n)]
    assert applied and all(n <= 1.0 + 1e-4 for n in applied)  # clipped to gradient_clip_val, unscaled
    assert module._grad_norm is not None and module._grad_norm > 1.0  # clipping had work to do


def test_clipping_matches_torch_clip_grad_norm():
    torch.manual_seed(0)
    for scale in (0.01, 10.0):
        grads = [torch.randn(5, 3) * scale, torch.randn(7) * scale]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        expected_norm = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        norm = clip_by_global_norm(grads, 1.0)
        assert torch.allclose(norm, expected_norm)
        for g, p in zip(grads, params):
            assert torch.allclose(g, p.grad, rtol=1e-6, atol=1e-7)
    grads = [torch.tensor([float("inf"), 1.0])]
    assert not torch.isfinite(clip_by_global_norm(grads, 1.0))  # the step is then skipped as non-finite


class HostReadCounter(TorchDispatchMode):
    """Counts the operators that read a tensor's value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.bf16
def test_no_host_read_per_step_under_bf16_mixed(tmp_path, monkeypatch):
    """The GPU twin on a CPU: with host reads not free (as on a GPU), a bf16-mixed step with the default
    optimiser reads nothing on the host, except at the log interval and the non-finite check interval."""
    monkeypatch.setattr(GenerativeModule, "host_reads_are_free", lambda self: False)
    trainer, module, datamodule = build(tmp_path, "bf16-mixed", ("trainer.log_every_n_steps=4",), max_steps=6)
    module.nonfinite_check_every = 4
    counts: dict[int, int] = {}

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.mode = HostReadCounter()
            self.mode.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.mode.__exit__(None, None, None)
            counts[trainer.global_step] = self.mode.count

    trainer.callbacks.append(Count())
    trainer.fit(module, datamodule)
    assert sorted(counts) == list(range(1, 7))
    quiet = [step for step in counts if (step - 1) % 4 != 0]  # global_step after the update of step - 1
    assert all(counts[s] == 0 for s in quiet), counts
