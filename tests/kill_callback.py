"""A callback that kills its own process with SIGKILL (tests of crash recovery)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL the process once ``global_step`` reaches ``step`` (no clean-up, like a cluster pre-emption)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
