"""MONAI Generative parameter names -> the suite's, as a table of rename rules.

The original MOTFM network is MONAI Generative's ``DiffusionModelUNet`` (+ ``ControlNet``) inside its
``MergedModel``, saved by Lightning under ``model.unet.*`` / ``model.controlnet.*``. At the same sizes the
suite's :class:`~motfm.nn.velocity.VelocityNet` holds the same parameters one for one (built with
``attention_block=plain`` for MONAI's unconditional attention, ``mask_input=scaled`` for its one-channel
ControlNet input), under other names, with three changes of form:

- ``squeeze``: MONAI's spatial transformer projects in and out with 1x1 convolutions ``[C, C, 1, 1]``,
  the suite with linear layers ``[C, C]`` (the same map);
- ``k`` / ``v``: MONAI's separate key and value projections are the two halves of the suite's ``to_kv``
  (keys first);
- ``drop``: the output projection of MONAI's plain attention block, which its forward pass never applies;
- everything else is copied.

A rule is a pair of templates, MONAI name and suite name, whose ``{i}``, ``{j}``, ``{k}`` stand for indices
and ``{p}`` for ``weight`` / ``bias``; a name is translated by a block rule (:data:`BLOCK_RULES`, the module
path) followed by a part rule of that block's kind (:data:`PART_RULES`). The tables read both ways, so an
error can name the MONAI parameter a suite parameter comes from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# (MONAI prefix, suite prefix) of the two networks of a MOTFM MergedModel in its Lightning checkpoint.
NETWORKS = (("model.unet.", "unet."), ("model.controlnet.", "controlnet."))

# (MONAI block path, suite module path, part kind). The encoder half (time embedding, input convolution,
# down levels, middle block) is the same in the UNet and the ControlNet.
BLOCK_RULES: tuple[tuple[str, str, str], ...] = (
    ("conv_in.conv.", "encoder.conv_in.", "leaf"),
    ("time_embed.{i}.", "encoder.time_embed.mlp.{i}.", "leaf"),
    ("down_blocks.{i}.resnets.{j}.", "encoder.levels.{i}.{j}.res.", "resnet"),
    ("down_blocks.{i}.attentions.{j}.", "encoder.levels.{i}.{j}.attn.", "attention"),
    ("down_blocks.{i}.downsampler.", "encoder.downsamplers.{i}.", "downsampler"),
    ("middle_block.resnet_1.", "encoder.mid1.res.", "resnet"),
    ("middle_block.attention.", "encoder.mid1.attn.", "attention"),
    ("middle_block.resnet_2.", "encoder.mid2.res.", "resnet"),
    ("up_blocks.{i}.resnets.{j}.", "levels.{i}.{j}.res.", "resnet"),
    ("up_blocks.{i}.attentions.{j}.", "levels.{i}.{j}.attn.", "attention"),
    ("up_blocks.{i}.upsampler.", "upsamplers.{i}.", "upsampler"),
    ("out.0.", "norm_out.", "leaf"),
    ("out.2.conv.", "conv_out.", "leaf"),
    # ControlNet only: the mask embedding (one hidden width: conv, SiLU, conv) and the zero convolutions
    # (MONAI keeps the first one bare, the others inside a Convolution).
    ("controlnet_cond_embedding.conv_in.conv.", "mask_embed.net.0.", "leaf"),
    ("controlnet_cond_embedding.conv_out.conv.", "mask_embed.net.2.", "leaf"),
    ("controlnet_down_blocks.0.", "zero_convs.0.", "leaf"),
    ("controlnet_down_blocks.{i}.conv.", "zero_convs.{i}.", "leaf"),
    ("controlnet_mid_block.conv.", "mid_zero_conv.", "leaf"),
)

_RESNET = (
    ("norm1.{p}", "norm1.{p}", "copy"),
    ("conv1.conv.{p}", "conv1.{p}", "copy"),
    ("time_emb_proj.{p}", "temb.{p}", "copy"),
    ("norm2.{p}", "norm2.{p}", "copy"),
    ("conv2.conv.{p}", "conv2.{p}", "copy"),
    ("skip_connection.conv.{p}", "skip.{p}", "copy"),
)
_ATTENTION_LAYER = (
    ("to_q.weight", "to_q.weight", "copy"),
    ("to_k.weight", "to_kv.weight", "k"),
    ("to_v.weight", "to_kv.weight", "v"),
    ("to_out.0.{p}", "to_out.{p}", "copy"),
)

# Part kind -> (MONAI part, suite part, transform).
PART_RULES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "leaf": (("{p}", "{p}", "copy"),),
    "resnet": _RESNET,
    # resblock_updown=True: a residual block; False: MONAI's strided / upsampling convolution.
    "downsampler": (*_RESNET, ("op.conv.{p}", "conv.{p}", "copy")),
    "upsampler": (*_RESNET, ("conv.conv.{p}", "conv.{p}", "copy")),
    "attention": (
        ("norm.{p}", "norm.{p}", "copy"),
        # The spatial transformer of conditioned models.
        ("proj_in.conv.{p}", "proj_in.{p}", "squeeze"),
        ("proj_out.conv.{p}", "proj_out.{p}", "squeeze"),
        *(
            (f"transformer_blocks.{{k}}.attn1.{a}", f"layers.{{k}}.self_attn.{b}", o)
            for a, b, o in _ATTENTION_LAYER
        ),
        *(
            (f"transformer_blocks.{{k}}.attn2.{a}", f"layers.{{k}}.cross_attn.{b}", o)
            for a, b, o in _ATTENTION_LAYER
        ),
        ("transformer_blocks.{k}.ff.linear1.{p}", "layers.{k}.ff.proj_in.{p}", "copy"),
        ("transformer_blocks.{k}.ff.linear2.{p}", "layers.{k}.ff.proj_out.{p}", "copy"),
        ("transformer_blocks.{k}.norm{n}.{p}", "layers.{k}.norm{n}.{p}", "copy"),
        # The plain attention block of unconditional models (query / key / value with biases); MONAI never
        # applies its proj_attn, so it is left out.
        ("to_q.{p}", "to_q.{p}", "copy"),
        ("to_k.{p}", "to_kv.{p}", "k"),
        ("to_v.{p}", "to_kv.{p}", "v"),
        ("proj_attn.{p}", "", "drop"),
    ),
}

_FIELDS = {"i": r"\d+", "j": r"\d+", "k": r"\d+", "n": r"\d+", "p": r"weight|bias"}


class KeyMismatch(ValueError):
    """A parameter name or shape that does not translate (the message names the parameter)."""


def _pattern(template: str, whole: bool) -> re.Pattern[str]:
    """A regex of a template: ``{f}`` becomes a named group; a prefix template matches a name's start."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\w)\}", template):
        out += [re.escape(template[pos : m.start()]), f"(?P<{m.group(1)}>{_FIELDS[m.group(1)]})"]
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + ("$" if whole else ""))


@dataclass(frozen=True)
class Rename:
    """One translated parameter: the suite's name, how the tensor changes, and the MONAI name."""

    target: str
    transform: str
    source: str


def _translate(name: str, forward: bool) -> Iterator[Rename]:
    """Every translation of ``name`` (MONAI -> suite if ``forward``, else back) by block + part rules."""
    for net_src, net_dst in NETWORKS:
        src_net, dst_net = (net_src, net_dst) if forward else (net_dst, net_src)
        if not name.startswith(src_net):
            continue
        rest = name[len(src_net) :]
        for block in BLOCK_RULES:
            b_src, b_dst = (block[0], block[1]) if forward else (block[1], block[0])
            m = _pattern(b_src, whole=False).match(rest)
            if m is None:
                continue
            for part in PART_RULES[block[2]]:
                p_src, p_dst = (part[0], part[1]) if forward else (part[1], part[0])
                pm = _pattern(p_src, whole=True).match(rest[m.end() :])
                if pm is not None:
                    translated = dst_net + b_dst.format(**m.groupdict()) + p_dst.format(**pm.groupdict())
                    yield Rename(translated, part[2], name if forward else translated)


def to_suite_name(name: str) -> Rename | None:
    """The suite parameter a MONAI parameter name (``model.unet.*`` / ``model.controlnet.*``) becomes."""
    return next(_translate(name, forward=True), None)


def to_monai_name(name: str) -> str | None:
    """The MONAI parameter a suite parameter comes from (the key half for a merged ``to_kv``)."""
    return next((r.target for r in _translate(name, forward=False)), None)


def convert_state(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Translate a MONAI ``MergedModel`` state dict into the suite network's.

    Args:
        state: ``model.unet.*`` / ``model.controlnet.*`` tensors (a MOTFM checkpoint's ``state_dict``).
        expected: the suite network's ``state_dict()``, built from the checkpoint's config.

    Returns:
        The suite state dict (same keys and shapes as ``expected``).

    Raises:
        KeyMismatch: naming the first parameter, in checkpoint order, that no rule translates, that the
            configured network does not have, or whose shape differs; else the first missing one.
    """
    out: dict[str, Tensor] = {}
    halves: dict[str, dict[str, Tensor]] = {}
    for name, tensor in state.items():
        rename = to_suite_name(name)
        if rename is None:
            raise KeyMismatch(f"parameter {name!r} is not a MONAI DiffusionModelUNet / ControlNet one")
        if rename.transform == "drop":
            continue
        if rename.target not in expected:
            raise KeyMismatch(f"parameter {name!r} has no place in the network its config describes")
        want = expected[rename.target].shape
        if rename.transform == "squeeze":
            tensor = tensor.reshape(tensor.shape[0], -1) if rename.target.endswith("weight") else tensor
        if rename.transform in ("k", "v"):
            half = torch.Size([want[0] // 2, *want[1:]])
            if tensor.shape != half:
                raise KeyMismatch(
                    f"parameter {name!r} has shape {list(tensor.shape)}, its config {list(half)}"
                )
            halves.setdefault(rename.target, {})[rename.transform] = tensor
            continue
        if tensor.shape != want:
            raise KeyMismatch(f"parameter {name!r} has shape {list(tensor.shape)}, its config {list(want)}")
        out[rename.target] = tensor
    for target, parts in halves.items():
        if set(parts) == {"k", "v"}:
            out[target] = torch.cat([parts["k"], parts["v"]])
    for target in expected:
        if target not in out:
            raise KeyMismatch(
                f"parameter {to_monai_name(target) or target!r} is missing (its config needs it)"
            )
    return out
