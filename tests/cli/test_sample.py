import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cli_helpers import TINY_2D, TINY_3D, compose_config
from motfm.checkpoint import CheckpointError
from motfm.loading import load_model
from motfm.sample import sample
from motfm.train import train


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("train2d")
    cond = "model.conditioning=[class,mask]"
    return train(compose_config("train", [*TINY_2D, cond, "trainer.max_epochs=1"], out))["last_ckpt"]


@pytest.fixture(scope="module")
def ckpt_3d(tmp_path_factory):
    out = tmp_path_factory.mktemp("train3d")
    return train(compose_config("train", [*TINY_3D, "trainer.max_epochs=1"], out))["last_ckpt"]


def run_sample(ckpt, out_dir, *overrides):
    return sample(compose_config("sample", [f"ckpt_path={ckpt}", f"out_dir={out_dir}", *overrides], out_dir))


def test_sample_round_trip_2d(ckpt_2d, tmp_path):
    info = run_sample(ckpt_2d, tmp_path, "steps=3", "sampler=midpoint", "num_samples=5", "batch_size=2")
    assert info["nfe"] == 6 and info["steps"] == 3 and info["samples_per_s"] > 0
    assert json.loads((tmp_path / "sampling.json").read_text())["nfe"] == 6
    data = np.load(tmp_path / "samples.npz")
    assert data["images"].shape == (5, 1, 32, 32) and data["images"].dtype == np.float32
    assert np.abs(data["images"]).max() <= 1
    assert data["labels"].shape == (5,) and data["masks"].shape == (5, 1, 32, 32)
    assert (tmp_path / "grid.png").stat().st_size > 0
    # the same samples come back whatever the batch size (sample i depends on (seed, i) only)
    other = tmp_path / "other"
    run_sample(ckpt_2d, other, "steps=3", "sampler=midpoint", "num_samples=5", "batch_size=5")
    assert np.allclose(np.load(other / "samples.npz")["images"], data["images"], atol=1e-5)


def test_explicit_labels_and_guidance_nfe(ckpt_2d, tmp_path):
    info = run_sample(ckpt_2d, tmp_path, "steps=2", "num_samples=3", "labels=[1,3]", "guidance_scale=2.0")
    assert info["nfe"] == 4  # 2 steps x (conditional + unconditional), batched
    assert np.load(tmp_path / "samples.npz")["labels"].tolist() == [1, 3, 1]
    with pytest.raises(ValueError, match="labels must be"):
        run_sample(ckpt_2d, tmp_path / "bad", "labels=[4]")


def test_interrupted_sampling_restarts_and_matches(ckpt_2d, tmp_path, monkeypatch):
    full = tmp_path / "full"
    run_sample(ckpt_2d, full, "steps=2", "num_samples=6", "batch_size=2")
    part = tmp_path / "part"
    import motfm.sample as sample_mod

    real = sample_mod.generate_batch
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_mod, "generate_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sample(ckpt_2d, part, "steps=2", "num_samples=6", "batch_size=2")
    assert not (part / "samples.npz").exists()
    monkeypatch.setattr(sample_mod, "generate_batch", real)
    info = run_sample(ckpt_2d, part, "steps=2", "num_samples=6", "batch_size=2")
    assert info["generated_now"] == 2  # only the missing batch
    again = run_sample(ckpt_2d, part, "steps=2", "num_samples=6", "batch_size=2")
    assert again["generated_now"] == 0 and again["nfe"] == 2  # NFE comes from the shards, not this run
    assert np.array_equal(np.load(part / "samples.npz")["images"], np.load(full / "samples.npz")["images"])
    with pytest.raises(ValueError, match="different run"):
        run_sample(ckpt_2d, part, "steps=3", "num_samples=6", "batch_size=2")


def test_sample_3d_writes_nifti_with_geometry(ckpt_3d, tmp_path):
    run_sample(ckpt_3d, tmp_path, "steps=1", "num_samples=2")
    img = nib.load(tmp_path / "volumes" / "sample_00001.nii.gz")
    assert img.shape == (16, 16, 16)
    from motfm.data.phantom import brain_affine

    assert np.allclose(img.affine, np.asarray(brain_affine(16)))
    assert (tmp_path / "grid.png").exists()


def test_checkpoint_errors(ckpt_2d, tmp_path):
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(Path(ckpt_2d).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(trunc)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a motfm training checkpoint"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="contradicts"):
        load_model(ckpt_2d, model_overrides={"channels": [16, 32]})
    model = load_model(ckpt_2d, model_overrides={"conditioning_scale": 0.5})
    assert model.net.conditioning_scale == 0.5


def test_controlnet_on_frozen_pretrained_base(ckpt_2d):
    from motfm.checkpoint import read_checkpoint
    from motfm.data.phantom import EchoPhantom
    from motfm.nn.velocity import build_velocity_net

    spec = EchoPhantom("val", size=32, num_samples=2).spec
    tiny = dict(channels=(8, 16), num_res_blocks=1, attention_levels=(False, True), head_dim=8, norm_groups=4)
    net = build_velocity_net(
        spec, conditioning=("class", "mask"), class_dim=16, base_ckpt=ckpt_2d, freeze_base=True, **tiny
    )
    state = read_checkpoint(ckpt_2d)["state_dict"]
    for k, v in net.unet.state_dict().items():
        assert torch.equal(v, state[f"ema.module.unet.{k}"])
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"controlnet"}
    # the fresh ControlNet starts from the pretrained encoder and adds nothing yet
    for (_, a), (_, b) in zip(
        net.unet.encoder.state_dict().items(), net.controlnet.encoder.state_dict().items()
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs model.base_ckpt"):
        build_velocity_net(spec, conditioning=("mask",), freeze_base=True, **tiny)
    with pytest.raises(ValueError, match="does not fit"):
        build_velocity_net(
            spec,
            conditioning=("class",),
            base_ckpt=ckpt_2d,
            class_dim=16,
            channels=(16, 32),
            num_res_blocks=1,
            attention_levels=(False, True),
            head_dim=8,
            norm_groups=4,
        )
