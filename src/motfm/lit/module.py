"""The one Lightning module of the suite: network + EMA + an objective.

Every method (flow matching, the diffusion baseline, MeanFlow, reflow) trains through
:class:`GenerativeModule`; only the :class:`~motfm.objectives.base.Objective` differs. The module owns
what is common: the optimiser and its schedule, the weight average, per-step seeded randomness (exact
resume), non-finite step handling, validation losses and sampling.

No host-device synchronisation happens per step on a GPU: the non-finite check is one fused device-side
test whose result a fused optimiser reads directly (``found_inf``, as ``torch.amp.GradScaler`` uses it),
and the counters are read every ``nonfinite_check_every`` steps.

The flow runs in the module's :class:`~motfm.representation.Representation` (pixels by default, or wavelet
coefficients): training batches are encoded before the objective sees them, samples are decoded after the
sampler, so objectives, samplers and the network never know which.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from motfm.checkpoint import load_weights
from motfm.data.base import DataSpec
from motfm.flow.solvers import SampleResult, seed_for
from motfm.lit.ema import EMA
from motfm.nn.velocity import VelocityNet
from motfm.objectives.base import Objective, SampleNoise, SamplerOptions, conditions
from motfm.objectives.flow_matching import FlowMatching
from motfm.representation import PixelRepresentation, Representation

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


def global_norm(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` taken as one vector (a device scalar, fp32; no host read)."""
    norms = torch._foreach_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def clip_by_global_norm(grads: list[Tensor], max_norm: float, norm: Tensor | None = None) -> Tensor:
    """Scale ``grads`` in place so that their global 2-norm is at most ``max_norm`` (Pascanu et al. 2013).

    The same rule as ``torch.nn.utils.clip_grad_norm_`` (factor ``min(1, max_norm / (norm + 1e-6))``),
    computed on the device without a host read; a non-finite norm makes the gradients non-finite, and the
    step is skipped by the non-finite check.

    Args:
        grads: the gradients.
        max_norm: the largest global norm allowed.
        norm: their global norm if already computed (:func:`global_norm`).

    Returns:
        The global norm before clipping.
    """
    norm = global_norm(grads) if norm is None else norm
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, factor.to(grads[0].device))
    return norm


class GenerativeModule(L.LightningModule):
    """Trains a :class:`VelocityNet` with an objective and samples from it.

    Args:
        net: the network.
        spec: the data description (stored in checkpoints so that sampling can rebuild the model); the
            network is built on ``representation.coeff_spec(spec)``.
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``).
        objective: the method (default: flow matching with independent coupling).
        warmup_steps: learning-rate warm-up steps.
        cosine_decay: decay the learning rate with a cosine to ``min_lr_ratio`` over the run.
        min_lr_ratio: final learning-rate multiplier of the cosine.
        ema_decay: decay of the weight average used for validation and sampling.
        max_nonfinite_steps: abort after this many consecutive steps with a non-finite loss or gradient
            (each such step is skipped with a warning).
        nonfinite_check_every: read the non-finite counters on the host every this many steps on a GPU
            (every step on a CPU, where reading them costs nothing).
        seed: the run's seed; the noise, times and label dropout of step ``s`` on rank ``r`` come from a
            generator seeded by ``(seed, s, r)``, so a resumed run draws exactly what the original would have.
        compile: ``torch.compile`` the network for training (``True``: the default inductor backend; a string:
            that backend); the state dict keeps its plain names, so checkpoints load into eager networks.
        config: the resolved run configuration (stored in checkpoints).
        representation: where the flow runs (default: pixels); stored in checkpoints with its statistics.
    """

    def __init__(
        self,
        net: VelocityNet,
        spec: DataSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        objective: Objective | None = None,
        warmup_steps: int = 0,
        cosine_decay: bool = False,
        min_lr_ratio: float = 0.0,
        ema_decay: float = 0.999,
        max_nonfinite_steps: int = 10,
        nonfinite_check_every: int = 100,
        seed: int = 0,
        compile: bool | str = False,
        config: dict[str, Any] | None = None,
        representation: Representation | None = None,
    ) -> None:
        super().__init__()
        if max_nonfinite_steps < 1 or nonfinite_check_every < 1:
            raise ValueError("max_nonfinite_steps and nonfinite_check_every must be >= 1")
        self.net = net
        self.ema = EMA(net, ema_decay)
        self.spec = spec
        self.representation = representation if representation is not None else PixelRepresentation(spec)
        self.objective = objective or FlowMatching()
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.cosine_decay = cosine_decay
        self.min_lr_ratio = min_lr_ratio
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_check_every = nonfinite_check_every
        self.seed = seed
        self.compile_backend = "inductor" if compile is True else (compile or None)
        self.config = config or {}
        self.nonfinite_total = 0
        self._loss_finite: Tensor | None = None
        self._run = self._total = None  # device-side counters of non-finite steps
        self._grad_norm: Tensor | None = None  # global gradient norm of this step (before clipping)
        self._reported_total = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, spec: DataSpec) -> GenerativeModule:
        """Build the objective, the network and the module described by a composed training config."""
        objective: Objective = instantiate(cfg.method)
        representation = build_representation(cfg, spec)
        coeff_spec = representation.coeff_spec(spec)
        net = instantiate(cfg.model, _partial_=True)(
            spec=coeff_spec, **objective.net_kwargs(), **representation.net_kwargs()
        )
        if cfg.get("init_ckpt"):
            load_weights(net, cfg.init_ckpt)
        return cls(
            net=net,
            spec=spec,
            optimizer=instantiate(cfg.optimizer),
            objective=objective,
            warmup_steps=cfg.scheduler.warmup_steps,
            cosine_decay=cfg.scheduler.cosine_decay,
            min_lr_ratio=cfg.scheduler.min_lr_ratio,
            ema_decay=cfg.ema_decay,
            max_nonfinite_steps=cfg.max_nonfinite_steps,
            seed=cfg.seed,
            compile=cfg.get("compile", False),
            config=OmegaConf.to_container(cfg, resolve=True),
            representation=representation,
        )

    def configure_model(self) -> None:
        """Compile the training network once it is on its device (``compile=true`` or a backend name)."""
        if self.compile_backend and not getattr(self, "_compiled", False):
            # in place: parameter names stay free of the ``_orig_mod.`` prefix
            self.net.compile(backend=self.compile_backend)
            self._compiled = True

    def conditions(self, batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        """The ``(cond, mask)`` the network needs, taken from a batch."""
        return conditions(self.net, batch)

    # ----------------------------------------------------------------------------- training
    def step_generator(self, device: torch.device) -> torch.Generator:
        """The generator of this optimiser step on this rank (see ``seed`` in the class docstring)."""
        index = self.global_step * self.trainer.world_size + self.trainer.global_rank
        return torch.Generator(device=device).manual_seed(seed_for(self.seed, index))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One step of the objective; a non-finite loss or gradient skips the update (see below)."""
        batch = self.representation.encode_batch(batch)
        loss, logs = self.objective.loss(self.net, batch, self.step_generator(batch["image"].device))
        self._loss_finite = torch.isfinite(loss.detach())
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=n)
        return loss  # a non-finite loss makes non-finite gradients: on_before_optimizer_step skips the update

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when the loss or a gradient is not finite, decided on the device.

        A fused optimiser reads the flag itself (``found_inf``: the update and its step count are undone on
        the device); any other optimiser gets its gradients dropped after a host read of the flag.
        """
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        finite = self._loss_finite if self._loss_finite is not None else torch.ones((), dtype=torch.bool)
        finite = finite.to(self.device)
        self._grad_norm = None
        if grads:
            self._grad_norm = global_norm(grads)
            finite = finite & torch.isfinite(self._grad_norm)
            self.log("train/grad_norm", self._grad_norm.detach())
        found_inf = (~finite).float()
        if self._run is None:
            self._run, self._total = torch.zeros_like(found_inf), torch.zeros_like(found_inf)
        self._run = (self._run + found_inf) * found_inf
        self._total = self._total + found_inf
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf, optimizer.grad_scale = found_inf, None
        elif bool(found_inf):
            optimizer.zero_grad(set_to_none=True)
        if self.host_reads_are_free() or self.global_step % self.nonfinite_check_every == 0:
            self.check_nonfinite()

    def host_reads_are_free(self) -> bool:
        """Whether reading a device value on the host costs no synchronisation (the CPU): then the
        non-finite counters are read every step, else every ``nonfinite_check_every`` steps."""
        return self.device.type == "cpu"

    def check_nonfinite(self) -> None:
        """Read the counters (a host sync on a GPU): warn of skipped steps, abort after too many in a row."""
        if self._total is None:
            return
        total, run = int(self._total), int(self._run)
        self.nonfinite_total = total
        if total > self._reported_total:
            log.warning(
                "step %d: %d non-finite step(s) skipped since the last check (%d in a row now)",
                self.global_step,
                total - self._reported_total,
                run,
            )
            self._reported_total = total
        self.log("train/nonfinite_steps", float(total))
        if run >= self.max_nonfinite_steps:
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise FloatingPointError(
                f"{run} consecutive steps with a non-finite loss or gradient "
                f"(last at step {self.global_step}); training stopped. Last good checkpoint: {ckpt}. "
                "Lower optimizer.lr, keep gradient clipping on, or check the data for NaN values."
            )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients (``trainer.gradient_clip_val``) in every precision, fused optimisers included.

        Lightning's mixed-precision plugin refuses to clip for an optimiser that unscales inside its step
        (fused AdamW), even under ``bf16-mixed``, which has nothing to unscale. Here: under ``bf16-mixed`` and
        ``32-true`` the gradients are clipped as they are; under ``16-mixed`` a fused optimiser's gradients
        are first unscaled by the loss scaler (which the plugin leaves to the optimiser's step; the scaler
        then steps without a scale, its overflow flag intact). The norm is the one
        :meth:`on_before_optimizer_step` computed (recomputed after an unscale); no host read.
        """
        if not gradient_clip_val:
            return
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not grads:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        norm = self._grad_norm
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)
            norm = None
        if (gradient_clip_algorithm or "norm") == "value":
            torch._foreach_clamp_min_(grads, -gradient_clip_val)
            torch._foreach_clamp_max_(grads, gradient_clip_val)
            return
        clip_by_global_norm(grads, gradient_clip_val, norm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the weight average's update.

        Here rather than in ``on_train_batch_end``, which Lightning calls after the callbacks' hook of that
        name: a checkpoint saved there (``every_n_train_steps``) would hold an average one update behind
        its step, and a run resumed from it would drift from the uninterrupted one. Under gradient
        accumulation the average also moves once per optimiser step, not once per batch.
        """
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss of the raw and the averaged network on a fixed draw of noise and times."""
        n = batch["image"].shape[0]
        batch = self.representation.encode_batch(batch)
        for name, net in (("val/loss", self.net), ("val/loss_ema", self.ema.module)):
            g = torch.Generator(device=batch["image"].device).manual_seed(1000 + batch_idx)
            loss, _ = self.objective.loss(net, batch, g, train=False)
            self.log(name, loss, batch_size=n, sync_dist=True, prog_bar=name == "val/loss")

    # ----------------------------------------------------------------------------- sampling
    @torch.inference_mode()
    def generate(
        self,
        indices: Tensor | list[int],
        seed: int,
        sampler: str | None = None,
        steps: int | None = 10,
        cond: Tensor | None = None,
        mask: Tensor | None = None,
        guidance_scale: float = 1.0,
        use_ema: bool = True,
        options: SamplerOptions | None = None,
    ) -> SampleResult:
        """Sample images ``indices`` (each from its own seeded noise) with one of the objective's samplers.

        Args:
            indices: global sample indices ``[B]``; sample i depends only on ``(seed, i)``.
            seed: the sampling seed.
            sampler: a sampler of the objective (default: its first default sampler).
            steps: sampler steps.
            cond: class labels ``[B]`` for class-conditional models.
            mask: label maps ``[B, 1, *spatial]`` for mask-conditional models.
            guidance_scale: classifier-free guidance weight.
            use_ema: sample with the averaged weights.
            options: sampler options.

        Returns:
            The :class:`SampleResult` (images ``[B, C, *spatial]`` clamped to [-1, 1], decoded from the
            representation the flow runs in).
        """
        net = self.ema.module if use_ema else self.net
        indices = torch.as_tensor(indices).tolist()
        noise = SampleNoise(self.representation.coeff_shape, indices, seed, self.device)
        sampler = sampler or self.objective.default_samplers[0]
        result = self.objective.sample(net, noise, sampler, steps, cond, mask, guidance_scale, options)
        result.x = self.representation.decode(result.x).clamp(-1, 1)
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
        checkpoint["motfm"] = {
            "config": self.config,
            "data_spec": self.spec.to_dict(),
            "method": self.objective.name,
            "representation": self.representation.to_dict(),
            "format": 2,
        }


def build_representation(cfg: DictConfig, spec: DataSpec) -> Representation:
    """The representation of a composed training config (``representation=pixel|haar``; pixels if absent),
    its band scales not yet estimated (:meth:`Representation.fit`)."""
    if cfg.get("representation") is None:
        return PixelRepresentation(spec)
    representation = instantiate(cfg.representation, _partial_=True)(spec=spec)
    if getattr(representation, "levels", 1) > 1:
        log.warning(
            "representation.levels=%d: in experiments/wavelet two Haar levels gave blocky or noisy samples "
            "at every width and band scale tried; one level is the tested choice (docs/wavelet.md)",
            representation.levels,
        )
    return representation
