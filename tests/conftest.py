"""Shared test set-up: offline, deterministic, CPU-only."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# precision=auto resolves as on a CPU without native bf16 (fp32), whatever CPU runs the tests; the bf16 paths
# are run by tests that force them (tests/precision). MOTFM_CPU_BF16=amx: the suite as AMX machines choose.
os.environ.setdefault("MOTFM_CPU_BF16", "none")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
