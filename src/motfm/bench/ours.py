"""The suite's model as a benchmark :class:`~motfm.bench.candidates.Candidate`, from a training config."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from motfm.bench.candidates import Candidate
from motfm.data.base import DataSpec
from motfm.lit.module import GenerativeModule
from motfm.runtime import autocast


def build_ours(
    cfg: DictConfig, spec: DataSpec, batch: dict[str, Tensor], device: torch.device, precision: str
) -> Candidate:
    """Build the model exactly as ``python -m motfm.train`` would (``GenerativeModule.from_config``).

    The training step is the representation's encoding of the batch (identity on pixels, the Haar transform on
    wavelet coefficients), the objective's loss (with the configured coupling), backward, the configured
    optimiser's step and the EMA update: what a training step costs without Lightning's loop around it.
    Evaluation and sampling use the EMA network, as sampling does; one evaluation is timed on the encoded
    batch (what the sampler feeds the network), sampling includes the decoding.

    Args:
        cfg: a composed training config.
        spec: the data description.
        batch: a batch from :func:`~motfm.bench.candidates.random_batch`.
        device: where to run.
        precision: ``fp32`` or ``bf16`` (autocast).
    """
    module = GenerativeModule.from_config(cfg, spec).to(device)
    module.train()
    net, ema, representation = module.net, module.ema.module, module.representation
    x = representation.encode(batch["image"])
    opt = instantiate(cfg.optimizer)(params=[p for p in net.parameters() if p.requires_grad])
    b = batch["image"].shape[0]
    cond, mask = module.conditions(batch)
    t = torch.rand(b, generator=torch.Generator().manual_seed(1)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def forward() -> None:
        with torch.inference_mode(), autocast(device, precision):
            ema(x, t, cond=cond, mask=mask)

    def sample(nfe: int) -> None:
        with autocast(device, precision):
            module.generate(list(range(b)), 0, "euler", nfe, cond, mask, use_ema=True)

    def train_step() -> None:
        with autocast(device, precision):
            loss, _ = module.objective.loss(net, representation.encode_batch(batch), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        module.ema.update(net)

    notes = [] if representation.kind == "pixel" else [f"flow on {representation.kind} coefficients"]
    if net.unet.encoder.activation_checkpointing:
        notes.append("activation checkpointing on")
    return Candidate("motfm", sum(p.numel() for p in net.parameters()), forward, sample, train_step, notes)
