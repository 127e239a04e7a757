"""Mask Dice and the deterministic phantom segmenters behind the conditional-fidelity metric."""

import pytest
import torch

from motfm.data.datamodule import collate
from motfm.data.phantom import ECHO_LEVELS_DB, BrainPhantom, EchoPhantom, echo_db_to_image, echo_geometry
from motfm.metrics.fidelity import dice_per_label, mean_dice, segment_brain_phantom, segment_echo_phantom


def test_dice_closed_form_cases() -> None:
    target = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    target[0, 0, 0, :2] = 1  # 2 pixels of label 1
    target[0, 0, 3, :] = 2  # 4 pixels of label 2
    assert torch.equal(dice_per_label(target, target, 3), torch.ones(1, 2))

    disjoint = torch.zeros_like(target)
    disjoint[0, 0, 1, :2] = 1
    disjoint[0, 0, 2, :] = 2
    assert torch.equal(dice_per_label(disjoint, target, 3), torch.zeros(1, 2))

    partial = torch.zeros_like(target)
    partial[0, 0, 0, 1:4] = 1  # 3 pixels, 1 shared with the target's 2: Dice = 2 * 1 / (3 + 2)
    partial[0, 0, 3, :2] = 2  # 2 pixels, both shared with the target's 4: Dice = 2 * 2 / (2 + 4)
    expected = torch.tensor([[2 / 5, 4 / 6]])
    assert torch.allclose(dice_per_label(partial, target, 3), expected)
    assert mean_dice(partial, target, 3) == pytest.approx(float(expected.mean()))


def test_dice_of_a_label_absent_from_both_is_one_and_background_can_be_kept() -> None:
    pred = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])  # [B=2, 2, 2]
    target = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
    scores = dice_per_label(pred, target, 3, ignore_background=False)
    assert scores.shape == (2, 3)
    assert torch.allclose(scores[0], torch.tensor([2 / 3, 4 / 5, 1.0]))
    assert torch.equal(scores[1], torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        dice_per_label(pred, target[:1], 3)


def _batch(ds, n: int) -> dict:
    return collate([ds[i] for i in range(n)])


def test_echo_segmenter_recovers_the_phantom_masks() -> None:
    batch = _batch(EchoPhantom("test", size=64, num_samples=32), 32)
    seg = segment_echo_phantom(batch["image"])
    assert seg.shape == batch["mask"].shape and seg.dtype == torch.int64
    own = dice_per_label(seg, batch["mask"], 4)
    assert own.mean() >= 0.8
    assert (own.mean(0) >= 0.75).all()
    # Against another sample's mask the overlap drops clearly: Dice measures mask fidelity.
    other = mean_dice(seg, batch["mask"].roll(1, 0), 4)
    assert other < float(own.mean()) - 0.2


@pytest.mark.parametrize("size", [32, 128])
def test_echo_segmenter_works_at_other_sizes(size: int) -> None:
    batch = _batch(EchoPhantom("val", size=size, num_samples=4), 4)
    seg = segment_echo_phantom(batch["image"])
    assert seg.shape == (4, 1, size, size)
    assert mean_dice(seg, batch["mask"], 4) > 0.7


@pytest.mark.parametrize("size", [32, 64, 128])
def test_brain_segmenter_recovers_the_phantom_masks(size: int) -> None:
    # At 64^3 and 128^3 the skull is several voxels thick: a fixed erosion let it join the tumour (Dice 0.62 /
    # 0.17, some volumes 0), so every size is checked and every volume must be found.
    batch = _batch(BrainPhantom("test", size=size, num_samples=8), 8)
    seg = segment_brain_phantom(batch["image"])
    assert seg.shape == batch["mask"].shape and seg.dtype == torch.int64
    own = dice_per_label(seg, batch["mask"], 4)
    assert own.mean() >= 0.9 and (own.mean(1) > 0.5).all()
    other = mean_dice(seg, batch["mask"].roll(1, 0), 4)
    assert other < float(own.mean()) - 0.3


def test_segmenters_reject_wrong_shapes_and_find_nothing_in_blank_inputs() -> None:
    with pytest.raises(ValueError, match="square"):
        segment_echo_phantom(torch.zeros(1, 1, 32, 48))
    with pytest.raises(ValueError, match="volumes"):
        segment_brain_phantom(torch.zeros(1, 1, 16, 16))
    blank = -torch.ones(2, 1, 16, 16, 16)
    assert (segment_brain_phantom(blank) == 0).all()
    # Noise-free tissue, attenuated like the phantom's, holds no heart.
    _, _, _, loss_db = echo_geometry(32)
    tissue = torch.tensor(echo_db_to_image(ECHO_LEVELS_DB["tissue"] + loss_db), dtype=torch.float32)
    assert (segment_echo_phantom(tissue.expand(2, 1, 32, 32)) == 0).all()
