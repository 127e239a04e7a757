"""Conv3d's oneDNN route for single-volume CPU batches: the same convolution, taken only where it applies."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import motfm.nn.conv3d as conv3d
from motfm.nn.conv3d import Conv3d, routes_to_onednn
from motfm.nn.forward_ad import forward_ad_mode
from motfm.nn.velocity import build_velocity_net
from nn.test_nets import TINY, inputs, randomize, spec_for

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def test_routed_convolution_equals_the_stock_one_with_its_gradients():
    torch.manual_seed(0)
    conv = Conv3d(4, 6, 3, padding=1)
    stock = nn.Conv3d(4, 6, 3, padding=1)
    stock.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 8, 9, 10, requires_grad=True)
    assert routes_to_onednn(x, conv)
    y, y_stock = conv(x), stock(x)
    assert torch.allclose(y, y_stock, atol=1e-5)
    grad = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, conv.weight, conv.bias), grad)
    theirs = torch.autograd.grad(y_stock, (x, stock.weight, stock.bias), grad)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_route_is_taken_only_for_single_float_volumes_with_a_spatial_kernel():
    conv = Conv3d(4, 4, 3, padding=1)
    assert routes_to_onednn(torch.randn(1, 4, 8, 8, 8), conv)
    assert not routes_to_onednn(torch.randn(2, 4, 8, 8, 8), conv)  # PyTorch's own choice is oneDNN
    small = torch.randn(1, 4, 4, 4, 4)
    assert not routes_to_onednn(small, conv)  # contiguous: the GEMM path is as fast there
    assert routes_to_onednn(small.contiguous(memory_format=torch.channels_last_3d), conv)
    flat = torch.randn(1, 4, 2, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    assert not routes_to_onednn(flat, conv)  # 32 voxels
    assert not routes_to_onednn(torch.randn(1, 4, 8, 8, 8, dtype=torch.bfloat16), conv)
    assert not routes_to_onednn(torch.randn(1, 4, 8, 8, 8), Conv3d(4, 4, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not routes_to_onednn(torch.randn(1, 4, 8, 8, 8), conv)
    with forward_ad_mode():  # oneDNN's kernel has no forward-mode derivative
        assert not routes_to_onednn(torch.randn(1, 4, 8, 8, 8), conv)


def test_velocity_net_with_the_route_equals_it_without(monkeypatch):
    spec = spec_for(3, 8)
    net = randomize(build_velocity_net(spec, spatial_dims=3, conditioning=("class", "mask"), **TINY))
    x, t, labels, mask = inputs(3, b=1, size=8)
    with torch.no_grad():
        routed = net(x, t, cond=labels, mask=mask)
        monkeypatch.setattr(conv3d, "ONEDNN_MIN_VOXELS", 10**9)
        monkeypatch.setattr(conv3d, "ONEDNN_MIN_VOXELS_CHANNELS_LAST", 10**9)
        stock = net(x, t, cond=labels, mask=mask)
    assert torch.allclose(routed, stock, atol=1e-5)
    assert not torch.equal(routed, torch.zeros_like(routed))


def test_routed_velocity_net_compiles_without_graph_break_and_has_a_jvp():
    torch._dynamo.reset()
    net = randomize(build_velocity_net(spec_for(3, 8), spatial_dims=3, conditioning=("mask",), **TINY))
    x, t, _, mask = inputs(3, b=1, size=8)
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, mask=mask), net(x, t, mask=mask), atol=1e-6)
    with forward_ad_mode():
        out, tangent = torch.func.jvp(lambda a: net(a, t, mask=mask), (x,), (torch.ones_like(x),))
    assert out.shape == tangent.shape == x.shape


def test_routing_benchmark_measures_both_kernels_on_a_shape():
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_conv3d_routing.py"
    spec = importlib.util.spec_from_file_location("bench_conv3d_routing", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.stock_is_slow(16, 64) and not script.stock_is_slow(32, 32)  # 1*64*16*16 <= 20480 < 32768
    row = script.measure(8, 16, 3, "channels_last_3d", repeats=1)
    assert row["motfm_uses"] == "onednn" and row["stock_fwd_ms"] > 0 and row["onednn_train_ms"] > 0
    assert row["fwd_speedup"] == pytest.approx(row["stock_fwd_ms"] / row["onednn_fwd_ms"])
