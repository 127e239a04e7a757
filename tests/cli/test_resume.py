"""Kill a training run with SIGKILL mid-epoch, resume it, and get the uninterrupted run's losses."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import TINY_2D, compose_config
from motfm.train import train
from motfm.validate import ConfigError

RUN = [
    *[o for o in TINY_2D if not o.startswith("data.dataset.num_samples")],
    "data.dataset.num_samples={train:48,val:4,test:4}",
    "trainer.max_steps=12",
    "trainer.max_epochs=-1",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "callbacks.periodic_checkpoint.every_n_train_steps=5",
    "~callbacks.sample_grid",
    "scheduler.warmup_steps=3",
]


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    out[int(row["step"])] = float(row["train/loss"])
    return out


def cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "motfm.train", *RUN, f"hydra.run.dir={run_dir}", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_losses(tmp_path):
    reference = tmp_path / "reference"
    train(compose_config("train", RUN, reference))
    expected = losses(reference)
    assert sorted(expected) == list(range(12))

    run = tmp_path / "run"
    killed = cli(run, "+callbacks.kill._target_=kill_callback.KillAtStep", "+callbacks.kill.step=8")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()  # written at step 5, mid-epoch (12 batches)

    resumed = cli(run, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = losses(run)
    for step in range(5, 12):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_resume_is_never_implicit_and_missing_last_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=last but"):
        train(compose_config("train", [*RUN, "ckpt_path=last"], tmp_path))
    with pytest.raises(ConfigError, match="resume='always'"):
        train(compose_config("train", [*RUN, "resume=always"], tmp_path))
