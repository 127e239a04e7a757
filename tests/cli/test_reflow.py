"""Reflow: pair generation (reproducible, resumable) and a student trained from its teacher on the pairs."""

import json

import numpy as np
import pytest
import torch

from cli_helpers import FAST_EVAL, TINY_2D, compose_config
from motfm.data.base import DataError
from motfm.data.pairs import PairDataset
from motfm.evaluate import evaluate
from motfm.lit.module import GenerativeModule
from motfm.loading import load_model
from motfm.reflow import generate_pairs
from motfm.sample import sample
from motfm.train import train

MASK_CLASS = "model.conditioning=[class,mask]"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train(compose_config("train", [*TINY_2D, MASK_CLASS, "trainer.max_epochs=1"], out))["last_ckpt"]


def make_pairs(teacher, out_dir, *overrides):
    args = [
        f"ckpt_path={teacher}",
        f"out_dir={out_dir}",
        "num_pairs=10",
        "batch_size=4",
        "steps=3",
        *overrides,
    ]
    return generate_pairs(compose_config("reflow", args, out_dir))


def student_overrides(pairs, teacher_ckpt, *extra):
    """A reflow student of ``teacher_ckpt`` on ``pairs``, tiny, the data's size taken from the pairs."""
    overrides = [
        *TINY_2D,
        "method=reflow",
        "data=pairs",
        f"data.dataset.root={pairs}",
        "data.dataset.val_fraction=0.2",
        "data.batch_size=4",
        f"init_ckpt={teacher_ckpt}",
        *extra,
    ]
    return [o for o in overrides if not o.startswith("data.dataset.size") and "num_samples" not in o]


def shards(folder):
    return {p.name: torch.load(p, weights_only=True) for p in sorted((folder / "parts").glob("part_*.pt"))}


def test_pairs_are_the_teachers_samples_of_their_noise(teacher, tmp_path):
    info = make_pairs(teacher, tmp_path, "sampler=midpoint")
    assert (info["num_pairs"], info["nfe"], info["teacher_method"]) == (10, 6, "fm")
    assert info["generation_seconds"] > 0
    ds = PairDataset(str(tmp_path), "train", val_fraction=0.2)
    assert len(ds) == 8 and len(PairDataset(str(tmp_path), "val", val_fraction=0.2)) == 2
    item = ds[3]
    assert set(item) >= {"image", "noise", "label", "mask"} and item["mask"].dtype == torch.int64
    # pair 3 is the teacher's sample of noise 3: resample it through the sample CLI with the same seed
    out = tmp_path / "check"
    cfg = compose_config(
        "sample",
        [
            f"ckpt_path={teacher}",
            f"out_dir={out}",
            "num_samples=10",
            "batch_size=10",
            "steps=3",
            "sampler=midpoint",
            "seed=1000",
            "cond_split=train",
            "precision=fp32",
        ],
        out,
    )
    sample(cfg)
    images = np.load(out / "samples.npz")["images"]
    assert torch.allclose(item["image"], torch.from_numpy(images[3]), atol=1e-5)


def test_pair_generation_is_reproducible_and_resumes_identically(teacher, tmp_path):
    make_pairs(teacher, tmp_path / "a")
    full = shards(tmp_path / "a")
    make_pairs(teacher, tmp_path / "b")
    (tmp_path / "b" / "parts" / "part_000004.pt").unlink()  # an interrupted run: one shard missing
    make_pairs(teacher, tmp_path / "b")
    resumed = shards(tmp_path / "b")
    assert full.keys() == resumed.keys() and len(full) == 3
    for name in full:
        for key in ("indices", "noise", "images", "labels", "masks"):
            assert torch.equal(full[name][key], resumed[name][key]), (name, key)
    with pytest.raises(ValueError, match="holds pairs of a different run"):
        make_pairs(teacher, tmp_path / "b", "steps=4")


@pytest.mark.parametrize("distill", [False, True])
def test_student_starts_from_the_teacher_and_trains_on_the_pairs(teacher, tmp_path, distill):
    make_pairs(teacher, tmp_path / "pairs")
    extra = [MASK_CLASS, f"method.distill={str(distill).lower()}", "+trainer.fast_dev_run=1"]
    overrides = student_overrides(tmp_path / "pairs", teacher, *extra)
    student_cfg = compose_config("train", overrides, tmp_path / "student")
    module = GenerativeModule.from_config(student_cfg, PairDataset(str(tmp_path / "pairs")).spec)
    teacher_net = load_model(teacher).net
    assert all(
        torch.equal(a, b) for a, b in zip(module.net.state_dict().values(), teacher_net.state_dict().values())
    )
    result = train(student_cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    assert json.loads((tmp_path / "pairs" / "pairs.json").read_text())["teacher_ckpt"] == str(teacher)


def test_an_unconditional_teachers_student_trains_on_data_that_has_masks(tmp_path):
    """The teacher's data has masks and labels it was not conditioned on: its pairs carry neither, so the
    student's data spec must not ask for them (a 3D study once stopped on "'mask' is missing")."""
    teacher_cfg = compose_config("train", [*TINY_2D, "trainer.max_epochs=1"], tmp_path / "t")
    teacher_ckpt = train(teacher_cfg)["last_ckpt"]
    assert load_model(teacher_ckpt).spec.num_mask_labels > 0  # the real data has masks
    make_pairs(teacher_ckpt, tmp_path / "pairs")
    pairs = PairDataset(str(tmp_path / "pairs"), "train", val_fraction=0.2)
    assert (pairs.spec.num_classes, pairs.spec.num_mask_labels) == (0, 0) and "mask" not in pairs[0]
    assert PairDataset(str(tmp_path / "pairs"), "test").spec == pairs.spec  # one spec for every split
    overrides = student_overrides(tmp_path / "pairs", teacher_ckpt, "trainer.max_epochs=1")
    result = train(compose_config("train", overrides, tmp_path / "student"))
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    # evaluated against the real data, whose masks the student never saw: Dice against random real masks,
    # with the real data's labels (it once failed with an empty label list)
    eval_overrides = [
        f"ckpt_path={result['last_ckpt']}",
        f"out_dir={tmp_path / 'eval'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "steps=[1]",
        *FAST_EVAL,
        "cmmd=false",
    ]
    (row,) = [
        r
        for r in evaluate(compose_config("evaluate", eval_overrides, tmp_path / "eval"))["results"]
        if r.get("nfe") == 1
    ]
    assert 0 <= row["dice_vs_random_real"] <= 1 and "dice_vs_random_real/myocardium" in row


def test_a_truncated_pair_shard_is_one_error_naming_it(teacher, tmp_path):
    make_pairs(teacher, tmp_path)
    shard = tmp_path / "parts" / "part_000004.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match=r"part_000004\.pt: cannot be read as a pair shard"):
        PairDataset(str(tmp_path), "train")
