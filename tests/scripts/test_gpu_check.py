"""scripts/gpu_check.py, the one GPU run a session may get, run on the CPU so that it never fails first."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_part_runs_in_a_smoke_run_on_the_cpu(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu_check.py"),
            "--smoke",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(results) == {"env", "no_sync", "kernels", "precision", "sampling", "train"}, results.keys()
    assert all(v == "no host synchronisation" for v in results["no_sync"].values()), results["no_sync"]
    for precision in ("bf16-mixed", "16-mixed"):
        assert results["precision"][precision]["steps"] == 3, results["precision"]
    assert not any("error" in row for row in results["sampling"].values()), results["sampling"]
    assert not any("error" in row for row in results["train"].values()), results["train"]
