"""The experiment files of experiments/downstream: they parse, and their dry runs build and run every part on
tiny sizes (the GPU-sized CAMUS / MSD files on fixture data), so they do not rot; and a tiny experiment on
trained checkpoints read from disk."""

import json
from pathlib import Path

import pytest

from data.fixtures import write_camus, write_msd
from motfm.downstream.run import main
from motfm.downstream.spec import DRY_RUN_MAX_STEPS, load_experiment
from tiny_ckpt import COND_2D, tiny_checkpoint

pytest.importorskip("monai", reason="the downstream segmenter needs MONAI: pip install -e '.[downstream]'")

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "downstream"
FILES = ["echo2d", "brain3d", "camus2d", "msd3d"]


@pytest.mark.parametrize("name", FILES)
def test_experiment_files_parse_and_shrink_for_the_dry_run(name):
    full = load_experiment(EXPERIMENTS / f"{name}.yaml")
    dry = load_experiment(EXPERIMENTS / f"{name}.yaml", dry_run=True)
    assert len(full.seeds) == 3 and set(full.regimes) == {"real", "real_matched", "synthetic", "both"}
    assert {g.steps for g in full.generators.values()} == {1, 5, 10, 50}
    assert {g.checkpoint for g in full.generators.values()} == {"fm", "ddpm"}
    assert all(g.steps <= DRY_RUN_MAX_STEPS for g in dry.generators.values())
    assert dry.segmenter_training.steps <= 2 and dry.classifier_training.steps <= 2
    assert dry.out_dir != full.out_dir and dry.results_dir != full.results_dir
    assert full.missing_hint and dry.checkpoint_overrides


@pytest.mark.parametrize(
    "name",
    [
        "echo2d",
        pytest.param("brain3d", marks=pytest.mark.slow),
        "camus2d",
        pytest.param("msd3d", marks=pytest.mark.slow),
    ],
)
def test_dry_run_of_every_experiment_file(name, tmp_path):
    data = []
    if name == "camus2d":
        write_camus(tmp_path / "camus", n_patients=8)
        data = ["--data", f"dataset.root={tmp_path / 'camus'}"]
    if name == "msd3d":
        write_msd(tmp_path / "msd", n_cases=8)
        data = ["--data", f"dataset.root={tmp_path / 'msd'}"]
    args = [str(EXPERIMENTS / f"{name}.yaml"), "--dry-run", "--out-dir", str(tmp_path / "out")]
    main([*args, "--results-dir", str(tmp_path / "results"), *data])
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert len(results["rows"]) == 2 + 2 * 5
    assert (tmp_path / "results" / "dice_vs_nfe.png").is_file()


@pytest.mark.slow
def test_tiny_experiment_on_trained_checkpoints(tmp_path_factory, tmp_path):
    from test_run import check_results, write_experiment

    fm = tiny_checkpoint(tmp_path_factory)
    ddpm = tiny_checkpoint(tmp_path_factory, "tiny2d_ddpm", [*COND_2D, "method=ddpm"])
    path = write_experiment(tmp_path, {"fm": str(fm), "ddpm": str(ddpm)})
    main([str(path)])
    results = check_results(tmp_path / "results", [0, 1], 4, ["fm_euler_1", "ddpm_dpmpp_2"])
    ckpts = results["run"]["checkpoints"]
    assert ckpts["fm"]["method"] == "fm" and ckpts["ddpm"]["method"] == "ddpm"
    assert ckpts["fm"]["global_step"] > 0 and ckpts["fm"]["path"] == str(fm.resolve())
