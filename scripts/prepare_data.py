"""Fill the preprocessing cache of a dataset ahead of training and check every sample of every split.

Takes the same overrides as ``python -m motfm.train``::

    python scripts/prepare_data.py data=msd_brain data.dataset.root=/data/Task01_BrainTumour
    python scripts/prepare_data.py data=camus data.dataset.root=/data/CAMUS data.dataset.image_size=128

Every item of the train, val and test splits is read back through the cache and checked against the sample
contract (:func:`motfm.data.base.check_sample`: shape, dtype, finite values in [-1, 1], label and mask
values), so a bad volume in the test split is found now rather than after training. A bad input ends with
one line ``error: <file>: <problem>`` and exit status 2 (``debug=true`` shows the traceback). Training with
the same data options then reuses the cache without opening a source file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from motfm.cli import run_script
from motfm.data.base import check_sample
from motfm.data.splits import SPLITS
from motfm.progress import progress

CONF = Path(__file__).resolve().parents[1] / "conf"


def item_source(ds: object, split: str, index: int, sample: dict) -> str:
    """What to name in an error about item ``index``: its source file (or case id) and position."""
    meta = sample.get("meta") or {}
    where = meta.get("source") or meta.get("id") or getattr(ds, "root", None) or type(ds).__name__
    return f"{where} ({split} item {index})"


def prepare(overrides: list[str]) -> int:
    """Build (or find) the cache entry of every split, check every item; print one line per split."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    factory = instantiate(cfg.data.dataset)
    for split in SPLITS:
        ds = factory(split=split)
        for i in progress(range(len(ds)), desc=f"check [{split}]", unit="item", leave=False):
            sample = ds[i]
            check_sample(sample, ds.spec, item_source(ds, split, i, sample))
        state = "reused" if getattr(ds, "cache_hit", False) else "built"
        where = getattr(ds, "cache_path", None) or "memory"
        print(f"{split}: {len(ds)} samples checked, {ds.spec.image_size}, cache {state} at {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run :func:`prepare`; bad input is reported in one line with exit status 2.

    Args:
        argv: Hydra overrides (default: ``sys.argv[1:]``); ``debug=true`` shows tracebacks.

    Returns:
        The exit status.
    """
    overrides = sys.argv[1:] if argv is None else argv
    return run_script(lambda: prepare(overrides), debug="debug=true" in overrides)


if __name__ == "__main__":
    sys.exit(main())
