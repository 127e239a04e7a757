"""Optuna sweeps (hparams_search=optuna): the composed sweeper, the value a trial returns, a 2-trial study
on the phantom that a second run continues."""

import csv
import math

import optuna
import pytest
import torch
from hydra.utils import instantiate

from cli_helpers import TINY_2D, compose_config, run_cli
from motfm.sweeps import sqlite_storage, trial_value

TRIAL = [
    *TINY_2D,
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.sample_grid",
]


def test_optuna_config_stores_the_study_in_the_sweep_folder(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [*TINY_2D, "hparams_search=optuna", f"hydra.sweep.dir={sweep}", "seed=7"]
    cfg = compose_config("train", overrides, tmp_path, with_hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.direction == "minimize" and cfg.optimized_metric == "val/loss_ema"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 7
    assert set(sweeper.params) == {"optimizer.lr", "ema_decay", "coupling"}
    assert instantiate(sweeper.storage) == f"sqlite:///{sweep / 'optuna.db'}"
    assert sweep.is_dir()  # created for SQLite, which does not create folders


def test_sqlite_storage_opens_and_reopens_a_study(tmp_path):
    url = sqlite_storage(tmp_path / "a" / "b" / "study.db")
    study = optuna.create_study(study_name="s", storage=url, load_if_exists=True)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    again = optuna.create_study(
        study_name="s", storage=sqlite_storage(tmp_path / "a" / "b" / "study.db"), load_if_exists=True
    )
    assert len(again.trials) == 1


def test_trial_value_is_a_finite_float_or_none():
    metrics = {"val/loss_ema": torch.tensor(0.25), "val/loss": float("nan"), "val/fid": math.inf}
    value = trial_value(metrics, "val/loss_ema")
    assert type(value) is float and value == 0.25
    assert trial_value(metrics, "val/loss") is None  # NaN: Optuna would refuse to store it and stop
    assert trial_value(metrics, "val/fid") is None
    assert trial_value(metrics, "val/fid@steps=5") is None  # not logged (callbacks=with_metrics is off)
    assert trial_value(metrics, None) is None


def last_val_loss_ema(trial_dir):
    with open(next(trial_dir.glob("csv/version_*/metrics.csv"))) as f:
        return [float(r["val/loss_ema"]) for r in csv.DictReader(f) if r.get("val/loss_ema")][-1]


@pytest.mark.slow
def test_two_trial_study_then_a_rerun_continues_it(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*TRIAL, "hparams_search=optuna", f"hydra.sweep.dir={sweep}"]
    first = run_cli("motfm.train", [*args, "hydra.sweeper.n_trials=2"])
    assert first.returncode == 0, first.stderr[-4000:]
    trials = sorted(p for p in sweep.iterdir() if (p / ".hydra" / "config.yaml").is_file())
    assert len(trials) == 2
    for trial in trials:
        assert (trial / "checkpoints" / "last.ckpt").is_file()
    study = optuna.load_study(study_name="motfm", storage=f"sqlite:///{sweep / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and (sweep / "optimization_results.yaml").is_file()
    assert {t.params["coupling"] for t in done} <= {"minibatch_ot", "independent"}
    # each trial's value is the last EMA validation loss it logged
    assert sorted(t.value for t in done) == pytest.approx(sorted(last_val_loss_ema(p) for p in trials))

    # the same command continues the study; a trial without its metric fails alone, the study goes on
    second = run_cli("motfm.train", [*args, "hydra.sweeper.n_trials=1", "optimized_metric=val/not_logged"])
    assert second.returncode == 0, second.stderr[-4000:]
    study = optuna.load_study(study_name="motfm", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert len([p for p in sweep.iterdir() if (p / ".hydra").is_dir()]) == 3  # no trial folder reused
