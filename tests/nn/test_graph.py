"""The forward pass has no host-device synchronisation: it compiles as one graph (no graph break)."""

import pytest
import torch

from motfm.nn.velocity import build_velocity_net
from nn.test_nets import TINY, inputs, randomize, spec_for


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("conditioning", [(), ("class",), ("mask",), ("class", "mask")])
def test_forward_compiles_without_graph_break(dims, conditioning):
    torch._dynamo.reset()
    net = randomize(
        build_velocity_net(spec_for(dims, 8), spatial_dims=dims, conditioning=conditioning, **TINY)
    )
    x, t, labels, mask = inputs(dims, size=8)
    kwargs = {}
    if "class" in conditioning:
        kwargs["cond"] = labels
    if "mask" in conditioning:
        kwargs["mask"] = mask
    compiled = torch.compile(net, fullgraph=True, backend="eager")  # a graph break raises here
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, **kwargs), net(x, t, **kwargs), atol=1e-6)


def test_interval_input_compiles_and_is_exact_at_r_equals_t():
    torch._dynamo.reset()
    spec = spec_for(2, 8)
    net = randomize(build_velocity_net(spec, conditioning=("class", "mask"), interval_embedding=True, **TINY))
    x, t, labels, mask = inputs(2, size=8)
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    with torch.no_grad():
        plain = net(x, t, cond=labels, mask=mask)
        assert torch.allclose(net(x, t, r=t, cond=labels, mask=mask), plain, atol=1e-7)  # r = t: velocity
        assert not torch.allclose(net(x, t, r=t + 0.5, cond=labels, mask=mask), plain)
        r = t + 0.5
        assert torch.allclose(
            compiled(x, t, r=r, cond=labels, mask=mask), net(x, t, r=r, cond=labels, mask=mask)
        )
