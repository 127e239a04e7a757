"""Lightning DDP on two CPU processes (gloo): disjoint data shards, identical weights and EMA on both ranks,
a checkpoint from rank 0 that loads and resumes mid-epoch."""

import json

import pytest

from cli_helpers import TINY_2D, compose_config, run_cli
from motfm.data.datamodule import ResumableSampler
from motfm.loading import load_model
from motfm.train import train
from record_shards import weights_hash

SEED, TRAIN, BATCH, WORLD = 42, 16, 4, 2
RUN = [
    *[o for o in TINY_2D if o != "trainer=cpu"],
    "trainer=ddp",
    "trainer.accelerator=cpu",
    f"trainer.devices={WORLD}",
    "trainer.precision=32-true",
    "trainer.max_epochs=-1",
    "trainer.enable_progress_bar=false",
    "callbacks.periodic_checkpoint.every_n_train_steps=3",
    "~callbacks.sample_grid",
    f"seed={SEED}",
]


def expected_batches(steps: range) -> dict[int, list[list]]:
    """Per rank, ``[step, epoch, indices]`` of each optimiser step, from the sampler's definition."""
    per_epoch = TRAIN // WORLD // BATCH
    out: dict[int, list[list]] = {}
    for rank in range(WORLD):
        sampler = ResumableSampler(TRAIN, SEED, WORLD, rank)
        for step in steps:
            epoch, i = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            order = list(sampler)
            out.setdefault(rank, []).append([step, epoch, order[i * BATCH : (i + 1) * BATCH]])
    return out


def records(folder, tag):
    return {r: json.loads((folder / f"{tag}-rank{r}.json").read_text()) for r in range(WORLD)}


def train_ddp(run_dir, shards, tag, *overrides):
    result = run_cli(
        "motfm.train",
        [
            *RUN,
            f"hydra.run.dir={run_dir}",
            "+callbacks.shards._target_=record_shards.RecordShards",
            f"+callbacks.shards.dirpath={shards}",
            f"+callbacks.shards.tag={tag}",
            *overrides,
        ],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return records(shards, tag)


@pytest.mark.slow
def test_ddp_two_processes_shard_data_share_weights_and_resume(tmp_path):
    shards = tmp_path / "shards"
    first = train_ddp(tmp_path / "first", shards, "first", "trainer.max_steps=3")
    assert [first[r]["world_size"] for r in range(WORLD)] == [WORLD, WORLD]
    want = expected_batches(range(3))
    for rank in range(WORLD):
        assert first[rank]["batches"] == want[rank]
    seen = [{i for _, epoch, idx in first[r]["batches"] if epoch == 0 for i in idx} for r in range(WORLD)]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == TRAIN  # epoch 0: disjoint shards, all data
    # gradients are all-reduced: both ranks end with the same weights and the same EMA
    assert first[0]["net"] == first[1]["net"] and first[0]["ema"] == first[1]["ema"]
    assert first[0]["net"] != first[0]["ema"]

    last = tmp_path / "first" / "checkpoints" / "last.ckpt"  # written by rank 0 at step 3, mid-epoch 1
    loaded = load_model(last, use_ema=True)
    assert loaded.global_step == 3
    assert weights_hash(loaded.net) == first[0]["ema"]

    second = train_ddp(tmp_path / "second", shards, "second", f"ckpt_path={last}", "trainer.max_steps=6")
    want = expected_batches(range(3, 6))  # continues with the second batch of epoch 1
    for rank in range(WORLD):
        assert second[rank]["batches"] == want[rank]
    assert second[0]["ema"] == second[1]["ema"]
    assert load_model(tmp_path / "second" / "checkpoints" / "last.ckpt").global_step == 6


def test_periodic_checkpoint_holds_the_ema_of_its_step(tmp_path):
    """A checkpoint written by ``every_n_train_steps`` (in the callbacks' ``on_train_batch_end``) must hold
    the weight average after its step's update, or a resumed run drifts from the uninterrupted one."""
    overrides = [
        *TINY_2D,
        "data.dataset.num_samples={train:8,val:4,test:4}",
        "trainer.max_steps=3",  # 2 batches per epoch: last.ckpt at the validation of step 2, then at step 3
        "callbacks.periodic_checkpoint.every_n_train_steps=3",
        "~callbacks.sample_grid",
        "+callbacks.shards._target_=record_shards.RecordShards",
        f"+callbacks.shards.dirpath={tmp_path}",
        "+callbacks.shards.tag=run",
    ]
    train(compose_config("train", overrides, tmp_path))
    held = json.loads((tmp_path / "run-rank0.json").read_text())
    loaded = load_model(tmp_path / "checkpoints" / "last.ckpt", use_ema=True)
    assert loaded.global_step == 3
    assert weights_hash(loaded.net) == held["ema"]
