"""Fill the preprocessing cache of a dataset ahead of training (all splits; a progress bar on a terminal).

Takes the same overrides as ``python -m motfm.train``::

    python scripts/prepare_data.py data=msd_brain data.dataset.root=/data/Task01_BrainTumour
    python scripts/prepare_data.py data=camus data.dataset.root=/data/CAMUS data.dataset.image_size=128

Training with the same data options then reuses the cache without opening a source file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from motfm.data.splits import SPLITS

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the cache entry of every split; print one line per split.

    Args:
        argv: Hydra overrides (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success).
    """
    overrides = sys.argv[1:] if argv is None else argv
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    factory = instantiate(cfg.data.dataset)
    for split in SPLITS:
        ds = factory(split=split)
        state = "reused" if getattr(ds, "cache_hit", False) else "built"
        where = getattr(ds, "cache_path", None) or "memory"
        print(f"{split}: {len(ds)} samples, {ds.spec.image_size}, cache {state} at {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
