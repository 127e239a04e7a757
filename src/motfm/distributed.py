"""Several processes sharing one sampling run (``torchrun --nproc_per_node=N`` or SLURM ``srun``).

Only what sampling needs: who this process is (:class:`DistInfo`, read from the launcher's environment), a
gloo process group (CPU tensors only, so it works whatever the device of the model), barriers, sums and a
broadcast of a string. A single process (no launcher) gets ``DistInfo(0, 1, 0)`` and every
collective is a no-op, so the sampling code has one path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (which merges and writes the shared files)."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DistInfo:
        """Read the launcher's variables: torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, else SLURM's
        ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``; a single process without either.

        Raises:
            ValueError: for values that are not integers or a rank outside ``0 .. world_size - 1``.
        """
        env = dict(os.environ if env is None else env)
        if "WORLD_SIZE" in env:
            keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
            keys = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
        else:
            return cls()
        try:
            rank, world, local = (int(env.get(k, "0")) for k in keys)
        except ValueError:
            raise ValueError(
                f"launcher variables {', '.join(f'{k}={env.get(k)!r}' for k in keys)} must be integers"
            ) from None
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"launcher variables give rank {rank} of world size {world}")
        return cls(rank, world, local)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th item from position ``rank`` (strided, so
        that ranks get nearly equal shares and the first items, e.g. the picture's, are spread)."""
        return list(items[self.rank :: self.world_size])


@contextlib.contextmanager
def process_group(info: DistInfo, timeout_s: float = 1800.0) -> Iterator[None]:
    """Join the gloo process group for the block (nothing for a single process).

    SLURM does not set ``MASTER_ADDR`` / ``MASTER_PORT``; for one node they default to localhost:29500,
    across nodes set them (e.g. to the first host of ``scontrol show hostnames``).
    """
    if info.world_size == 1 or torch_dist.is_initialized():
        yield
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    torch_dist.init_process_group(
        "gloo", rank=info.rank, world_size=info.world_size, timeout=dt.timedelta(seconds=timeout_s)
    )
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def _active() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process (no-op for a single one)."""
    if _active():
        torch_dist.barrier()


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over the processes (float64, exact for counts)."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return t.tolist()


def max_over_ranks(value: float) -> float:
    """The largest ``value`` over the processes."""
    if not _active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every process (sent as UTF-8 bytes; nothing is unpickled)."""
    if not _active():
        return text
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64)
    torch_dist.broadcast(size, src=0)
    if torch_dist.get_rank() != 0:
        data = torch.empty(int(size.item()), dtype=torch.uint8)
    torch_dist.broadcast(data, src=0)
    return bytes(data.tolist()).decode("utf-8")
