"""Exponential moving average of model weights (Polyak averaging; as used by Ho et al. 2020 and
Karras et al. 2022), kept as a separate frozen copy of the network and saved with the checkpoint.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of ``model`` updated as ``ema = d * ema + (1 - d) * model`` after each step.

    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` over the first updates ``n``,
    so that the average is not dominated by the random initialisation of a short run.

    Args:
        model: the network being trained.
        decay: the target decay ``d`` in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._updates: int | None = None  # host copy of num_updates: no device read per step

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._updates = None  # re-read the loaded count once

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if self._updates is None:
            self._updates = int(self.num_updates)  # once per run (or after loading a checkpoint)
        n = self._updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights; buffers are copied."""
        d = self.current_decay()
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1
        self._updates += 1

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """Call the averaged network."""
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> EMA:
        """The averaged copy always stays in eval mode."""
        super().train(mode)
        self.module.eval()
        return self
