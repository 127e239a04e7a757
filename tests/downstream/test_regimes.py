"""Data regimes use the items they claim: real, synthetic (generated for real masks and classes, never the
real images), both, and the real images of the synthetic items' conditions."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from motfm.data.phantom import EchoPhantom
from motfm.downstream.generators import untrained_generator
from motfm.downstream.items import Items, real_items
from motfm.downstream.regimes import build_regime, draw_indices
from motfm.downstream.spec import load_experiment
from motfm.downstream.synthetic import check_generator, synthetic_items

ECHO2D = Path(__file__).resolve().parents[2] / "experiments" / "downstream" / "echo2d.yaml"


def test_draw_indices_disjoint_conditions_fixed_real_subset_seeded():
    real0, cond0 = draw_indices(100, 8, 40, seed=0)
    real1, cond1 = draw_indices(100, 8, 40, seed=1)
    assert len(real0) == len(set(real0)) == 8 and len(cond0) == len(set(cond0)) == 40
    assert not set(real0) & set(cond0) and not set(real1) & set(cond1)
    assert cond0 == cond1  # one synthetic set per generator, shared by the seeds
    assert real0 != real1
    assert (real0, cond0) == draw_indices(100, 8, 40, seed=0)
    assert all(0 <= i < 100 for i in real0 + cond0)
    with pytest.raises(ValueError, match="must fit"):
        draw_indices(40, 8, 40, seed=0)


@pytest.fixture(scope="module")
def generated():
    """An untrained mask + class-conditioned generator of the echo2d dry run, and items of its data."""
    exp = load_experiment(ECHO2D, dry_run=True)
    model = untrained_generator(exp, "fm")
    ds = EchoPhantom("train", size=32, num_samples=16)
    real_idx, cond_idx = draw_indices(len(ds), 3, 5, seed=0)
    real, conditions = real_items(ds, real_idx), real_items(ds, cond_idx)
    synthetic, info = synthetic_items(model, conditions, "euler", 2, seed=0, batch_size=4)
    return model, real, conditions, synthetic, info


def test_synthetic_items_are_generated_for_the_conditions_not_copied(generated):
    _, _, conditions, synthetic, info = generated
    assert info["nfe"] == 2 and info["sampler"] == "euler"
    assert synthetic.num_synthetic == len(synthetic) == len(conditions) == 5
    assert torch.equal(synthetic.masks, conditions.masks) and torch.equal(synthetic.labels, conditions.labels)
    assert torch.equal(synthetic.source_index, conditions.source_index)
    assert synthetic.images.shape == conditions.images.shape
    assert synthetic.images.abs().max() <= 1
    diff = (synthetic.images - conditions.images).flatten(1).abs().mean(1)
    assert (diff > 0.05).all(), diff  # no synthetic image is its real counterpart


def test_regimes_count_and_origin(generated):
    _, real, conditions, synthetic, _ = generated
    only_real = build_regime("real", real, conditions, None)
    assert (only_real.num_real, only_real.num_synthetic) == (3, 0)
    assert torch.equal(only_real.images, real.images)
    matched = build_regime("real_matched", real, conditions, None)
    assert (matched.num_real, matched.num_synthetic) == (5, 0)
    assert torch.equal(matched.masks, synthetic.masks)  # same masks as the synthetic items, real pixels
    only_synthetic = build_regime("synthetic", real, conditions, synthetic)
    assert (only_synthetic.num_real, only_synthetic.num_synthetic) == (0, 5)
    assert torch.equal(only_synthetic.images, synthetic.images)
    both = build_regime("both", real, conditions, synthetic)
    assert (both.num_real, both.num_synthetic, len(both)) == (3, 5, 8)
    assert torch.equal(both.images[~both.synthetic], real.images)
    assert torch.equal(both.images[both.synthetic], synthetic.images)
    assert not set(both.source_index[~both.synthetic].tolist()) & set(conditions.source_index.tolist())


def test_regime_errors(generated):
    _, real, conditions, synthetic, _ = generated
    with pytest.raises(ValueError, match="unknown regime"):
        build_regime("mixed", real, conditions, synthetic)
    with pytest.raises(ValueError, match="needs synthetic"):
        build_regime("both", real, conditions, None)
    other = Items.cat([conditions.subset(torch.arange(1, 5)), conditions.subset(torch.tensor([0]))])
    with pytest.raises(ValueError, match="not generated for these"):
        build_regime("synthetic", real, other, synthetic)
    with pytest.raises(ValueError, match="count"):
        Items(real.images, real.masks[:2], real.labels, real.synthetic, real.source_index)


def test_generator_must_be_mask_and_class_conditioned(generated):
    check_generator(generated[0], "fm")
    class_only = SimpleNamespace(net=SimpleNamespace(num_classes=4, num_mask_labels=0), path=Path("c.ckpt"))
    with pytest.raises(ValueError, match=r"c.ckpt: generator 'fm' must be mask \+ class conditioned"):
        check_generator(class_only, "fm")
