"""A callback recording, per DDP rank, the sample indices of each training batch and hashes of the weights."""

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordShards(L.Callback):
    """Write ``<dirpath>/<tag>-rank<R>.json``: each batch's ``[step, epoch, [indices]]``, weight hashes."""

    def __init__(self, dirpath: str, tag: str) -> None:
        self.dirpath, self.tag = Path(dirpath), tag
        self.batches: list[list] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        indices = [int(m["index"]) for m in batch["meta"]]
        self.batches.append([trainer.global_step, trainer.current_epoch, indices])

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {
            "world_size": trainer.world_size,
            "batches": self.batches,
            "net": weights_hash(pl_module.net),
            "ema": weights_hash(pl_module.ema.module),
        }
        path = self.dirpath / f"{self.tag}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))
