"""An imported MOTFM model through motfm.evaluate and motfm.audit, on a tiny pickle of the original format."""

from __future__ import annotations

import pickle

import numpy as np

from cli_helpers import compose_config
from motfm.audit import audit
from motfm.evaluate import evaluate
from motfm.import_motfm import import_motfm
from motfm_original import build_original, original_config, write_original

FAST = ["extractor=random_conv", "batch_size=4"]


SPLITS = {"train": 12, "valid": 6, "test": 6}


def original_pickle(path):
    """Their data format: per split a list of {image [H, W] in [0, 1], mask (labels / 3), class}."""
    rng = np.random.default_rng(0)
    data = {
        split: [
            {"image": rng.random((16, 16)), "mask": rng.integers(0, 4, (16, 16)) / 3.0, "class": int(i % 3)}
            for i in range(count)
        ]
        for split, count in SPLITS.items()
    }
    path.write_bytes(pickle.dumps(data))
    return path


def test_evaluate_and_audit_take_an_import(tmp_path):
    config = original_config("mask_class")
    config["data_args"]["pickle_path"] = str(original_pickle(tmp_path / "camus.pkl"))
    ckpt = write_original(tmp_path / "last.ckpt", config, build_original(config["model_args"]))
    args = [f"ckpt_path={ckpt}", f"out={tmp_path / 'imported'}", "image_size=[16,16]"]
    folder = import_motfm(compose_config("import_motfm", args, tmp_path))
    common = [f"ckpt_path={folder / 'model.ckpt'}", "data_overrides={dataset: {trust_pickle: true}}", *FAST]
    common.append(f"paths.cache_dir={tmp_path / 'cache'}")
    out = tmp_path / "eval"
    metrics = evaluate(
        compose_config(
            "evaluate",
            [*common, f"out_dir={out}", "steps=[2]", "samplers=[euler]", "num_samples=6", "kid_subsets=2"],
            out,
        )
    )
    (row,) = metrics["results"]
    assert row["steps"] == 2 and row["fid"] is not None
    out = tmp_path / "audit"
    overrides = [*common, f"out_dir={out}", "num_samples=6", "steps=2", "load_batch_size=8"]
    result = audit(compose_config("audit", overrides, out))
    assert isinstance(result["verdict"]["copying_suspected"], bool) and result["num_samples"] == 6
