"""The MOTFM paper's networks as configs; residual resampling, per-level heads, activation checkpointing."""

import pytest
import torch
from hydra.utils import instantiate
from test_nets import inputs, randomize, spec_for

from cli_helpers import compose_config
from motfm.data.base import DataSpec
from motfm.nn.velocity import build_velocity_net


def paper_net(name, tmp_path):
    """The network of ``model=<name>``, composed as training composes it, sized for a small phantom."""
    cfg = compose_config("train", [f"model={name}", "logger=none"], tmp_path)
    dims = cfg.model.spatial_dims
    spec = DataSpec(dims, 1, (16,) * dims, num_classes=4, num_mask_labels=4)
    return instantiate(cfg.model, _partial_=True)(spec=spec)


@pytest.mark.parametrize(
    ("name", "params_m", "conditioned"),
    # MONAI Generative's DiffusionModelUNet + ControlNet at MOTFM's configs count 102.41 M (2D) and 132.46 M
    # (3D; its attention blocks have no 1x1 projections in and out, ours add 2.77 M).
    [("motfm_camus", 102.41, True), ("motfm_msd", 135.22, False)],
)
def test_paper_networks_build_and_run(name, params_m, conditioned, tmp_path):
    net = paper_net(name, tmp_path)
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    # one attention head per level, as MOTFM's num_head_channels = channels
    heads = {m.heads for m in net.modules() if type(m).__name__ == "MultiHeadAttention"}
    assert heads == {1}
    dims = net.spatial_dims
    size = 16
    x, t, cond, mask = inputs(dims, b=1, size=size)
    with torch.no_grad():
        v = net(x, t, cond=cond if conditioned else None, mask=mask if conditioned else None)
    assert v.shape == x.shape and torch.isfinite(v).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_resblock_updown_resamples_with_residual_blocks(dims):
    net = randomize(
        build_velocity_net(
            spec_for(dims),
            spatial_dims=dims,
            channels=(8, 16, 16),
            num_res_blocks=1,
            attention_levels=(False, False, True),
            head_dim=(8, 8, 16),
            norm_groups=4,
            resblock_updown=True,
            ff_mult=0,
        )
    )
    down, up = net.unet.encoder.downsamplers[0], net.unet.upsamplers[0]
    assert (down.resample, up.resample) == ("down", "up")
    assert (
        net.unet.levels[0][0].attn.layers[0].ff is None
        and net.unet.levels[0][0].attn.layers[0].self_attn.heads == 1
    )
    x, t, _, _ = inputs(dims)
    v = net(x, t)
    assert v.shape == x.shape and v.abs().sum() > 0


def test_head_dim_per_level_is_checked():
    with pytest.raises(ValueError, match="not divisible by head_dim 12"):
        build_velocity_net(
            spec_for(2), channels=(8, 16), attention_levels=(False, True), head_dim=(8, 12), norm_groups=4
        )


@pytest.mark.parametrize("dims", [2, 3])
def test_activation_checkpointing_same_loss_and_gradients(dims):
    spec = DataSpec(dims, 1, (8,) * dims, num_classes=3, num_mask_labels=4)
    kwargs = dict(
        spatial_dims=dims,
        channels=(8, 16),
        num_res_blocks=1,
        attention_levels=(False, True),
        head_dim=8,
        norm_groups=4,
        class_dim=16,
        conditioning=("class", "mask"),
        resblock_updown=True,
        dropout=0.1,  # checkpointing must replay the same dropout masks
    )
    plain = randomize(build_velocity_net(spec, **kwargs))
    ckpt = build_velocity_net(spec, activation_checkpointing=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond, mask = inputs(dims, size=8)
    target = torch.randn_like(x)
    results = []
    for net in (plain, ckpt):
        net.train()
        torch.manual_seed(3)
        loss = ((net(x, t, cond=cond, mask=mask) - target) ** 2).mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-5, msg=name)


def test_activation_checkpointing_only_in_training(monkeypatch):
    net = build_velocity_net(
        spec_for(2),
        activation_checkpointing=True,
        **dict(channels=(8, 16), num_res_blocks=1, attention_levels=(False, True), head_dim=8, norm_groups=4),
    )
    calls = []
    import motfm.nn.unet as unet

    real = unet.checkpoint
    monkeypatch.setattr(unet, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, t, _, _ = inputs(2)
    net.eval()
    net(x, t)
    assert not calls
    net.train()
    net(x, t).sum().backward()
    assert calls
