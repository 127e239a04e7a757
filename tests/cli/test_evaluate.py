import json
import os
import subprocess
import sys

import pytest

import motfm.metrics.report as report_mod
from cli_helpers import CONF_DIR, FAST_EVAL, TINY_2D, TINY_3D, compose_config
from motfm.evaluate import evaluate, main
from motfm.metrics.extractors import ExtractorUnavailable
from motfm.sample import sample
from motfm.train import train

# one optimiser step is enough: the tests need a checkpoint, not a good model
QUICK_TRAIN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "+trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "callbacks.sample_grid.num_samples=2",
    "callbacks.sample_grid.steps=1",
    "logger=none",
]


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("train2d")
    cond = "model.conditioning=[class,mask]"
    return train(compose_config("train", [*TINY_2D, cond, *QUICK_TRAIN], out))["last_ckpt"]


@pytest.fixture(scope="module")
def ckpt_3d(tmp_path_factory):
    out = tmp_path_factory.mktemp("train3d")
    return train(compose_config("train", [*TINY_3D, *QUICK_TRAIN], out))["last_ckpt"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


FAST = [
    *FAST_EVAL,
    "inception_score_splits=2",
    "phantom_classifier.num_train=64",
    "phantom_classifier.num_val=16",
    "phantom_classifier.epochs=2",
]


def run_eval(out_dir, cache_dir, *overrides):
    cfg = compose_config(
        "evaluate", [*FAST, f"out_dir={out_dir}", f"paths.cache_dir={cache_dir}", *overrides], out_dir
    )
    return evaluate(cfg)


def count_real_extractions(monkeypatch):
    calls = []
    real = report_mod.extract_features

    def counting(extractor, images, batch_size=32, kind="features", desc=None):
        calls.append(desc)
        return real(extractor, images, batch_size, kind, desc)

    monkeypatch.setattr(report_mod, "extract_features", counting)
    return lambda: [d for d in calls if d and "real" in d]


def test_evaluate_2d_on_the_fly_and_ref_cache(ckpt_2d, cache_dir, tmp_path, monkeypatch):
    real_calls = count_real_extractions(monkeypatch)
    args = (f"ckpt_path={ckpt_2d}", "steps=[1,2]", "samplers=[euler,midpoint]")
    result = run_eval(tmp_path / "first", cache_dir, *args)
    assert len(real_calls()) == 1 and not result["ref_features_from_cache"]
    rows = result["results"]
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [
        ("euler", 1, 1),
        ("euler", 2, 2),
        ("midpoint", 1, 2),
        ("midpoint", 2, 4),
    ]
    for row in rows:
        assert row["extractor"] == "random_conv2d" and len(row["weights_hash"]) == 16
        assert row["num_real"] == 4 and row["num_fake"] == 4
        for key in ("fid", "kid", "kid_std", "is", "ms_ssim", "ssim_paired", "dice", "label_acc"):
            assert isinstance(row[key], float), key
        assert {"dice/lv_cavity", "dice/myocardium", "dice/left_atrium"} <= set(row)
        assert row["seconds"] > 0 and row["images_per_s"] > 0
        assert "mmd_rbf" not in row  # 3D only
    ref = result["reference"]
    assert ref["dice"] > 0.6 > ref["dice_vs_random_real"] and 0 < ref["ms_ssim"] < 1
    assert any("CMMD omitted" in n for n in result["notes"])
    on_disk = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert on_disk["results"][3]["fid"] == pytest.approx(rows[3]["fid"])
    md = (tmp_path / "first" / "metrics.md").read_text()
    header = md.splitlines()[4]
    assert (
        header.startswith("| sampler | steps | nfe |") and "| fid | kid |" in header and "label_acc" in header
    )
    assert "| midpoint | 2 | 4 |" in md and "| real (test) |" in md
    assert (cache_dir / "ref_stats").is_dir() and list(cache_dir.glob("phantom_classifier/EchoPhantom-*.pt"))

    # 4 real images are too few for k = 3 / 5 balls: left out with a note
    assert "precision" not in rows[0] and any("precision/recall (k=3)" in n for n in result["notes"])

    # second run: the reference features come from the cache, the real images are not passed through again;
    # smaller k fit the 4 real images
    small_k = ("manifold_k.precision_recall=1", "manifold_k.density_coverage=2")
    args = (f"ckpt_path={ckpt_2d}", "steps=[1]", "samplers=[euler]", *small_k)
    again = run_eval(tmp_path / "second", cache_dir, *args)
    assert again["ref_features_from_cache"] and len(real_calls()) == 1
    (row,) = again["results"]
    assert row["fid"] == pytest.approx(rows[0]["fid"], rel=1e-6)
    assert all(0 <= row[key] <= 1 for key in ("precision", "recall", "coverage")) and row["density"] >= 0
    assert (row["pr_k"], row["dc_k"]) == (1, 2) and again["manifold_k"] == {
        "precision_recall": 1,
        "density_coverage": 2,
    }
    assert "| precision | recall | density | coverage |" in (tmp_path / "second" / "metrics.md").read_text()


def test_evaluate_samples_npz(ckpt_2d, cache_dir, tmp_path):
    samples = tmp_path / "samples"
    cfg = compose_config(
        "sample",
        [f"ckpt_path={ckpt_2d}", f"out_dir={samples}", "steps=2", "num_samples=4", "cond_split=test"],
        samples,
    )
    sample(cfg)
    result = run_eval(tmp_path / "eval", cache_dir, f"samples={samples / 'samples.npz'}")
    (row,) = result["results"]
    assert (row["sampler"], row["steps"], row["nfe"], row["num_fake"]) == ("euler", 2, 2, 4)
    assert isinstance(row["ssim_paired"], float) and isinstance(row["label_acc"], float)
    assert result["ckpt_path"] == str(ckpt_2d)  # found through sampling.json
    # samples conditioned on another split cannot be paired with the reference images
    other = tmp_path / "val_samples"
    sample(compose_config("sample", [f"ckpt_path={ckpt_2d}", f"out_dir={other}", "num_samples=4"], other))
    result = run_eval(tmp_path / "eval_val", cache_dir, f"samples={other}")
    assert "ssim_paired" not in result["results"][0] and "dice" in result["results"][0]
    assert any("paired SSIM omitted" in n for n in result["notes"])


def test_evaluate_3d_on_the_fly_and_nifti(ckpt_3d, cache_dir, tmp_path):
    result = run_eval(
        tmp_path / "fly", cache_dir, f"ckpt_path={ckpt_3d}", "steps=[1]", "samplers=[euler]", "num_samples=3"
    )
    (row,) = result["results"]
    assert row["extractor"].startswith("slices_2p5d[random_conv2d") and row["num_real"] == 2
    for key in ("fid", "kid", "mmd_rbf", "ms_ssim", "dice_vs_random_real"):
        assert isinstance(row[key], float), key
    assert "dice" not in row and "label_acc" not in row  # unconditional model
    samples = tmp_path / "samples"
    sample(
        compose_config(
            "sample", [f"ckpt_path={ckpt_3d}", f"out_dir={samples}", "steps=1", "num_samples=3"], samples
        )
    )
    from_files = run_eval(tmp_path / "files", cache_dir, f"samples={samples}")
    assert from_files["results"][0]["fid"] == pytest.approx(row["fid"], rel=1e-3)
    assert (tmp_path / "files" / "metrics.md").is_file()


@pytest.mark.slow  # the InceptionV3 at 299 x 299 and a 2048-d FID: ~10 s on a quiet 2-core CPU
def test_evaluate_inception_bundled(ckpt_2d, cache_dir, tmp_path):
    try:
        from motfm.metrics.extractors import get_extractor

        get_extractor("inception_bundled")
    except ExtractorUnavailable as err:
        pytest.skip(str(err))
    result = run_eval(
        tmp_path,
        cache_dir,
        f"ckpt_path={ckpt_2d}",
        "extractor=inception_bundled",
        "steps=[1]",
        "samplers=[euler]",
    )
    (row,) = result["results"]
    assert row["extractor"] == "inception_bundled" and row["fid"] > 0
    assert "is" not in row and any("IS omitted" in n for n in result["notes"])


def test_missing_extractor_exits_with_message_and_writes_nothing(ckpt_2d, cache_dir, tmp_path, capsys):
    args = [f"ckpt_path={ckpt_2d}", "extractor=clip", f"+extractor_kwargs.model_path={tmp_path / 'no_clip'}"]
    with pytest.raises(ExtractorUnavailable, match="clip|CLIP"):
        run_eval(tmp_path / "a", cache_dir, *args)
    cfg = compose_config("evaluate", [*args, f"out_dir={tmp_path / 'b'}"], tmp_path / "b")
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(cfg)  # the body of the Hydra entry point
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error:") and "clip" in err.lower()
    for out in (tmp_path / "a", tmp_path / "b"):
        assert not (out / "metrics.json").exists() and not (out / "metrics.md").exists()


@pytest.mark.slow
def test_cli_missing_extractor_exit_code(ckpt_2d, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "motfm.evaluate", f"ckpt_path={ckpt_2d}", "extractor=clip"]
    cmd += [
        "+extractor_kwargs.model_path=/nonexistent",
        f"hydra.run.dir={out}",
        f"paths.cache_dir={tmp_path}",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(CONF_DIR), env=env)
    assert proc.returncode == 2 and "error:" in proc.stderr and "clip" in proc.stderr.lower()
    assert not (out / "metrics.json").exists()


def test_missing_samples_exit_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no_samples"
    cfg = compose_config("evaluate", [f"samples={missing}", f"out_dir={tmp_path / 'out'}"], tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(cfg)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and str(missing) in message and "\n" not in message
    assert not (tmp_path / "out" / "metrics.json").exists()
