"""``motfm.export_model`` + ``motfm.load_pretrained``: safetensors + JSON, no pickle, the same samples."""

import json
import pickle

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import motfm
from cli_helpers import CONF_DIR
from motfm.checkpoint import CheckpointError
from motfm.conditions import Conditions
from motfm.data.phantom import EchoPhantom
from motfm.export_model import export_model
from motfm.loading import load_model
from motfm.sample import generate_batch
from tiny_ckpt import tiny_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory)
    metrics = {"num_real": 4, "ref_split": "test", "extractor": "random_conv", "results": [
        {"solver": "euler", "steps": 2, "nfe": 2, "fid": 12.5, "kid": 0.01}]}  # fmt: skip
    (ckpt.parent.parent / "metrics.json").write_text(json.dumps(metrics))  # found in the run folder
    out = tmp_path_factory.mktemp("shared") / "echo-tiny"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        export_model(compose("export_model", overrides=[f"ckpt_path={ckpt}", f"out={out}"]))
    return ckpt, out


def conditions(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = EchoPhantom("val", size=32, num_samples=n)
    return torch.stack([ds[i]["label"] for i in range(n)]), torch.stack([ds[i]["mask"] for i in range(n)])


def test_files_config_and_model_card(exported):
    _, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["_target_"] == "motfm.nn.velocity.build_velocity_net"
    assert config["data_spec"]["image_size"] == [32, 32] and config["weights"]["source"] == "ema"
    assert config["method"]["_target_"].startswith("motfm.objectives.")
    card = (out / "README.md").read_text()
    assert "## Metrics" in card and "| euler | 2 | 2 | 12.5 | 0.01 |" in card
    assert "motfm.load_pretrained" in card and "labels=[0]" in card and "masks=masks" in card


def test_load_pretrained_reproduces_the_checkpoint_bitwise_without_pickle(exported, monkeypatch):
    ckpt, out = exported
    labels, masks = conditions(3)
    reference = generate_batch(load_model(ckpt), list(range(5)), 7, "euler", 3, Conditions(labels, masks))[0]

    def no_pickle(*args, **kwargs):
        raise AssertionError("unpickling on the load_pretrained path")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    gen = motfm.load_pretrained(out)
    x = gen.sample(5, steps=3, labels=labels, masks=masks, seed=7)
    assert x.shape == (5, 1, 32, 32) and torch.equal(x, reference)
    # other batch sizes give the same samples up to float rounding (the batch can change the last bits)
    chunked = gen.sample(5, steps=3, labels=labels, masks=masks[:, 0], seed=7, batch_size=2)
    torch.testing.assert_close(chunked, x, atol=1e-5, rtol=0)
    midpoint = gen.sample(2, steps=1, labels=labels, masks=masks, seed=7, sampler="midpoint")
    assert not torch.equal(midpoint, x[:2])
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        gen.sample(2, masks=masks)
    with pytest.raises(ValueError, match="does not apply"):
        gen.sample(2, labels=labels, masks=masks, sampler="ddim")


def test_broken_exports_fail_in_one_line(exported, tmp_path):
    _, out = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(CheckpointError, match="config.json: not found"):
        motfm.load_pretrained(broken)
    config = json.loads((out / "config.json").read_text())
    config["model"]["_target_"] = "os.system"
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a motfm object"):
        motfm.load_pretrained(broken)
    config["model"]["_target_"] = "motfm.nn.velocity.build_velocity_net"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        motfm.load_pretrained(broken)
