"""Lightning wiring of the flow-matching objective.

Training step (Lipman et al. 2023, Eq. 23; Tong et al. 2024 for the coupling):
x1 ~ data, x0 ~ N(0, I) paired by the coupling, t ~ the time sampler, x_t and u_t from the path,
loss = mean |v(x_t, t, c) - u_t|^2. With classifier-free guidance training, the class condition of
each sample is replaced by the null token with probability ``p_uncond``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from motfm.data.base import DataSpec
from motfm.flow.coupling import Coupling
from motfm.flow.paths import CondOTPath, TimeSampler
from motfm.flow.solvers import SampleResult, guided_velocity, integrate, seed_for, seeded_noise
from motfm.lit.ema import EMA
from motfm.nn.velocity import VelocityNet

log = logging.getLogger(__name__)


def warmup_cosine(
    warmup_steps: int, total_steps: int | None, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio`` (or constant if no total).

    Args:
        warmup_steps: steps of linear warm-up from 0.
        total_steps: last step of the cosine decay (``None``: constant after warm-up).
        min_ratio: final multiplier.

    Returns:
        ``step -> multiplier``.
    """

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not total_steps or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


class FlowMatchingModule(L.LightningModule):
    """Trains a :class:`VelocityNet` by conditional flow matching and samples from it.

    Args:
        net: the velocity network.
        spec: the data description (stored in checkpoints so that sampling can rebuild the model).
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``).
        warmup_steps: learning-rate warm-up steps.
        cosine_decay: decay the learning rate with a cosine to ``min_lr_ratio`` over the run.
        min_lr_ratio: final learning-rate multiplier of the cosine.
        coupling: pairs noise with data.
        path: the probability path.
        time_sampler: draws training times.
        ema_decay: decay of the weight average used for validation and sampling (0 disables averaging).
        p_uncond: probability of dropping the class condition (classifier-free guidance training).
        max_nonfinite_steps: abort after this many consecutive steps with a non-finite loss or gradient
            (each such step is skipped with a warning).
        seed: the run's seed; the noise, times and label dropout of step ``s`` on rank ``r`` come from a
            generator seeded by ``(seed, s, r)``, so a resumed run draws exactly what the original would have.
        config: the resolved run configuration (stored in checkpoints).
    """

    def __init__(
        self,
        net: VelocityNet,
        spec: DataSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_steps: int = 0,
        cosine_decay: bool = False,
        min_lr_ratio: float = 0.0,
        coupling: Coupling | None = None,
        path: CondOTPath | None = None,
        time_sampler: TimeSampler | None = None,
        ema_decay: float = 0.999,
        p_uncond: float = 0.0,
        max_nonfinite_steps: int = 10,
        seed: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        self.net = net
        self.ema = EMA(net, ema_decay)
        self.spec = spec
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.cosine_decay = cosine_decay
        self.min_lr_ratio = min_lr_ratio
        self.coupling = coupling or Coupling("independent")
        self.path = path or CondOTPath()
        self.time_sampler = time_sampler or TimeSampler()
        self.p_uncond = p_uncond
        self.max_nonfinite_steps = max_nonfinite_steps
        self.seed = seed
        self.config = config or {}
        self.nonfinite_run = 0
        self.nonfinite_total = 0

    # ----------------------------------------------------------------------------- conditions
    def conditions(self, batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        """The ``(cond, mask)`` the network needs, taken from a batch."""
        cond = batch["label"] if self.net.num_classes else None
        mask = batch["mask"] if self.net.num_mask_labels else None
        return cond, mask

    def drop_labels(self, cond: Tensor | None, generator: torch.Generator | None = None) -> Tensor | None:
        """Replace each label by the null token with probability ``p_uncond``."""
        if cond is None or self.p_uncond == 0.0:
            return cond
        drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < self.p_uncond
        return torch.where(drop, self.net.null_cond(cond.shape[0], cond.device), cond)

    # ----------------------------------------------------------------------------- objective
    def loss(
        self,
        net: torch.nn.Module,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> Tensor:
        """Flow-matching loss of ``net`` on a batch: mean |v(x_t, t, c) - u_t|^2 over all elements."""
        x1 = batch["image"]
        cond, mask = self.conditions(batch)
        if train:
            cond = self.drop_labels(cond, generator)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x0 = self.coupling(x0, x1)
        t = self.time_sampler(x1.shape[0], x1.device, generator)
        ps = self.path.sample(x0, x1, t)
        v = net(ps.xt, ps.t, cond=cond, mask=mask)
        return torch.mean((v.float() - ps.ut.float()) ** 2)

    def step_generator(self, device: torch.device) -> torch.Generator:
        """The generator of this optimiser step on this rank (see ``seed`` in the class docstring)."""
        index = self.global_step * self.trainer.world_size + self.trainer.global_rank
        return torch.Generator(device=device).manual_seed(seed_for(self.seed, index))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """One flow-matching step; a non-finite loss skips the step (see :meth:`note_nonfinite`)."""
        loss = self.loss(self.net, batch, self.step_generator(batch["image"].device))
        if not torch.isfinite(loss):
            self.note_nonfinite("loss")
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when a gradient is not finite (gradients are dropped, the weights stay)."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not grads:  # the step's loss was not finite: training_step skipped the backward pass
            return
        if not torch.isfinite(torch.stack([g.norm() for g in grads])).all():
            self.note_nonfinite("gradient")
            optimizer.zero_grad(set_to_none=True)
        else:
            self.nonfinite_run = 0

    def note_nonfinite(self, what: str) -> None:
        """Count a skipped step; abort after ``max_nonfinite_steps`` consecutive ones."""
        self.nonfinite_run += 1
        self.nonfinite_total += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_total))
        log.warning(
            "step %d: non-finite %s, update skipped (%d in a row)", self.global_step, what, self.nonfinite_run
        )
        if self.nonfinite_run >= self.max_nonfinite_steps:
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise FloatingPointError(
                f"{self.nonfinite_run} consecutive steps with a non-finite {what} "
                f"(last at step {self.global_step}); training stopped. Last good checkpoint: {ckpt}. "
                "Lower optimizer.lr, keep gradient clipping on, or check the data for NaN values."
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the weight average after the optimiser step."""
        self.ema.update(self.net)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss of the raw and the averaged network on a fixed draw of noise and times."""
        n = batch["image"].shape[0]
        for name, net in (("val/loss", self.net), ("val/loss_ema", self.ema.module)):
            g = torch.Generator(device=batch["image"].device).manual_seed(1000 + batch_idx)
            self.log(
                name,
                self.loss(net, batch, g, train=False),
                batch_size=n,
                sync_dist=True,
                prog_bar=name == "val/loss",
            )

    # ----------------------------------------------------------------------------- sampling
    @torch.inference_mode()
    def generate(
        self,
        indices: Tensor | list[int],
        seed: int,
        solver: str = "euler",
        steps: int = 10,
        cond: Tensor | None = None,
        mask: Tensor | None = None,
        guidance_scale: float = 1.0,
        use_ema: bool = True,
        **solver_kwargs: Any,
    ) -> SampleResult:
        """Sample images ``indices`` (each from its own seeded noise) with the chosen solver.

        Args:
            indices: global sample indices ``[B]``; sample i depends only on ``(seed, i)``.
            seed: the sampling seed.
            solver: ODE solver name.
            steps: solver steps.
            cond: class labels ``[B]`` for class-conditional models.
            mask: label maps ``[B, 1, *spatial]`` for mask-conditional models.
            guidance_scale: classifier-free guidance weight.
            use_ema: sample with the averaged weights.
            **solver_kwargs: passed to :func:`motfm.flow.solvers.integrate`.

        Returns:
            The :class:`SampleResult` (images ``[B, C, *spatial]`` clamped to [-1, 1]).
        """
        net = self.ema.module if use_ema else self.net
        x0 = seeded_noise((self.spec.channels, *self.spec.image_size), indices, seed, self.device)
        null = net.null_cond(x0.shape[0], x0.device) if (cond is not None and net.num_classes) else None
        velocity, evals = guided_velocity(net, cond, mask, guidance_scale, null)
        result = integrate(velocity, x0, solver, steps, evals_per_call=evals, **solver_kwargs)
        result.x = result.x.clamp(-1, 1)
        return result

    # ----------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (or the configured optimiser) with warm-up and optional cosine decay, stepped per batch."""
        opt = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        total = self.trainer.estimated_stepping_batches if self.cosine_decay else None
        if total is not None and not math.isfinite(total):
            total = None
        fn = warmup_cosine(self.warmup_steps, int(total) if total else None, self.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what sampling needs to rebuild the model (plain Python types); refuse a non-finite model."""
        for name, p in self.net.named_parameters():
            if not torch.isfinite(p).all():
                raise FloatingPointError(f"refusing to save a checkpoint: parameter {name} is not finite")
        checkpoint["motfm"] = {"config": self.config, "data_spec": self.spec.to_dict(), "format": 1}
