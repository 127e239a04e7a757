"""The wavelet studies (experiments/wavelet/*.yaml): every arm builds, shrunk to a tiny size, and the
protocols are the ones their README states."""

from pathlib import Path

from motfm.study.run import dry_run
from motfm.study.spec import Study, load_study

FOLDER = Path(__file__).resolve().parents[2] / "experiments" / "wavelet"
TINY = [
    "data.dataset.num_samples={train:2,val:1,test:1}",
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=8",
    "model.norm_groups=4",
]


def runs(study: Study) -> dict[tuple[str, str], tuple[str, list[int], list[str]]]:
    """``(model, run name) -> (sampler, steps, overrides)`` of a study's evaluations."""
    return {
        (m, name): (r.sampler, r.steps, r.overrides)
        for m, named in study.runs.items()
        for name, r in named.items()
    }


def test_the_3d_study_compares_pixel_and_haar_at_the_same_widths_and_budget(tmp_path):
    study = load_study(FOLDER / "study.yaml", out_dir=tmp_path)
    assert list(study.models) == ["pixel", "haar1", "haar2", "haar2_wide", "haar2_none"]
    # The amendment's arm: two levels with a first level as wide as the 64 coefficient channels.
    assert study.models["haar2_wide"] == [*study.models["haar2"], "model.channels=[64,128,256]"]
    # The second amendment's arm: two levels at the shared widths, coefficients not scaled per band.
    assert study.models["haar2_none"] == [*study.models["haar2"], "representation.band_scale=none"]
    assert "callbacks.compute_budget.cpu_seconds=3600" in study.train_common
    every = ("euler", [1, 2, 5, 10], [])
    assert runs(study) == {
        ("pixel", "euler"): every,
        ("haar1", "euler"): every,
        ("haar1", "euler_fp32"): ("euler", [1, 10], ["precision=fp32"]),  # the check of bf16 sampling
        ("haar2", "euler"): every,
        ("haar2_wide", "euler"): every,
        ("haar2_none", "euler"): every,
    }
    assert "psd_hf_log_error" in study.metrics and "mmd_rbf" in study.metrics
    assert dry_run(study, ["data.dataset.size=16", *TINY]) == [
        "pixel",
        "haar1",
        "haar2",
        "haar2_wide",
        "haar2_none",
    ]


def test_the_128_study_runs_haar_alone_on_the_64_protocol(tmp_path):
    big = load_study(FOLDER / "study_128.yaml", out_dir=tmp_path / "big")
    small = load_study(FOLDER / "study.yaml", out_dir=tmp_path / "small")
    assert list(big.models) == ["haar1"] and big.models["haar1"] == small.models["haar1"]
    # Only the size (and how often a checkpoint is kept) differs from the 64^3 protocol.
    differ = set(big.train_common) ^ set(small.train_common)
    assert {o.split("=")[0] for o in differ} == {
        "data.dataset.size",
        "callbacks.periodic_checkpoint.every_n_train_steps",
    }
    assert "data.dataset.size=128" in big.train_common and big.eval_common == small.eval_common
    assert runs(big) == {("haar1", "euler"): ("euler", [1, 2, 5, 10], [])}
    assert dry_run(big, ["data.dataset.size=16", *TINY]) == ["haar1"]


def test_the_2d_studies_build_at_a_tiny_size(tmp_path):
    echo = load_study(FOLDER / "study_echo_128.yaml", out_dir=tmp_path / "echo")
    assert "data.dataset.size=128" in echo.train_common and list(echo.models) == ["pixel", "haar1"]
    assert "callbacks.compute_budget.cpu_seconds=600" in echo.train_common
    assert {"num_samples=128", "num_ref=256"} <= set(echo.eval_common)
    assert runs(echo) == {
        ("pixel", "euler"): ("euler", [2, 10], []),
        ("haar1", "euler"): ("euler", [2, 10], []),
    }
    assert dry_run(echo, ["data.dataset.size=16", *TINY]) == ["pixel", "haar1"]
    pilot = load_study(FOLDER / "study_band_scale_2d.yaml", out_dir=tmp_path / "pilot")
    assert dry_run(pilot, ["data.dataset.size=16", *TINY]) == ["pixel", "haar1_std", "haar1_none"]
