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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronisation exists only with CUDA")
@pytest.mark.parametrize("conditioning", [(), ("class", "mask")])
def test_forward_and_training_step_never_synchronise_on_cuda(conditioning):
    from motfm.objectives.flow_matching import FlowMatching

    net = build_velocity_net(spec_for(2, 8), conditioning=conditioning, **TINY).cuda()
    x, t, labels, mask = (v.cuda() for v in inputs(2, size=8))
    batch = {"image": x.clamp(-1, 1), "label": labels, "mask": mask}
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = FlowMatching(p_uncond=0.1).loss(net, batch, gen)
        loss.backward()
        opt.step()
        with torch.no_grad():
            net(x, t, cond=labels if "class" in conditioning else None, mask=mask if conditioning else None)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graphs_fall_back_to_the_eager_network_on_a_cpu():
    from motfm.nn.captured import sampling_net

    net = build_velocity_net(spec_for(2, 8), **TINY)
    assert sampling_net(net, cuda_graphs=True) is net


@pytest.mark.slow
def test_compiled_sampling_equals_eager():
    from motfm.nn.captured import sampling_net
    from motfm.objectives.base import SampleNoise
    from motfm.objectives.flow_matching import FlowMatching

    torch._dynamo.reset()
    net = randomize(build_velocity_net(spec_for(2, 8), conditioning=("class", "mask"), **TINY)).eval()
    _, _, labels, mask = inputs(2, size=8)
    compiled = sampling_net(net, compile=True)
    with torch.inference_mode():
        noise = SampleNoise((1, 8, 8), [0, 1], seed=0)
        eager = FlowMatching().sample(net, noise, "heun", 3, labels, mask)
        fast = FlowMatching().sample(
            compiled, SampleNoise((1, 8, 8), [0, 1], seed=0), "heun", 3, labels, mask
        )
    assert fast.nfe == eager.nfe == 5  # heun: 2 N - 1, the last step is Euler's
    assert torch.allclose(fast.x, eager.x, atol=1e-4)
