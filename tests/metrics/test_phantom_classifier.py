"""The phantom classifier that scores the labels of class-conditional samples."""

import pytest
import torch

import motfm.metrics.phantom_classifier as clf_mod
from motfm.metrics.phantom_classifier import PhantomClassifier, load_or_train, phantom_dataset

ECHO = {"_target_": "motfm.data.phantom.EchoPhantom", "_partial_": True, "size": 32, "seed": 0}
BRAIN = {
    "_target_": "motfm.data.phantom.BrainPhantom",
    "_partial_": True,
    "size": 16,
    "seed": 0,
    "num_classes": 2,
}


def _held_out(cfg, n):
    ds = phantom_dataset(cfg, "val", n)  # neither the training nor the validation split of the classifier
    items = [ds[i] for i in range(n)]
    return torch.stack([s["image"] for s in items]), torch.stack([s["label"] for s in items])


def test_echo_classifier_is_accurate_and_cached(tmp_path, monkeypatch) -> None:
    settings = {"num_train": 256, "num_val": 64, "epochs": 8}
    model = load_or_train(ECHO, tmp_path, **settings)
    assert model.num_classes == 4 and model.val_accuracy > 0.8
    images, labels = _held_out(ECHO, 64)
    accuracy = model.label_accuracy(images, labels)
    assert accuracy > 0.8  # chance: 0.25
    (cached,) = (tmp_path / "phantom_classifier").glob("EchoPhantom-*.pt")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should be loaded, not retrained")

    monkeypatch.setattr(clf_mod, "train_phantom_classifier", no_training)
    again = load_or_train(ECHO, tmp_path, **settings)
    assert again.val_accuracy == model.val_accuracy and torch.equal(
        again.predict(images), model.predict(images)
    )
    # the number of samples of the training run does not change the classifier; other settings do
    assert (
        load_or_train({**ECHO, "num_samples": {"train": 8}}, tmp_path, **settings).val_accuracy
        == model.val_accuracy
    )
    with pytest.raises(AssertionError, match="cached"):
        load_or_train(ECHO, tmp_path, **{**settings, "epochs": 1})
    assert cached.stat().st_size > 0


def test_training_is_deterministic_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    first = clf_mod.train_phantom_classifier(ECHO, num_train=16, num_val=8, epochs=1)
    second = clf_mod.train_phantom_classifier(ECHO, num_train=16, num_val=8, epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k


def test_errors() -> None:
    with pytest.raises(ValueError, match="phantom"):
        clf_mod.train_phantom_classifier({"_target_": "motfm.data.camus.Camus"})
    model = PhantomClassifier(2, 4)
    with pytest.raises(ValueError, match="as many labels"):
        model.label_accuracy(torch.zeros(3, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="spatial"):
        model(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        PhantomClassifier(3, 1)


@pytest.mark.slow
def test_brain_classifier_tells_tumour_sizes_apart(tmp_path) -> None:
    model = load_or_train(BRAIN, tmp_path, num_train=256, num_val=64, epochs=8, width=8)
    images, labels = _held_out(BRAIN, 32)
    assert model.val_accuracy > 0.8 and model.label_accuracy(images, labels) > 0.8
