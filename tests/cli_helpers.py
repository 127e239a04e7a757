"""Compose the real Hydra configs for in-process runs of the entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

TINY_2D = [
    "model=unet2d_small",
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=8",
    "model.norm_groups=4",
    "model.class_dim=16",
    "data.dataset.size=32",
    "data.dataset.num_samples={train:16,val:4,test:4}",
    "data.batch_size=4",
    "logger=csv",
    "trainer=cpu",
]
TINY_3D = [
    "model=unet3d",
    "data=brain_phantom",
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=8",
    "model.norm_groups=4",
    "model.class_dim=16",
    "data.dataset.size=16",
    "data.dataset.num_samples={train:8,val:2,test:2}",
    "data.batch_size=2",
    "logger=csv",
    "trainer=cpu",
]
# ``python -m motfm.evaluate`` at the smallest sizes that still compute every metric (a random-weight
# extractor, 4 samples, few KID subsets and MS-SSIM pairs); the phantom classifier's size is each test's own.
FAST_EVAL = ["extractor=random_conv", "num_samples=4", "batch_size=4", "kid_subsets=5", "ms_ssim_pairs=5"]


def compose_config(name: str, overrides: list[str], out_dir: Path, with_hydra: bool = False) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the CLI would, with the run folder at ``out_dir`` (and the ``hydra``
    node, for tests of launchers and sweepers, when ``with_hydra``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = [*overrides, f"paths.output_dir={out_dir}"]
        return compose(name, overrides=overrides, return_hydra_config=with_hydra)


def run_cli(module: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in a subprocess that imports this checkout and the tests' helpers."""
    tests = str(Path(__file__).resolve().parent)
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, tests, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
