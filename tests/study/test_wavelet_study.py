"""The wavelet study (experiments/wavelet/study.yaml): every arm builds, shrunk to a tiny size."""

from pathlib import Path

from motfm.study.run import dry_run
from motfm.study.spec import load_study

STUDY = Path(__file__).resolve().parents[2] / "experiments" / "wavelet" / "study.yaml"
TINY = [
    "data.dataset.size=16",
    "data.dataset.num_samples={train:2,val:1,test:1}",
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=8",
    "model.norm_groups=4",
]


def test_the_study_compares_pixel_and_haar_at_the_same_widths(tmp_path):
    study = load_study(STUDY, out_dir=tmp_path)
    assert list(study.models) == ["pixel", "haar1", "haar2"]
    assert {run.sampler: run.steps for m in study.runs for run in study.runs[m].values()} == {
        "euler": [1, 2, 5, 10]
    }
    assert "psd_hf_log_error" in study.metrics and "mmd_rbf" in study.metrics
    assert dry_run(study, TINY) == ["pixel", "haar1", "haar2"]
