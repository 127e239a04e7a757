import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from cli_helpers import TINY_2D, TINY_3D, compose_config
from motfm.checkpoint import read_checkpoint
from motfm.train import train


@pytest.mark.parametrize(
    ("overrides", "conditioning"),
    [
        (TINY_2D, []),
        (TINY_2D, ["class", "mask"]),
        (TINY_3D, []),
        (TINY_3D, ["mask"]),
    ],
)
def test_fast_dev_run(tmp_path, overrides, conditioning):
    cond = "[" + ",".join(conditioning) + "]"
    cfg = compose_config(
        "train", [*overrides, f"model.conditioning={cond}", "+trainer.fast_dev_run=2"], tmp_path
    )
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    assert "val/loss_ema" in result["metrics"]


def test_short_run_writes_checkpoint_and_sample_grid(tmp_path):
    cfg = compose_config(
        "train", [*TINY_2D, "trainer.max_epochs=2", "callbacks.sample_grid.num_samples=4"], tmp_path
    )
    result = train(cfg)
    ckpt = read_checkpoint(result["last_ckpt"])
    assert ckpt["global_step"] == 8  # 16 samples / batch 4 x 2 epochs
    assert ckpt["motfm"]["data_spec"]["image_size"] == [32, 32]
    assert ckpt["motfm"]["config"]["model"]["channels"] == [8, 16]
    ema = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    raw = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert len(ema) == len(raw) > 0
    pictures = sorted((tmp_path / "samples").glob("*.png"))
    assert len(pictures) == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampling.steps=0", "sampling: steps=0: sampler 'euler' needs an integer >= 1"),
        ("sampling.sampler=heun9", "sampling: sampler 'heun9' does not apply to a 'fm' model"),
        ("+callbacks.sample_grid.guidance_scale=-1", "guidance_scale=-1 must be >= 0"),
        ("method.p_uncond=1.5", "method.p_uncond=1.5 must be in"),
        ("optimizer.lr=0", "optimizer.lr=0 must be > 0"),
        ("data.dataset.size=33", "not divisible by 2"),
        ("model.channels=[6,16]", "channels 6 are not divisible by norm_groups 4"),
        ("model.conditioning=[text]", "unknown conditioning"),
        ("data=brain_phantom", "the model is 2D but the data are 3D"),
    ],
)
def test_invalid_config_fails_before_training(tmp_path, override, message):
    cfg = compose_config("train", [*TINY_2D, override], tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_unwritable_output_dir_fails_early(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="paths.output_dir=.* cannot be written"):
        train(compose_config("train", TINY_2D, blocker / "run"))


def test_a_run_stopped_between_checkpoints_still_saves_its_last_step(tmp_path):
    # the studies rely on it: no validation, no periodic save before the stop, yet last.ckpt holds step 3
    overrides = ["trainer.max_steps=3", "trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=100"]
    overrides.append("callbacks.periodic_checkpoint.every_n_train_steps=100")
    result = train(compose_config("train", [*TINY_2D, *overrides], tmp_path))
    assert read_checkpoint(result["last_ckpt"])["global_step"] == 3


def test_a_compiled_run_writes_checkpoints_an_eager_network_loads(tmp_path):
    from motfm.loading import load_model

    result = train(compose_config("train", [*TINY_2D, "trainer.max_steps=2", "compile=eager"], tmp_path))
    state = read_checkpoint(result["last_ckpt"])["state_dict"]
    assert not any("_orig_mod" in k for k in state)
    load_model(result["last_ckpt"])  # strict: every name matches the eager network
    resumed = train(
        compose_config(
            "train", [*TINY_2D, "trainer.max_steps=3", f"ckpt_path={result['last_ckpt']}"], tmp_path / "r"
        )
    )
    assert read_checkpoint(resumed["last_ckpt"])["global_step"] == 3


def test_compute_budget_stops_training_and_saves_the_last_step(tmp_path):
    cfg = compose_config(
        "train",
        [*TINY_2D, "trainer.max_epochs=-1", "callbacks.compute_budget.cpu_seconds=0.5"],
        tmp_path,
    )
    result = train(cfg)
    ckpt = read_checkpoint(result["last_ckpt"])
    assert 1 <= ckpt["global_step"] < 1000
    assert result["metrics"]["train/cpu_seconds"] >= 0.5


def test_a_resumed_run_spends_only_what_is_left_of_its_compute_budget(tmp_path):
    """The CPU time spent is in the checkpoint: resuming a run that spent its budget takes one more step (the
    check runs after each step), not a whole new budget. The study's interrupted arms resume this way."""
    budget = ["trainer.max_epochs=-1", "callbacks.compute_budget.cpu_seconds=0.5"]
    first = train(compose_config("train", [*TINY_2D, *budget], tmp_path / "a"))
    spent = read_checkpoint(first["last_ckpt"])
    (state,) = [v for k, v in spent["callbacks"].items() if k.startswith("ComputeBudget")]
    assert state["cpu_seconds_used"] >= 0.5
    resumed = train(
        compose_config("train", [*TINY_2D, *budget, f"ckpt_path={first['last_ckpt']}"], tmp_path / "b")
    )
    assert read_checkpoint(resumed["last_ckpt"])["global_step"] == spent["global_step"] + 1
    assert resumed["metrics"]["train/cpu_seconds"] > state["cpu_seconds_used"]


def test_progress_bar_reads_the_metrics_only_every_log_interval(tmp_path, monkeypatch):
    # reading them copies the loss to the host: on a GPU a synchronisation, so not every step
    reads = []
    original = TQDMProgressBar.get_metrics

    def counted(self, trainer, module):
        reads.append(trainer.training)
        return original(self, trainer, module)

    monkeypatch.setattr(TQDMProgressBar, "get_metrics", counted)
    overrides = ["trainer.max_epochs=2", "trainer.log_every_n_steps=4", "trainer.enable_progress_bar=true"]
    train(compose_config("train", [*TINY_2D, *overrides], tmp_path))
    assert 0 < sum(reads) <= 4  # 8 steps: at steps 4 and 8, and at each epoch's end (every step: 10)
    train(
        compose_config(
            "train", [*TINY_2D, "trainer.max_steps=2", "trainer.enable_progress_bar=false"], tmp_path
        )
    )
