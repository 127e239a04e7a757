"""The downstream training loops learn (from chance to clearly above on phantom images), are seeded, and
augment images and label maps together."""

import pytest
import torch

from motfm.data.phantom import ECHO_MASK_LABELS, EchoPhantom
from motfm.downstream.augment import Augment, augment
from motfm.downstream.items import real_items
from motfm.downstream.nets import build_classifier, build_segmenter
from motfm.downstream.scoring import accuracy, segmentation_scores
from motfm.downstream.training import (
    TrainSettings,
    batch_indices,
    lr_factor,
    train_classifier,
    train_segmenter,
)

try:
    import monai  # noqa: F401

    HAS_MONAI = True
except ImportError:
    HAS_MONAI = False
needs_monai = pytest.mark.skipif(
    not HAS_MONAI, reason="the downstream segmenter needs MONAI: pip install -e '.[downstream]'"
)
FEATURES = [8, 8, 16, 32, 64, 8]


@pytest.fixture(scope="module")
def echo32():
    """32 training and 32 test items of the echo phantom at 32x32."""
    train = real_items(EchoPhantom("train", size=32, num_samples=32), range(32))
    test = real_items(EchoPhantom("test", size=32, num_samples=32), range(32))
    return train, test


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is faster, and results do not depend on the count
    yield
    torch.set_num_threads(threads)


@needs_monai
def test_segmenter_training_goes_from_chance_to_clearly_above(echo32):
    train, test = echo32
    before = segmentation_scores(build_segmenter(2, 4, FEATURES, seed=0), test, ECHO_MASK_LABELS)
    net, record = train_segmenter(train, 4, FEATURES, TrainSettings(steps=30, batch_size=4, lr=3e-3), seed=0)
    after = segmentation_scores(net, test, ECHO_MASK_LABELS)
    assert before["mean"] < 0.2
    assert after["mean"] > 0.55 and after["mean"] > before["mean"] + 0.4, (before, after)
    assert all(after[name] > 0.4 for name in ECHO_MASK_LABELS[1:]), after
    assert record["loss_last"] < record["loss_first"]


def test_classifier_training_goes_from_chance_to_clearly_above(echo32):
    train, test = echo32
    before = accuracy(build_classifier(2, 4, 8, None, seed=0), test)
    net, record = train_classifier(train, 4, 8, None, TrainSettings(steps=40, batch_size=8, lr=3e-3), seed=0)
    after = accuracy(net, test)
    assert before <= 0.4
    assert after >= 0.6, (before, after)
    assert record["loss_last"] < 0.5 * record["loss_first"]


def _weights(net):
    return torch.cat([p.detach().flatten() for p in net.state_dict().values() if p.is_floating_point()])


@pytest.mark.parametrize("task", ["classifier", pytest.param("segmenter", marks=needs_monai)])
def test_training_is_a_function_of_the_seed(echo32, task):
    train, _ = echo32
    settings = TrainSettings(steps=3, batch_size=4, lr=1e-3, augment=Augment(shift=2, gain=0.1, bias=0.05))
    torch.manual_seed(123)  # the global state must not matter

    def run(seed):
        if task == "classifier":
            return _weights(train_classifier(train, 4, 4, None, settings, seed)[0])
        return _weights(train_segmenter(train, 4, [4, 4, 8, 8, 8, 4], settings, seed)[0])

    first = run(0)
    torch.manual_seed(456)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))


def test_batch_indices_visit_every_item_once_per_pass():
    gen = torch.Generator().manual_seed(0)
    batches = list(batch_indices(10, steps=5, batch_size=4, generator=gen))
    assert [b.numel() for b in batches] == [4] * 5
    flat = torch.cat(batches)
    assert sorted(flat[:10].tolist()) == list(range(10))
    assert sorted(flat[10:].tolist()) == list(range(10))
    assert not torch.equal(flat[:10], flat[10:])  # reshuffled between passes


def test_augment_moves_image_and_mask_together():
    masks = torch.randint(0, 4, (6, 1, 16, 16))
    images = masks.float() * 0.5 - 1.0  # background (label 0) is black, like the padding
    gen = torch.Generator().manual_seed(0)
    out_images, out_masks = augment(images, masks, Augment(shift=3), gen)
    assert out_images.shape == images.shape and out_masks.dtype == torch.int64
    assert torch.equal(out_images, out_masks.float() * 0.5 - 1.0)
    assert not torch.equal(out_masks, masks)
    again = augment(images, masks, Augment(shift=3), torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_images) and torch.equal(again[1], out_masks)


def test_augment_intensity_keeps_black_and_range_and_identity_when_off():
    images = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(2, 1, 1, 1)
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    same = augment(images, masks, Augment(), torch.Generator().manual_seed(0))
    assert torch.equal(same[0], images) and torch.equal(same[1], masks)
    out, _ = augment(images, masks, Augment(gain=0.5), torch.Generator().manual_seed(1))
    assert out.min() >= -1 and out.max() <= 1
    assert out[:, :, 0, 0].eq(-1).all()  # black stays black without an offset
    assert not torch.equal(out, images)
    with pytest.raises(ValueError, match="augmentation"):
        Augment(gain=1.5)


@pytest.mark.parametrize(("steps", "warmup"), [(3, 0.5), (10, 0.1), (200, 0.1)])
def test_lr_warms_up_linearly_then_decays_to_zero(steps, warmup):
    f = [lr_factor(s, steps, warmup) for s in range(steps + 1)]
    ramp = max(1, round(warmup * steps))
    assert f[:ramp] == pytest.approx([(s + 1) / ramp for s in range(ramp)])
    assert max(f) == pytest.approx(1.0) and f[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[ramp - 1 :], f[ramp:]))
