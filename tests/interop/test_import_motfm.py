"""Imported MOTFM models against the original stack (MONAI Generative + flow_matching), at tiny sizes.

Each configuration of the original's ``configs/*.yaml`` is built with perturbed random weights, saved as its
Lightning trainer saves it, imported with ``motfm.import_motfm`` and compared: the network's velocity, and
10-step samples against ``flow_matching``'s ``ODESolver`` from the same noise. monai-generative and
flow-matching are dev dependencies (``make install``), so these tests do not skip.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from flow_matching.solver import ODESolver

from cli_helpers import compose_config, run_cli
from motfm.checkpoint import CheckpointError
from motfm.import_motfm import import_motfm
from motfm.loading import load_model
from motfm.objectives.base import SampleNoise
from motfm.pretrained import load_pretrained
from motfm.sample import sample
from motfm_original import (
    CONFIGS,
    IMAGE_SIZE,
    NUM_MASK_LABELS,
    build_original,
    original_config,
    write_original,
)


def run_import(tmp_path, ckpt, *overrides):
    """``python -m motfm.import_motfm`` in process; returns the output folder."""
    args = [f"ckpt_path={ckpt}", f"out={tmp_path / 'imported'}", *overrides]
    return import_motfm(compose_config("import_motfm", args, tmp_path))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """``imported(name) -> (original network, import folder)``, built once per configuration."""
    done = {}

    def build(name: str):
        if name not in done:
            tmp = tmp_path_factory.mktemp(name)
            config = original_config(name)
            net = build_original(config["model_args"], seed=len(name))
            config["model_args"]["use_flash_attention"] = True  # as their YAML says; ignored by the import
            ckpt = write_original(tmp / "last.ckpt", config, net)
            size = IMAGE_SIZE[config["model_args"]["spatial_dims"]]
            done[name] = net, run_import(tmp, ckpt, f"image_size={size}")
        return done[name]

    return build


def conditions(name: str, batch: int, seed: int = 0):
    """Suite conditions (labels, label maps) and the original's (one-hot, scaled masks) for ``name``."""
    args = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    size = IMAGE_SIZE[args["spatial_dims"]]
    labels = torch.randint(0, 3, (batch,), generator=g) if args["with_conditioning"] else None
    masks = (
        torch.randint(0, NUM_MASK_LABELS, (batch, 1, *size), generator=g)
        if args["mask_conditioning"]
        else None
    )
    cond = None if labels is None else F.one_hot(labels, 3).float()[:, None]
    scaled = None if masks is None else masks.float() / (NUM_MASK_LABELS - 1)
    return labels, masks, cond, scaled


@pytest.mark.parametrize("name", list(CONFIGS))
def test_velocity_matches_the_original(imported, name):
    net, folder = imported(name)
    gen = load_pretrained(folder)
    size = IMAGE_SIZE[CONFIGS[name]["spatial_dims"]]
    # times on the sampler's grid (k / 10, midpoints) and random ones; states in the model's own units
    t = torch.cat(
        [torch.tensor([0.0, 0.05, 0.3, 0.95, 1.0]), torch.rand(3, generator=torch.Generator().manual_seed(1))]
    )
    x = torch.randn(len(t), 1, *size, generator=torch.Generator().manual_seed(2))
    labels, masks, cond, scaled = conditions(name, len(t))
    with torch.no_grad():
        want = net(x, t, cond, scaled)
    got = gen.velocity(x, t, labels=labels, masks=masks)
    assert want.abs().mean() > 0.1  # every layer moved the output (no zero-initialised layer left)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert gen.data_range == (0.0, 1.0)  # the original's default image_norm, minmax_0_1
    # the same numbers through the suite checkpoint that sample / evaluate / audit load
    model = load_model(folder / "model.ckpt")
    with torch.no_grad():
        again = model.net(x, t, cond=labels, mask=masks)
    torch.testing.assert_close(again, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["mask_class", "3d"])  # the released families
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_ten_step_samples_match_the_original_solver(imported, name, method):
    net, folder = imported(name)
    model = load_model(folder / "model.ckpt")
    size = IMAGE_SIZE[CONFIGS[name]["spatial_dims"]]
    noise = SampleNoise((1, *size), [0, 1], seed=3)
    labels, masks, cond, scaled = conditions(name, 2, seed=4)
    ours = model.objective.sample(model.net, noise, method, 10, labels, masks).x
    solver = ODESolver(velocity_model=net)
    with torch.no_grad():
        theirs = solver.sample(
            x_init=noise.x0,
            step_size=0.1,
            method=method,
            time_grid=torch.tensor([0.0, 1.0]),
            cond=cond,
            masks=scaled,
        )
    # ours comes back in the suite's [-1, 1]; theirs is in the model's own [0, 1]
    torch.testing.assert_close((ours + 1) / 2, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))


def test_sample_cli_on_an_import_matches_the_original(imported, tmp_path):
    net, folder = imported("mask_class")
    masks = torch.randint(0, NUM_MASK_LABELS, (2, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    files = []
    for i, m in enumerate(masks):
        np.save(tmp_path / f"mask{i}.npy", m[0].numpy().astype(np.uint8))
        files.append(str(tmp_path / f"mask{i}.npy"))
    out = tmp_path / "samples"
    overrides = [f"ckpt_path={folder / 'model.ckpt'}", f"out_dir={out}", "num_samples=2", "precision=fp32"]
    overrides += ["labels=[2,0]", f"mask_files=[{','.join(files)}]", "device=cpu"]
    info = sample(compose_config("sample", overrides, out))
    assert info["sampler"] == "euler" and info["steps"] == 10  # the original's solver_args: euler, step 0.1
    assert info["origin"]["checkpoint"] == "last.ckpt" and info["origin"]["data_range"] == [0.0, 1.0]
    assert json.loads((out / "sampling.json").read_text())["origin"]["mask_input"].startswith("label / 3")
    noise = SampleNoise((1, 16, 16), [0, 1], seed=0)
    solver = ODESolver(velocity_model=net)
    cond = F.one_hot(torch.tensor([2, 0]), 3).float()[:, None]
    with torch.no_grad():
        theirs = solver.sample(
            x_init=noise.x0,
            step_size=0.1,
            method="euler",
            time_grid=torch.tensor([0.0, 1.0]),
            cond=cond,
            masks=masks / 3,
        )
    images = torch.from_numpy(np.load(out / "samples.npz")["images"])
    torch.testing.assert_close(images, (2 * theirs - 1).clamp(-1, 1), rtol=1e-3, atol=2e-3)


def test_sample_cli_on_a_3d_import(imported, tmp_path):
    _, folder = imported("3d")
    out = tmp_path / "samples"
    overrides = [
        f"ckpt_path={folder / 'model.ckpt'}",
        f"out_dir={out}",
        "num_samples=2",
        "steps=2",
        "device=cpu",
    ]
    info = sample(compose_config("sample", overrides, out))  # its data (a pickle) is not needed, nor opened
    assert info["nfe"] == 2 and info["origin"]["time_input"].startswith("floor(t * 999)")
    assert "class_context" not in info["origin"] and "mask_input" not in info["origin"]
    assert sorted(p.name for p in (out / "volumes").iterdir()) == [
        "sample_00000.nii.gz",
        "sample_00001.nii.gz",
    ]


def test_a_foreign_checkpoint_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "suite.ckpt"
    torch.save({"state_dict": {"net.conv.weight": torch.zeros(1)}, "motfm": {}}, bad)
    result = run_cli("motfm.import_motfm", [f"ckpt_path={bad}", f"out={tmp_path / 'out'}"])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {bad}: not a checkpoint of the original MOTFM code"
    )


def test_objects_beyond_weights_are_refused_not_unpickled(tmp_path):
    config = original_config("unconditional")
    net = build_original(config["model_args"])
    bad = tmp_path / "namespace.ckpt"
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(**config)}, bad)
    with pytest.raises(
        CheckpointError, match=r"namespace.ckpt: cannot be read with torch.load\(weights_only=True\)"
    ):
        run_import(tmp_path, bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # their YAML says 1 transformer layer, the weights have 2: the second layer's first weight is extra
        (
            {"transformer_num_layers": 1},
            r"'model.unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight' has no place",
        ),
        # 4 classes in the YAML, 3 in the weights: the first cross-attention key projection differs
        (
            {"cross_attention_dim": 4},
            r"'model.unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight' "
            r"has shape \[16, 3\]",
        ),
        # an unconditional YAML for a class model: MONAI's plain attention has no transformer blocks
        (
            {"with_conditioning": False, "cross_attention_dim": None},
            r"'model.unet.down_blocks.1.attentions.0.proj_in.conv.weight' has no place",
        ),
    ],
)
def test_weights_that_do_not_fit_the_config_name_the_first_key(tmp_path, change, message):
    config = original_config("class")
    ckpt = write_original(tmp_path / "class.ckpt", config, build_original(config["model_args"]))
    theirs = tmp_path / "their.yaml"
    theirs.write_text(yaml.safe_dump(original_config("class", **change)))
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'class.ckpt'}: parameter {message}"):
        run_import(tmp_path, ckpt, f"config={theirs}", "image_size=[16,16]")


def test_a_missing_weight_is_named_by_its_original_name(tmp_path):
    config = original_config("mask")
    net = build_original(config["model_args"])
    del net.controlnet.controlnet_mid_block
    net.controlnet.controlnet_mid_block = None
    ckpt = write_original(tmp_path / "mask.ckpt", config, net)
    with pytest.raises(
        CheckpointError, match=r"'model.controlnet.controlnet_mid_block.conv.weight' is missing"
    ):
        run_import(tmp_path, ckpt, "image_size=[16,16]")


def test_hyper_parameters_nested_under_config_and_their_yaml_give_the_same_model(tmp_path):
    config = original_config("class")
    net = build_original(config["model_args"])
    ckpt = torch.load(write_original(tmp_path / "top.ckpt", config, net), weights_only=True)
    ckpt["hyper_parameters"] = {"config": config}  # save_hyperparameters() of a module taking `config`
    torch.save(ckpt, tmp_path / "nested.ckpt")
    nested = load_model(
        run_import(tmp_path / "a", tmp_path / "nested.ckpt", "image_size=[16,16]") / "model.ckpt"
    )
    del ckpt["hyper_parameters"]
    torch.save(ckpt, tmp_path / "bare.ckpt")
    theirs = tmp_path / "their.yaml"
    theirs.write_text(yaml.safe_dump(config))
    args = (f"config={theirs}", "image_size=[16,16]")
    from_yaml = load_model(run_import(tmp_path / "b", tmp_path / "bare.ckpt", *args) / "model.ckpt")
    assert nested.config["model"] == from_yaml.config["model"]
    assert nested.config["model"]["class_context"] == "one_hot" and nested.spec.num_classes == 3
    with pytest.raises(CheckpointError, match=r"bare.ckpt: no 'model_args' in the MOTFM config"):
        run_import(tmp_path / "c", tmp_path / "bare.ckpt")


def test_a_truncated_checkpoint_is_named(tmp_path):
    config = original_config("unconditional")
    whole = write_original(tmp_path / "whole.ckpt", config, build_original(config["model_args"])).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        CheckpointError, match=r"cut.ckpt: cannot be read with torch.load\(weights_only=True\)"
    ):
        run_import(tmp_path, tmp_path / "cut.ckpt")
