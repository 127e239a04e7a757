import pytest
import torch

from motfm.data.base import DataSpec
from motfm.nn.controlnet import one_hot_mask
from motfm.nn.embeddings import ClassEmbedding, sinusoidal_embedding
from motfm.nn.velocity import build_velocity_net

TINY = dict(
    channels=(8, 16),
    num_res_blocks=1,
    attention_levels=(False, True),
    head_dim=8,
    norm_groups=4,
    class_dim=16,
)


def spec_for(dims, size=16):
    return DataSpec(dims, 1, (size,) * dims, num_classes=3, num_mask_labels=4)


def randomize(net):
    """Give zero-initialised layers random weights, so outputs depend on every input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def inputs(dims, b=2, size=16):
    x = torch.randn(b, 1, *(size,) * dims)
    mask = torch.randint(0, 4, (b, 1, *(size,) * dims))
    return x, torch.rand(b), torch.randint(0, 3, (b,)), mask


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("conditioning", [(), ("class",), ("mask",), ("class", "mask")])
def test_shapes_and_zero_output_at_init(dims, conditioning):
    net = build_velocity_net(spec_for(dims), spatial_dims=dims, conditioning=conditioning, **TINY)
    x, t, cond, mask = inputs(dims)
    v = net(
        x, t, cond=cond if "class" in conditioning else None, mask=mask if "mask" in conditioning else None
    )
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0  # zero-initialised output convolution


@pytest.mark.parametrize("dims", [2, 3])
def test_controlnet_changes_nothing_at_init(dims):
    torch.manual_seed(0)
    net = randomize(build_velocity_net(spec_for(dims), spatial_dims=dims, conditioning=("class",), **TINY))
    torch.manual_seed(0)
    with_cn = build_velocity_net(spec_for(dims), spatial_dims=dims, conditioning=("class", "mask"), **TINY)
    with_cn.unet.load_state_dict(net.unet.state_dict())
    with_cn.class_embedding.load_state_dict(net.class_embedding.state_dict())
    with_cn.controlnet = type(with_cn.controlnet).from_unet(with_cn.unet, 4)
    x, t, cond, mask = inputs(dims)
    base = net(x, t, cond=cond)
    assert base.abs().max() > 0
    assert torch.allclose(with_cn(x, t, cond=cond, mask=mask), base, atol=1e-6)
    # once its zero convolutions are trained (here: randomised), the mask changes the output
    randomize(with_cn.controlnet)
    assert not torch.allclose(with_cn(x, t, cond=cond, mask=mask), base, atol=1e-4)


def test_controlnet_encoder_is_a_copy_of_unet_encoder():
    net = build_velocity_net(spec_for(2), conditioning=("mask",), **TINY)
    for (k1, a), (k2, b) in zip(
        net.unet.encoder.state_dict().items(), net.controlnet.encoder.state_dict().items()
    ):
        assert k1 == k2 and torch.equal(a, b)


def test_outputs_depend_on_time_condition_and_mask():
    net = randomize(build_velocity_net(spec_for(2), conditioning=("class", "mask"), **TINY))
    x, t, cond, mask = inputs(2)
    v = net(x, t, cond=cond, mask=mask)
    assert not torch.allclose(v, net(x, t + 0.01, cond=cond, mask=mask))
    assert not torch.allclose(v, net(x, t, cond=(cond + 1) % 3, mask=mask))
    assert not torch.allclose(v, net(x, t, cond=cond, mask=(mask + 1) % 4))
    # the null token (cond=None) is a valid, different condition
    assert not torch.allclose(v, net(x, t, cond=None, mask=mask))


def test_time_is_continuous_not_floored():
    emb = sinusoidal_embedding(torch.tensor([0.5, 0.5004]), 32)
    assert not torch.allclose(emb[0], emb[1])
    assert torch.allclose(sinusoidal_embedding(torch.zeros(1), 8)[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_scalar_time_broadcast():
    net = randomize(build_velocity_net(spec_for(2), **TINY))
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(net(x, 0.3), net(x, torch.full((3,), 0.3)))


def test_batch_independence():
    net = randomize(build_velocity_net(spec_for(2), conditioning=("class", "mask"), **TINY)).eval()
    x, t, cond, mask = inputs(2, b=4)
    full = net(x, t, cond=cond, mask=mask)
    half = net(x[:2], t[:2], cond=cond[:2], mask=mask[:2])
    assert torch.allclose(full[:2], half, atol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match="not divisible by 2"):
        build_velocity_net(DataSpec(2, 1, (15, 16)), **TINY)
    with pytest.raises(ValueError, match="norm_groups"):
        build_velocity_net(spec_for(2), **{**TINY, "channels": (6, 16)})
    with pytest.raises(ValueError, match="model is 3D but the data are 2D"):
        build_velocity_net(spec_for(2), spatial_dims=3, **TINY)
    with pytest.raises(ValueError, match="provides no masks"):
        build_velocity_net(DataSpec(2, 1, (16, 16), num_classes=2), conditioning=("mask",), **TINY)
    with pytest.raises(ValueError, match="unknown conditioning"):
        build_velocity_net(spec_for(2), conditioning=("text",), **TINY)
    net = build_velocity_net(spec_for(2), conditioning=("mask",), **TINY)
    x, t, _, mask = inputs(2)
    with pytest.raises(ValueError, match=r"mask labels span \[0, 7\]"):  # values: checked at the boundary
        net.check_conditions(None, mask.clamp(max=3).index_fill_(0, torch.tensor([0]), 7))
    with pytest.raises(ValueError, match="mask spatial size"):
        net(x, t, mask=torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="mask-conditional"):
        net(x, t)
    with pytest.raises(ValueError, match="spatial size"):
        net(torch.randn(2, 1, 15, 16), t, mask=torch.zeros(2, 1, 15, 16, dtype=torch.long))


def test_one_hot_mask_and_class_embedding_checks():
    oh = one_hot_mask(torch.tensor([[[[0, 3], [1, 2]]]]), 4, 2)
    assert oh.shape == (1, 4, 2, 2) and torch.equal(oh.sum(1), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="integer label map"):
        one_hot_mask(torch.zeros(1, 1, 2, 2), 4, 2)
    emb = ClassEmbedding(3, 2, 8)
    assert emb(torch.tensor([0, 3])).shape == (2, 2, 8)
    with pytest.raises(ValueError, match="class labels span"):
        emb.check_labels(torch.tensor([4]))


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_reaches_the_residual_stream_of_one_channel_images(dims):
    # a [B, 1, ...] image is both layouts at once: the channels-last weights of conv_in must set the stream's
    spec = spec_for(dims, 8)
    nets = {
        fmt: randomize(
            build_velocity_net(spec, spatial_dims=dims, conditioning=("mask",), channels_last=fmt, **TINY)
        )
        for fmt in (True, False)
    }
    layouts = []
    block = nets[True].unet.encoder.levels[0][0]
    block.register_forward_pre_hook(lambda mod, args: layouts.append(args[0].is_contiguous()))
    for b in (1, 2):  # batch 1: the 3D convolutions go to oneDNN directly (motfm.nn.conv3d)
        x, t, _, mask = inputs(dims, b=b, size=8)
        with torch.no_grad():
            out = nets[True](x, t, mask=mask)
            assert torch.allclose(out, nets[False](x, t, mask=mask), atol=1e-5)
    assert layouts == [False, False]  # channels-last, not contiguous


def test_the_xformers_branch_keeps_the_layout_of_attention():
    """The CUDA-only xformers call, run on a CPU with a stand-in of its documented contract
    ([B, N, heads, d] in and out): the layout changes around it must give SDPA's result."""
    import math
    import types

    import torch.nn.functional as F

    from motfm.nn.attention import check_backend, xformers_attention

    def memory_efficient_attention(q, k, v, p=0.0):  # [B, N, H, d]
        w = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
        return torch.einsum("bhnm,bmhd->bnhd", w.softmax(-1), v)

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    assert torch.allclose(
        xformers_attention(ops, q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-5
    )
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the optional package xformers") as err:
            check_backend("xformers")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_groupnorm_of_small_bf16_channels_last_maps_matches_the_fused_kernel(size):
    """The fp32 route taken for small bf16 channels-last maps on a CPU (faster there) gives the fused kernel's
    result to bf16 rounding, in the input's dtype and layout; larger maps keep the fused kernel."""
    from motfm.nn.blocks import GroupNorm

    gn = GroupNorm(4, 16)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    x = (
        (torch.randn(2, 16, size, size) * 3 + 1)
        .to(torch.bfloat16)
        .contiguous(memory_format=torch.channels_last)
    )
    out = gn(x)
    expected = torch.nn.functional.group_norm(x.float(), 4, gn.weight, gn.bias, gn.eps)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.float(), expected, atol=0.05, rtol=0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gn(x).dtype == torch.bfloat16
