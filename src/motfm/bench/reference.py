"""The original MOTFM stack as a benchmark :class:`~motfm.bench.candidates.Candidate` (``reference=true``).

MONAI Generative's ``DiffusionModelUNet`` (+ ``ControlNet`` for mask conditioning), built at the
architecture of a motfm model config and fed as the MOTFM code (github.com/milad1378yz/MOTFM, ``utils_fm.py``
and ``trainer.py``) feeds it: time floored to integer steps ``floor(999 t)``; class conditioning as a one-hot
vector, a 1-token cross-attention context of width ``num_classes``; the mask as one float channel scaled to
[0, 1] into the ControlNet (its conditioning embedding is one convolution of the first ``mask_embed_channels``
width); training with ``flow_matching``'s ``AffineProbPath(CondOTScheduler())``, an MSE loss and Adam;
sampling with ``flow_matching``'s ``ODESolver`` (Euler, ``step_size = 1 / NFE``). Needs the optional extra
``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motfm.bench.candidates import Candidate
from motfm.data.base import DataSpec
from motfm.runtime import autocast

REFERENCE_PACKAGES = {"generative": "monai-generative", "monai": "monai", "flow_matching": "flow-matching"}


def reference_missing() -> str | None:
    """Why the reference stack cannot be built here (a missing package), or ``None`` when it can."""
    missing = [pkg for module, pkg in REFERENCE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install -e '.[bench]')"
    return None


def monai_kwargs(
    model: dict[str, Any], spec: DataSpec, device: torch.device
) -> tuple[dict[str, Any], list[str]]:
    """``DiffusionModelUNet`` keyword arguments at the architecture of a motfm model config.

    Args:
        model: the ``model`` section of a resolved training config.
        spec: the data description.
        device: where it will run (xformers attention, which MOTFM's configs ask for, exists only on CUDA).

    Returns:
        ``(kwargs, notes)``: the arguments (without ``out_channels``) and where the two architectures differ.
    """
    conditioning = set(model.get("conditioning") or ())
    with_class = "class" in conditioning
    head_dim = model.get("head_dim", 32)
    flash = device.type == "cuda" and importlib.util.find_spec("xformers") is not None
    kwargs = {
        "spatial_dims": model["spatial_dims"],
        "in_channels": spec.channels,
        "num_res_blocks": model.get("num_res_blocks", 2),
        "num_channels": tuple(model["channels"]),
        "attention_levels": tuple(model["attention_levels"]),
        "norm_num_groups": model.get("norm_groups", 32),
        "resblock_updown": bool(model.get("resblock_updown", False)),
        "num_head_channels": head_dim if isinstance(head_dim, int) else tuple(head_dim),
        "transformer_num_layers": model.get("transformer_num_layers", 1),
        "with_conditioning": with_class,
        "cross_attention_dim": spec.num_classes if with_class else None,
        "use_flash_attention": flash,
    }
    notes = [f"attention: {'xformers' if flash else 'MONAI baddbmm/softmax/bmm (MOTFM asks for xformers)'}"]
    ff_mult = model.get("ff_mult", 4)
    if with_class and ff_mult != 4:
        notes.append(f"feed-forward: MONAI GEGLU x4, motfm x{ff_mult}")
    if not with_class and (ff_mult != 0 or model.get("transformer_num_layers", 1) != 1):
        notes.append("attention: MONAI one plain attention block (unconditional), motfm transformer layers")
    if not with_class and any(model["attention_levels"]):
        notes.append("motfm's attention adds 1x1 projections in and out")
    if "mask" in conditioning and len(model.get("mask_embed_channels") or ()) > 1:
        notes.append(f"ControlNet mask embedding: MONAI one conv, motfm {list(model['mask_embed_channels'])}")
    return kwargs, notes


class MotfmStyleModel(nn.Module):
    """UNet (+ ControlNet) called as the MOTFM code calls it: ``model(x, t, cond, masks)``.

    Args:
        unet: a ``DiffusionModelUNet``.
        controlnet: a ``ControlNet`` for mask conditioning, or ``None``.
        max_timestep: time ``t`` enters as the integer step ``floor(t (max_timestep - 1))``.
    """

    def __init__(
        self, unet: nn.Module, controlnet: nn.Module | None = None, max_timestep: int = 1000
    ) -> None:
        super().__init__()
        self.unet, self.controlnet, self.max_timestep = unet, controlnet, max_timestep

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, masks: Tensor | None = None
    ) -> Tensor:
        """``x`` ``[B, C, *S]``, ``t`` in [0, 1] (``[B]`` or a scalar), ``cond`` one-hot ``[B, K]``,
        ``masks`` ``[B, 1, *S]`` in [0, 1] -> velocity ``[B, C, *S]``."""
        steps = (t * (self.max_timestep - 1)).floor().long()
        if steps.ndim == 0:
            steps = steps.expand(x.shape[0])
        context = cond.unsqueeze(1) if cond is not None and cond.ndim == 2 else cond
        if self.controlnet is None:
            return self.unet(x=x, timesteps=steps, context=context)
        down, mid = self.controlnet(x=x, timesteps=steps, controlnet_cond=masks, context=context)
        return self.unet(
            x=x,
            timesteps=steps,
            context=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )


def build_reference_model(
    model: dict[str, Any], spec: DataSpec, device: torch.device
) -> tuple[nn.Module, list[str]]:
    """The MONAI Generative network at the architecture of ``model`` (see :func:`monai_kwargs`)."""
    from generative.networks.nets import ControlNet, DiffusionModelUNet

    kwargs, notes = monai_kwargs(model, spec, device)
    unet = DiffusionModelUNet(out_channels=spec.channels, **kwargs)
    controlnet = None
    if "mask" in (model.get("conditioning") or ()):
        embed = (list(model.get("mask_embed_channels") or [16]) or [16])[:1]
        controlnet = ControlNet(conditioning_embedding_num_channels=tuple(embed), **kwargs)
        controlnet.load_state_dict(unet.state_dict(), strict=False)  # as MOTFM starts it
    return MotfmStyleModel(unet, controlnet).to(device), notes


def reference_inputs(batch: dict[str, Tensor], spec: DataSpec) -> tuple[Tensor | None, Tensor | None]:
    """MOTFM's conditions of a batch: one-hot classes ``[B, K]`` float, masks ``[B, 1, *S]`` in [0, 1]."""
    cond = F.one_hot(batch["label"], spec.num_classes).float() if spec.num_classes else None
    masks = batch["mask"].float() / max(spec.num_mask_labels - 1, 1) if spec.num_mask_labels else None
    return cond, masks


def build_reference(
    model: dict[str, Any], spec: DataSpec, batch: dict[str, Tensor], device: torch.device, precision: str
) -> Candidate:
    """The reference :class:`Candidate` (see the module docstring).

    Args:
        model: the ``model`` section of the motfm config whose architecture it copies.
        spec: the data description.
        batch: a batch from :func:`~motfm.bench.candidates.random_batch`.
        device: where to run.
        precision: ``fp32`` or ``bf16`` (autocast).
    """
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver

    net, notes = build_reference_model(model, spec, device)
    conditioned = "class" in (model.get("conditioning") or ())
    masked = "mask" in (model.get("conditioning") or ())
    cond, masks = reference_inputs(batch, spec)
    cond, masks = (cond if conditioned else None), (masks if masked else None)
    x1 = batch["image"]
    t = torch.rand(x1.shape[0], generator=torch.Generator().manual_seed(1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    path = AffineProbPath(scheduler=CondOTScheduler())
    solver = ODESolver(velocity_model=net)
    grid = torch.tensor([0.0, 1.0], device=device)

    def forward() -> None:
        net.eval()
        with torch.inference_mode(), autocast(device, precision):
            net(x1, t, cond, masks)

    def sample(nfe: int) -> None:
        net.eval()
        x0 = torch.randn_like(x1)
        with autocast(device, precision):
            solver.sample(
                x_init=x0, step_size=1.0 / nfe, method="euler", time_grid=grid, cond=cond, masks=masks
            )

    def train_step() -> None:
        net.train()
        x0 = torch.randn_like(x1)
        with autocast(device, precision):
            s = path.sample(t=torch.rand(x1.shape[0], device=device), x_0=x0, x_1=x1)
            loss = F.mse_loss(net(s.x_t, s.t, cond, masks), s.dx_t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Candidate(
        "reference", sum(p.numel() for p in net.parameters()), forward, sample, train_step, notes
    )
