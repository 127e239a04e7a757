"""Replay the network's forward pass as a captured CUDA graph: no per-kernel launch cost when sampling.

A sampler calls the network with the same shapes at every step, so the forward pass can be recorded once
per input signature (shapes, dtypes, which optional inputs are present, autocast state) and replayed with
new values copied into its static input buffers (NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide; PyTorch
``torch.cuda.CUDAGraph``). This needs a forward pass with no host-device synchronisation, which
:class:`~motfm.nn.velocity.VelocityNet` guarantees (label and mask values are checked at the data boundary).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from motfm.nn.velocity import batch_time

log = logging.getLogger(__name__)

_INPUTS = ("x", "t", "r", "cond", "mask")


class CapturedNet:
    """Calls ``net(x, t, *, r=None, cond=None, mask=None)`` through CUDA graphs captured on first use.

    Attributes other than the call (``num_classes``, ``null_cond``, ...) are those of ``net``. Outputs are
    copies, so a caller may keep them across calls.

    Args:
        net: the network (in eval mode, on a CUDA device).
        warmup: eager calls on a side stream before capturing (lets cuDNN / cuBLAS pick their kernels).
    """

    def __init__(self, net: nn.Module, warmup: int = 2) -> None:
        self.net = net
        self.warmup = warmup
        self.graphs: dict[tuple[Any, ...], tuple[torch.cuda.CUDAGraph, dict[str, Tensor], Tensor]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net, name)

    def _key(self, inputs: dict[str, Tensor | None]) -> tuple[Any, ...]:
        parts: list[Any] = [torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")]
        for name in _INPUTS:
            v = inputs[name]
            parts.append(None if v is None else (tuple(v.shape), v.dtype, v.device))
        return tuple(parts)

    def _capture(
        self, inputs: dict[str, Tensor | None]
    ) -> tuple[torch.cuda.CUDAGraph, dict[str, Tensor], Tensor]:
        static = {k: v.clone() for k, v in inputs.items() if v is not None}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.net(**static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.net(**static)
        log.info(
            "captured a CUDA graph of the network for inputs %s",
            {k: tuple(v.shape) for k, v in static.items()},
        )
        return graph, static, out

    def __call__(
        self,
        x: Tensor,
        t: Tensor | float,
        *,
        r: Tensor | float | None = None,
        cond: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """The network's output for these inputs (shapes as in :meth:`VelocityNet.forward`)."""
        inputs = {
            "x": x,
            "t": batch_time(t, x, "t").contiguous(),
            "r": None if r is None else batch_time(r, x, "r").contiguous(),
            "cond": cond,
            "mask": mask,
        }
        key = self._key(inputs)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs)
        graph, static, out = self.graphs[key]
        for name, value in static.items():
            value.copy_(inputs[name])
        graph.replay()
        return out.clone()


class CompiledNet:
    """The network with its forward pass compiled by ``torch.compile`` (attributes are those of ``net``)."""

    def __init__(self, net: nn.Module, mode: str | None = None, backend: str = "inductor") -> None:
        self.net = net
        self.compiled = torch.compile(net, mode=mode, backend=backend, dynamic=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """The compiled forward pass."""
        return self.compiled(*args, **kwargs)


def sampling_net(
    net: nn.Module, cuda_graphs: bool = False, compile: bool | str = False
) -> nn.Module | CapturedNet | CompiledNet:
    """The network as a sampler should call it.

    Args:
        net: the network.
        cuda_graphs: replay captured CUDA graphs (on a CUDA device; ignored with a log line elsewhere).
        compile: ``torch.compile`` the forward pass (``True``, or a mode such as ``"max-autotune"``).

    Returns:
        ``net``, or a wrapper with the same attributes.
    """
    if compile:
        return CompiledNet(net, None if compile is True else str(compile))
    if not cuda_graphs:
        return net
    device = next(net.parameters()).device
    if device.type != "cuda":
        log.info("cuda_graphs=true ignored: the network runs on %s, not a CUDA device", device)
        return net
    return CapturedNet(net)
