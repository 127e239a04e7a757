"""Shared evaluation helpers: metrics from feature sets, the reference cache, the markdown report."""

import json

import numpy as np
import pytest
import torch

from motfm.data.phantom import EchoPhantom
from motfm.metrics.extractors import Slices2p5D, get_extractor
from motfm.metrics.fidelity import segment_echo_phantom
from motfm.metrics.report import (
    build_extractor,
    config_hash,
    dice_metrics,
    distribution_metrics,
    has_logits,
    markdown_table,
    phantom_segmenter,
    reference_features,
    write_report,
)

DATASET = {"_target_": "motfm.data.phantom.EchoPhantom", "size": 32, "seed": 0}


def test_distribution_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(64, 8, generator=g)
    same = distribution_metrics(real, real, kid_subsets=5)
    shifted = distribution_metrics(real, torch.randn(64, 8, generator=g) + 1.0, kid_subsets=5, rbf_mmd=True)
    assert same["fid"] == pytest.approx(0.0, abs=1e-9) and "mmd_rbf" not in same
    assert shifted["fid"] > 5 and shifted["kid"] > 10 * abs(same["kid"]) and shifted["mmd_rbf"] > 0
    assert set(shifted) == {"fid", "kid", "kid_std", "mmd_rbf"}


def test_build_extractor_wraps_2d_networks_for_volumes() -> None:
    flat = build_extractor("random_conv", 2)
    assert flat.spatial_dims == 2 and has_logits(flat)
    volume = build_extractor("random_conv", 3, slices={"num_slices": 3})
    assert isinstance(volume, Slices2p5D) and volume.num_slices == 3 and not has_logits(volume)
    assert volume(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 64)
    assert build_extractor("random_conv", 3, {"spatial_dims": 3}).name == "random_conv3d"
    with pytest.raises(ValueError, match="3D"):
        build_extractor("random_conv", 2, {"spatial_dims": 3})


def test_reference_features_cache(tmp_path) -> None:
    extractor = get_extractor("random_conv")
    images = torch.rand(6, 1, 16, 16) * 2 - 1
    calls = []

    def load():
        calls.append(1)
        return images

    feats, (mu, sigma), cached = reference_features(extractor, load, tmp_path, DATASET, "test", 6)
    assert not cached and len(calls) == 1 and feats.shape == (6, 64)
    assert np.allclose(mu, feats.double().mean(0).numpy())
    again, (mu2, _), cached = reference_features(extractor, load, tmp_path, DATASET, "test", 6)
    assert cached and len(calls) == 1 and torch.equal(again, feats) and np.array_equal(mu, mu2)
    files = sorted(p.name for p in (tmp_path / "ref_stats").iterdir())
    assert len(files) == 2 and files[0].startswith("EchoPhantom-test-random_conv2d-")
    # another split, dataset or extractor is another entry; a stale one is recomputed
    reference_features(extractor, load, tmp_path, {**DATASET, "size": 64}, "test", 6)
    reference_features(get_extractor("random_conv", seed=1), load, tmp_path, DATASET, "test", 6)
    assert len(calls) == 3
    with pytest.warns(UserWarning, match="stale"):
        _, _, cached = reference_features(extractor, lambda: images[:5], tmp_path, DATASET, "test", 5)
    assert not cached
    _, _, cached = reference_features(extractor, load, None, DATASET, "test", 6)
    assert not cached and len(calls) == 4


def test_dice_metrics_on_real_phantoms() -> None:
    from motfm.data.phantom import ECHO_MASK_LABELS

    ds = EchoPhantom("val", size=32, num_samples=4)
    images = torch.stack([ds[i]["image"] for i in range(4)])
    masks = torch.stack([ds[i]["mask"] for i in range(4)])
    assert phantom_segmenter("motfm.data.phantom.EchoPhantom") is segment_echo_phantom
    assert phantom_segmenter("motfm.data.phantom.echo.EchoPhantom") is segment_echo_phantom  # defining module
    assert phantom_segmenter(EchoPhantom) is segment_echo_phantom  # the class (the training callback's case)
    assert phantom_segmenter("no.such.Dataset") is None
    assert phantom_segmenter("motfm.data.camus.Camus") is None and phantom_segmenter(None) is None
    out = dice_metrics(segment_echo_phantom, images, masks, ECHO_MASK_LABELS, batch_size=3)
    assert set(out) == {"dice", "dice/lv_cavity", "dice/myocardium", "dice/left_atrium"}
    assert out["dice"] > 0.6 and out["dice"] == pytest.approx(np.mean([out[k] for k in out if "/" in k]))


def test_markdown_table_and_report(tmp_path) -> None:
    rows = [
        {"solver": "euler", "steps": 1, "fid": 123.456789, "kid": 0.000123456},
        {"solver": "real", "fid": None},
    ]
    table = markdown_table(rows, ["solver", "steps", "fid", "kid"])
    assert table.splitlines() == [
        "| solver | steps | fid | kid |",
        "|---|---|---|---|",
        "| euler | 1 | 123.5 | 0.0001235 |",
        "| real | - | - | - |",
    ]
    write_report(tmp_path / "out", {"results": rows}, table)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["results"][0]["steps"] == 1
    assert (tmp_path / "out" / "metrics.md").read_text() == table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "metrics.md"]
    assert config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1}) != config_hash({"a": 2})
