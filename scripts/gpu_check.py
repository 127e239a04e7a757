"""The GPU checks and figures of the suite, in one run: ``python scripts/gpu_check.py --out DIR [--quick]``.

Prepared for a bare CUDA machine that has torch and lightning (``scripts/gpu_check.sh`` installs what it
lacks from wheels). Every part's result goes into ``--out/gpu_check.json`` as soon as it finishes, so a run
cut short keeps what it measured. ``--smoke`` runs the same logic on small nets on whatever device is there
(a check of this script on a CPU). The parts:

1. ``env``: GPU, versions, the measured bf16 / TF32 matmul rate (the peak the fractions refer to);
2. ``no_sync``: a forward pass and a full training step (loss, backward, fused AdamW with the device-side
   non-finite skip, EMA) under ``torch.cuda.set_sync_debug_mode("error")``, every conditioning mode;
3. ``kernels``: which SDPA kernel runs in bf16 (profiler kernel names); GroupNorm channels-last vs
   contiguous in 2D and 3D;
4. ``sampling``: per-evaluation time of the paper's networks eager vs CUDA-graph replay, TF32 and bf16, with
   launches per evaluation and GPU-busy fraction from ``torch.profiler``; graph outputs vs eager;
5. ``precision``: what ``precision=auto`` picks on this GPU; the default config (fused AdamW, clipping) trains
   3 steps in ``bf16-mixed`` and in ``16-mixed`` (the path of GPUs without bf16);
6. ``train``: the real Lightning loop (``GenerativeModule``, bf16-mixed, fused AdamW) images/s for
   ``motfm_camus`` and ``motfm_msd``, eager and ``compile=true`` (the first step's time holds the
   compilation).
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from gpu_checks.common import save
from gpu_checks.device import part_env, part_kernels, part_no_sync
from gpu_checks.sampling import part_sampling
from gpu_checks.training import part_precision, part_train

PARTS = ("no_sync", "kernels", "precision", "sampling", "train")


def main() -> None:
    """Run the parts asked for (all by default), each recorded as soon as it ends."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="small nets on whatever device: checks this script"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {PARTS}")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    env = part_env(out, args.smoke)
    peak = env["bf16_matmul_TFLOP_s"]
    for part, fn in (
        ("no_sync", lambda: part_no_sync(out)),
        ("kernels", lambda: part_kernels(out)),
        ("precision", lambda: part_precision(out)),
        ("sampling", lambda: part_sampling(out, args.quick, peak, args.smoke)),
        ("train", lambda: part_train(out, args.quick, args.smoke)),
    ):
        if part in parts:
            t0 = time.perf_counter()
            try:
                fn()
            except Exception:
                save(out, f"{part}_crash", {"trace": traceback.format_exc()[-3000:]})
            print(f"-- {part} took {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
