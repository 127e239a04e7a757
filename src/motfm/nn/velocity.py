"""The one model API of the suite: ``net(x, t, *, r=None, cond=None, mask=None) -> v``.

:class:`VelocityNet` turns conditions into what the backbone consumes (class labels into a
cross-attention context through :class:`ClassEmbedding`, a label map into ControlNet residuals) and
keeps the backbone itself unaware of conditioning modes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from motfm.checkpoint import read_checkpoint, weights_under
from motfm.data_spec import DataSpec
from motfm.nn.controlnet import ControlNet, check_mask
from motfm.nn.embeddings import ClassEmbedding, LabelContext, OneHotContext
from motfm.nn.unet import UNet, UNetConfig

CONDITIONINGS = ("class", "mask")
# How class labels become the cross-attention context: a learned token table (the suite's), or the one-hot
# vector itself as one token of width num_classes (the original MOTFM's; imported models).
CLASS_CONTEXTS = ("learned", "one_hot")


def batch_time(t: Tensor | float, x: Tensor, name: str = "t") -> Tensor:
    """A time (or ``r``) as ``[B]`` on ``x``'s device: float32, or float64 for float64 ``x``.

    Args:
        t: a scalar or ``[B]``.
        x: the batch ``[B, ...]`` it belongs to.
        name: named in the error.
    """
    b = x.shape[0]
    t = torch.as_tensor(t, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    t = t.expand(b) if t.ndim == 0 else t
    if t.shape != (b,):
        raise ValueError(f"{name} must be a scalar or have shape [B]=[{b}], got {tuple(t.shape)}")
    return t


class VelocityNet(nn.Module):
    """A UNet velocity field with optional class (cross-attention) and mask (ControlNet) conditioning.

    Args:
        unet: the backbone.
        class_embedding: present for class-conditional models (learned tokens, or the one-hot context).
        controlnet: present for mask-conditional models.
        conditioning_scale: multiplies the ControlNet residuals (1 = as trained).
        channels_last: run convolutions in channels-last memory format (faster on CPU and GPU).
    """

    def __init__(
        self,
        unet: UNet,
        class_embedding: LabelContext | None = None,
        controlnet: ControlNet | None = None,
        conditioning_scale: float = 1.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.class_embedding = class_embedding
        self.controlnet = controlnet
        self.conditioning_scale = conditioning_scale
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=self.memory_format)

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.unet.cfg.spatial_dims

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format inputs are converted to."""
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d

    @property
    def num_classes(self) -> int:
        """Number of classes of a class-conditional model (0 otherwise)."""
        return 0 if self.class_embedding is None else self.class_embedding.num_classes

    @property
    def num_mask_labels(self) -> int:
        """Number of mask labels of a mask-conditional model (0 otherwise)."""
        return 0 if self.controlnet is None else self.controlnet.num_mask_labels

    def null_cond(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """The null class label ``[B]`` (the unconditional branch of classifier-free guidance)."""
        if self.class_embedding is None:
            raise ValueError("this model is not class-conditional")
        return torch.full((batch_size,), self.class_embedding.null_index, dtype=torch.long, device=device)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute the UNet's (and ControlNet's) residual / attention stages in the backward pass instead of
        storing their activations: less training memory for one more forward pass (training mode only)."""
        encoders = [self.unet.encoder] + ([self.controlnet.encoder] if self.controlnet is not None else [])
        for module in (self.unet, *encoders):
            module.activation_checkpointing = bool(enabled)

    @property
    def has_interval(self) -> bool:
        """Whether the network takes MeanFlow's second time ``r``."""
        return self.unet.cfg.interval_embedding

    def check_conditions(self, cond: Tensor | None, mask: Tensor | None) -> None:
        """Check label and mask *values* (a host read): call it where conditions enter, not per step."""
        if self.class_embedding is not None and cond is not None and not cond.is_floating_point():
            self.class_embedding.check_labels(cond)
        if self.controlnet is not None and mask is not None:
            check_mask(mask, self.controlnet.num_mask_labels, self.spatial_dims)

    def context(self, cond: Tensor | None, batch_size: int, device: torch.device) -> Tensor | None:
        """The cross-attention context ``[B, L, D]`` for ``cond`` (labels ``[B]`` or a ready context)."""
        if self.class_embedding is None:
            if cond is not None:
                raise ValueError("this model is not class-conditional, but a condition was given")
            return None
        if cond is None:
            cond = self.null_cond(batch_size, device)
        if cond.is_floating_point():
            if cond.ndim != 3 or cond.shape[0] != batch_size or cond.shape[2] != self.class_embedding.dim:
                raise ValueError(
                    f"a context condition must be [B={batch_size}, L, D={self.class_embedding.dim}], "
                    f"got {tuple(cond.shape)}"
                )
            return cond
        if cond.shape != (batch_size,):
            raise ValueError(f"class labels must have shape [B]=[{batch_size}], got {tuple(cond.shape)}")
        return self.class_embedding(cond)

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        *,
        r: Tensor | float | None = None,
        cond: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity at ``(x, t)`` (or, given ``r``, the average velocity over ``[t, r]``).

        Only shapes are checked here (no host-device synchronisation, so the forward pass compiles as one
        graph and can be captured in a CUDA graph); label and mask values are checked where they enter the
        suite (:meth:`check_conditions`).

        Args:
            x: state ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
            t: time in [0, 1], ``[B]`` or a scalar (broadcast); used as a float.
            r: the end of the averaging interval ``[B]`` or a scalar (networks built with
                ``interval_embedding``, see :mod:`motfm.objectives.meanflow`); ``None`` means ``r = t``.
            cond: class labels int64 ``[B]`` (value ``num_classes`` = no condition), or a context
                ``[B, L, D]``; ``None`` means unconditional (the null token for class models).
            mask: int64 label map ``[B, 1, *spatial]`` at the image resolution (``mask_downsample`` times
                ``x``'s side on wavelet coefficients), required by mask-conditional models.

        Returns:
            The velocity, same shape as ``x``.
        """
        b = x.shape[0]
        t = batch_time(t, x, "t")
        if r is not None:
            r = batch_time(r, x, "r")
        self.unet.check_input(x)
        x = x.contiguous(memory_format=self.memory_format)
        context = self.context(cond, b, x.device)
        down = mid = None
        if self.controlnet is not None:
            if mask is None:
                raise ValueError("this model is mask-conditional: pass mask=[B, 1, *spatial] int64 label map")
            if mask.shape[0] != b:
                raise ValueError(f"mask batch size {mask.shape[0]} differs from the image batch size {b}")
            down, mid = self.controlnet(x, t, mask, context, self.conditioning_scale, r=r)
        elif mask is not None:
            raise ValueError("this model is not mask-conditional, but a mask was given")
        return self.unet(x, t, context, down, mid, r=r)


def build_velocity_net(
    spec: DataSpec,
    spatial_dims: int = 2,
    channels: Sequence[int] = (64, 128, 256),
    num_res_blocks: int | Sequence[int] = 2,
    attention_levels: Sequence[bool] = (False, True, True),
    head_dim: int | Sequence[int] = 32,
    norm_groups: int = 32,
    dropout: float = 0.0,
    transformer_num_layers: int = 1,
    attention_backend: str = "sdpa",
    conditioning: Sequence[str] = (),
    class_tokens: int = 1,
    class_dim: int = 256,
    mask_embed_channels: Sequence[int] = (16, 32),
    conditioning_scale: float = 1.0,
    channels_last: bool = True,
    base_ckpt: str | None = None,
    freeze_base: bool = False,
    interval_embedding: bool = False,
    resblock_updown: bool = False,
    ff_mult: int = 4,
    activation_checkpointing: bool = False,
    attention_block: str = "transformer",
    max_timestep: int | None = None,
    class_context: str = "learned",
    mask_input: str = "one_hot",
    mask_downsample: int = 1,
) -> VelocityNet:
    """Build a :class:`VelocityNet` sized by the data (channels, classes, mask labels).

    Args:
        spec: what the dataset provides.
        spatial_dims: 2 or 3; must match the data.
        channels, num_res_blocks, attention_levels, head_dim, norm_groups, dropout,
            transformer_num_layers, attention_backend, resblock_updown, ff_mult: see :class:`UNetConfig`.
        conditioning: any of ``"class"`` (cross-attention to label tokens) and ``"mask"`` (ControlNet).
        class_tokens: tokens per class label (context length ``L``).
        class_dim: token width ``D``.
        mask_embed_channels: hidden widths of the ControlNet's mask embedding.
        conditioning_scale: ControlNet residual multiplier.
        channels_last: channels-last memory format.
        base_ckpt: a motfm checkpoint whose (EMA) UNet and class embedding initialise the backbone, e.g.
            an unconditional or class-conditional model to which a ControlNet is added.
        freeze_base: train only what the base does not contain (the ControlNet), as in Zhang et al. 2023.
        interval_embedding: a second time input ``r`` (set by objectives that need it, e.g. MeanFlow).
        activation_checkpointing: recompute activations in the backward pass (less training memory, one
            more forward; see :meth:`VelocityNet.set_activation_checkpointing`). Not part of the architecture.
        attention_block, max_timestep: see :class:`UNetConfig` (imported MOTFM models: ``plain``, 1000).
        class_context: ``learned`` (:class:`ClassEmbedding`) or ``one_hot`` (:class:`OneHotContext`, needs
            ``class_dim = num_classes`` and ``class_tokens = 1``; imported MOTFM models).
        mask_input: ``one_hot`` or ``scaled`` (see :func:`motfm.nn.controlnet.mask_channels`).
        mask_downsample: the image side over ``spec``'s (set by a wavelet representation, whose ``spec`` is
            the coefficients'): masks stay label maps at the image resolution (see :class:`ControlNet`).

    Returns:
        The network.
    """
    conditioning = tuple(conditioning)
    unknown = set(conditioning) - set(CONDITIONINGS)
    if unknown:
        raise ValueError(f"unknown conditioning {sorted(unknown)}; expected a subset of {CONDITIONINGS}")
    if spatial_dims != spec.spatial_dims:
        raise ValueError(f"the model is {spatial_dims}D but the data are {spec.spatial_dims}D")
    if "class" in conditioning and not spec.has_label:
        raise ValueError("model.conditioning has 'class', but the dataset provides no class labels")
    if "mask" in conditioning and not spec.has_mask:
        raise ValueError("model.conditioning has 'mask', but the dataset provides no masks")
    has_class = "class" in conditioning
    if class_context not in CLASS_CONTEXTS:
        raise ValueError(f"class_context must be one of {CLASS_CONTEXTS}, got {class_context!r}")
    if has_class and class_context == "one_hot" and (class_dim != spec.num_classes or class_tokens != 1):
        raise ValueError(
            f"class_context=one_hot needs class_dim = num_classes = {spec.num_classes} and class_tokens = 1, "
            f"got {class_dim} and {class_tokens}"
        )
    cfg = UNetConfig(
        spatial_dims=spatial_dims,
        in_channels=spec.channels,
        channels=channels,
        num_res_blocks=num_res_blocks,
        attention_levels=attention_levels,
        head_dim=head_dim,
        norm_groups=norm_groups,
        dropout=dropout,
        transformer_num_layers=transformer_num_layers,
        context_dim=class_dim if has_class else None,
        attention_backend=attention_backend,
        interval_embedding=interval_embedding,
        resblock_updown=resblock_updown,
        ff_mult=ff_mult,
        attention_block=attention_block,
        max_timestep=max_timestep,
    )
    if has_class and not any(cfg.attention_levels):
        raise ValueError(
            "class conditioning enters through cross-attention: enable at least one attention level"
        )
    bad = [s for s in spec.image_size if s % cfg.downsample_factor]
    if bad:
        raise ValueError(
            f"image size {spec.image_size} is not divisible by {cfg.downsample_factor} "
            f"(the UNet halves it {len(cfg.channels) - 1} times)"
        )
    unet = UNet(cfg)
    class_embedding: LabelContext | None = None
    if has_class and class_context == "one_hot":
        class_embedding = OneHotContext(spec.num_classes)
    elif has_class:
        class_embedding = ClassEmbedding(spec.num_classes, class_tokens, class_dim)
    if base_ckpt is not None:
        load_base(base_ckpt, unet, class_embedding if isinstance(class_embedding, ClassEmbedding) else None)
    elif freeze_base:
        raise ValueError("model.freeze_base=true needs model.base_ckpt, the checkpoint of the base model")
    if freeze_base:
        unet.requires_grad_(False)
        if class_embedding is not None:
            class_embedding.requires_grad_(False)
    controlnet = None
    if "mask" in conditioning:
        controlnet = ControlNet.from_unet(
            unet, spec.num_mask_labels, mask_embed_channels, mask_input, mask_downsample
        )
    net = VelocityNet(unet, class_embedding, controlnet, conditioning_scale, channels_last)
    net.set_activation_checkpointing(activation_checkpointing)
    return net


def load_base(path: str, unet: UNet, class_embedding: ClassEmbedding | None) -> None:
    """Load the averaged UNet (and class embedding) weights of a motfm checkpoint into ``unet``.

    Raises:
        ValueError: naming the checkpoint when its backbone does not fit this architecture.
    """
    state = read_checkpoint(path)["state_dict"]
    for name, module in (("unet", unet), ("class_embedding", class_embedding)):
        if module is None:
            continue
        part = weights_under(state, f"ema.module.{name}.")
        if not part:
            raise ValueError(f"{path}: the base checkpoint has no {name} weights (is it class-conditional?)")
        try:
            module.load_state_dict(part)
        except RuntimeError as err:
            raise ValueError(f"{path}: the base {name} does not fit model.* of this run: {err}") from err
