"""Who a sampling process is under torchrun / SLURM, and which batches it takes."""

import pytest

from motfm.distributed import DistInfo, barrier, broadcast_text, sum_over_ranks


def test_launcher_variables() -> None:
    assert DistInfo.from_env({}) == DistInfo(0, 1, 0)
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "9"}
    assert DistInfo.from_env(torchrun) == DistInfo(3, 4, 1)  # torchrun's variables win inside a SLURM job
    slurm = {"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"}
    assert DistInfo.from_env(slurm) == DistInfo(2, 3, 0) and not DistInfo(2, 3, 0).is_main
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        DistInfo.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        DistInfo.from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_shards_cover_every_batch_once() -> None:
    batches = list(range(11))
    shards = [DistInfo(r, 3, r).shard(batches) for r in range(3)]
    assert shards[0] == [0, 3, 6, 9] and sorted(sum(shards, [])) == batches


def test_collectives_are_no_ops_for_one_process() -> None:
    barrier()
    assert sum_over_ranks([2, 3.5]) == [2.0, 3.5] and broadcast_text("out/dir") == "out/dir"
