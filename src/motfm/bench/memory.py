"""Peak training memory, measured in a fresh process per measurement.

On the CPU a process's peak resident memory (``VmHWM`` in ``/proc/self/status``) only grows, and
``ru_maxrss`` even survives ``exec``; so every measurement runs in its own new interpreter
(``python -m motfm.bench.memory JOB``), which builds the model, runs training steps and reports ``VmHWM`` at
its end. Both sides import the same modules first (the suite, and the reference's packages where installed),
so that the interpreter's own share of the peak is the same for both. On CUDA it reports
``torch.cuda.max_memory_allocated`` over the steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from motfm.bench.candidates import random_batch
from motfm.bench.ours import build_ours
from motfm.bench.reference import build_reference, reference_missing
from motfm.data.base import DataSpec

MIB = 2**20


def proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmHWM``, ``VmRSS``), or ``None`` where there is no procfs."""
    path = Path("/proc/self/status")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate and run ``job["steps"]`` training steps; its peak memory and step time.

    Args:
        job: ``side`` (``motfm`` or ``reference``), ``config`` (a resolved training config), ``spec`` (a
            :class:`DataSpec` dict), ``batch_size``, ``device``, ``precision``, ``steps``.

    Returns:
        ``peak_MiB`` (CPU: the process's ``VmHWM``; CUDA: max allocated), ``model_MiB`` (after building,
        before the first step), ``step_s`` (the fastest step after the first, which sets up kernels and the
        optimiser state) and ``params``.
    """
    if reference_missing() is None:  # the same imports on both sides
        import flow_matching.solver  # noqa: F401
        import generative.networks.nets  # noqa: F401
    device = torch.device(job["device"])
    spec = DataSpec.from_dict(job["spec"])
    batch = random_batch(spec, job["batch_size"], device)
    if job["side"] == "reference":
        cand = build_reference(job["config"]["model"], spec, batch, device, job["precision"])
    else:
        cand = build_ours(OmegaConf.create(job["config"]), spec, batch, device, job["precision"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        model_mib = torch.cuda.memory_allocated(device) / MIB
    else:
        model_mib = (proc_status_kib("VmRSS") or 0) / 1024
    times = []
    for _ in range(job["steps"]):
        t0 = time.perf_counter()
        cand.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / MIB
    else:
        peak_mib = (proc_status_kib("VmHWM") or 0) / 1024
    step_s = min(times[1:] or times)
    return {"peak_MiB": peak_mib, "model_MiB": model_mib, "step_s": step_s, "params": cand.params}


def measure_in_fresh_process(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run :func:`run_job` in a new interpreter and return its result (or ``{"error": ...}``)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "motfm.bench.memory", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": f"exit code {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def measure_memory(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Peak training memory of a job: in this process on CUDA (``max_memory_allocated`` after a reset is exact
    there), in a fresh process on the CPU (``VmHWM`` only counts from a process's start)."""
    if not str(job["device"]).startswith("cuda"):
        return measure_in_fresh_process(job, timeout_s)
    try:
        result = run_job(job)
    except torch.cuda.OutOfMemoryError as err:
        result = {"error": f"out of memory: {str(err).splitlines()[0]}"}
    torch.cuda.empty_cache()
    return result


def main() -> None:
    """``python -m motfm.bench.memory JOB_JSON``: print the result of :func:`run_job` as one JSON line."""
    print(json.dumps(run_job(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
