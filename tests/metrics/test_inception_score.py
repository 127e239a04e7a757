"""Inception Score from class probabilities."""

import pytest
import torch

from motfm.metrics.inception_score import inception_score


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_confident_uniform_predictions_score_k(num_classes: int) -> None:
    labels = torch.arange(num_classes * 10) % num_classes  # every split holds each class equally often
    probs = torch.nn.functional.one_hot(labels, num_classes).float()
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(num_classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_constant_predictions_score_one() -> None:
    probs = torch.softmax(torch.randn(1, 7), -1).expand(40, 7)
    mean, std = inception_score(probs, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_matches_direct_formula_single_split() -> None:
    probs = torch.softmax(torch.randn(25, 6, dtype=torch.float64), -1)
    marginal = probs.mean(0)
    expected = torch.exp((probs * (probs.log() - marginal.log())).sum(1).mean())
    mean, _ = inception_score(probs, splits=1)
    assert 1.0 < mean < 6.0 and mean == pytest.approx(float(expected), rel=1e-12)


def test_rejects_logits_and_bad_splits() -> None:
    with pytest.raises(ValueError, match="softmax"):
        inception_score(torch.randn(10, 3))
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.full((3, 2), 0.5), splits=4)
