"""FlowMatching's data_range: an imported model trains and samples in its own intensity units."""

from __future__ import annotations

import torch

from motfm.objectives.flow_matching import FlowMatching


class ToyNet:
    """An unconditional velocity field, nonlinear in x (so the units it sees matter)."""

    num_classes = num_mask_labels = 0

    def __call__(self, x, t, cond=None, mask=None):
        return torch.tanh(x) * (1 + t.view(-1, *([1] * (x.ndim - 1))))


toy_net = ToyNet()


def test_units_round_trip_and_the_default_is_the_identity():
    x = torch.linspace(-1, 1, 9)
    fm = FlowMatching(data_range=(0.0, 1.0))
    assert torch.allclose(fm.to_model_units(x), (x + 1) / 2)
    assert torch.allclose(fm.to_data_units(fm.to_model_units(x)), x)
    default = FlowMatching()
    assert default.to_model_units(x) is x and default.to_data_units(x) is x


def test_the_loss_sees_images_in_the_model_units():
    images = torch.rand(4, 1, 8, 8) * 2 - 1  # the suite's [-1, 1]
    imported = FlowMatching(data_range=(0.0, 1.0))
    loss, _ = imported.loss(toy_net, {"image": images}, torch.Generator().manual_seed(0))
    # the same draws (noise, then times) on the images the original trained on, min-max scaled to [0, 1]
    expected, _ = FlowMatching().loss(toy_net, {"image": (images + 1) / 2}, torch.Generator().manual_seed(0))
    assert torch.allclose(loss, expected)
    plain, _ = FlowMatching().loss(toy_net, {"image": images}, torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, expected)
