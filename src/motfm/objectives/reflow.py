"""Reflow (``method=reflow``): flow matching on the teacher's own (noise, sample) pairs.

Liu et al. 2023 ("Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow", ICLR
2023, Sec. 2.3 and Alg. 1): the k-rectified flow is trained with the flow-matching loss on the straight line
between x0 and the teacher's ODE solution x1 = Z(x0), so its trajectories cross less and few-step samples
improve. With ``distill`` it trains only the t = 0 velocity, so that one Euler step x0 + v(x0, 0) maps x0 to
x1 (the paper's one-step distillation, with the squared error). The pairs come from the batch
(``data=pairs``: ``image`` is x1, ``noise`` is x0); the student starts from the teacher (``init_ckpt``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from motfm.flow.paths import CondOTPath, TimeSampler
from motfm.objectives.base import NetFn
from motfm.objectives.flow_matching import FlowMatching


class Reflow(FlowMatching):
    """Flow matching on given pairs (no coupling: the teacher already coupled them).

    Args:
        time_sampler: draws training times (ignored with ``distill``).
        distill: train only t = 0 (one-step distillation).
        p_uncond: probability of dropping the class label in training.
    """

    name = "reflow"

    def __init__(
        self, time_sampler: TimeSampler | None = None, distill: bool = False, p_uncond: float = 0.0
    ) -> None:
        super().__init__(None, CondOTPath(), time_sampler, p_uncond)
        self.distill = distill

    def loss(
        self,
        net: NetFn,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching loss on the pairs ``(batch["noise"], batch["image"])``."""
        if "noise" not in batch:
            raise ValueError(
                "method=reflow trains on (noise, sample) pairs: use data=pairs (python -m motfm.reflow)"
            )
        x0, x1 = batch["noise"], self.to_model_units(batch["image"])
        cond, mask, _ = self.train_conditions(net, batch, generator, train)
        if self.distill:
            t = torch.zeros(x1.shape[0], device=x1.device)
            v = net(x0, t, cond=cond, mask=mask)
            return torch.mean((v.float() - (x1 - x0).float()) ** 2), {}
        return self.flow_loss(net, x0, x1, cond, mask, generator), {}
