"""Hydra launchers: the SLURM config (submitit) follows the trainer; a submitit (local) job on the CPU."""

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cli_helpers import TINY_2D, compose_config, run_cli


def test_slurm_launcher_takes_nodes_and_tasks_from_the_trainer(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [
        *TINY_2D,
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=60",
        f"hydra.sweep.dir={sweep}",
    ]
    cfg = compose_config("train", overrides, tmp_path, with_hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert (launcher["partition"], launcher["timeout_min"]) == ("gpu", 60)
    assert launcher["submitit_folder"] == f"{sweep}/.submitit/%j"
    assert instantiate(cfg.hydra.launcher).params["tasks_per_node"] == 4  # the plugin accepts the config


@pytest.mark.slow
def test_submitit_local_job_writes_its_run_folder(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "motfm.train",
        [
            "-m",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={sweep}",
            *TINY_2D,
            "trainer.max_steps=2",
            "trainer.enable_progress_bar=false",
            "~callbacks.sample_grid",
        ],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    job = sweep / "0"
    assert (job / "checkpoints" / "last.ckpt").is_file()
    assert OmegaConf.load(job / ".hydra" / "config.yaml").trainer.max_steps == 2
    assert OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.output_dir == str(job)
    (out,) = sweep.glob(".submitit/*/*_0_log.out")
    assert "Job completed successfully" in out.read_text()
    assert "last checkpoint:" in out.read_text()
    assert list(sweep.glob(".submitit/*/*_0_log.err"))
