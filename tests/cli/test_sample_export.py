"""``motfm.sample export=...``: streamed dataset exports, resume, and sampling shared among processes."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cli_helpers import compose_config
from motfm.distributed import DistInfo
from motfm.sample import _sample, sample
from tiny_ckpt import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["steps=2", "num_samples=5", "batch_size=2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def config(ckpt, out_dir, *overrides):
    return compose_config("sample", [f"ckpt_path={ckpt}", f"out_dir={out_dir}", *overrides], out_dir)


def run_sample(ckpt, out_dir, *overrides):
    return sample(config(ckpt, out_dir, *overrides))


@pytest.fixture(scope="module")
def plain(ckpt, tmp_path_factory):
    """The reference: the same samples written the usual way (samples.npz)."""
    out = tmp_path_factory.mktemp("plain")
    run_sample(ckpt, out, *ARGS)
    return np.load(out / "samples.npz")


def nnunet_case(folder: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(folder / "imagesTr" / f"sample_{i:05d}_0000.nii.gz").get_fdata(dtype=np.float32)
    label = nib.load(folder / "labelsTr" / f"sample_{i:05d}.nii.gz")
    assert label.get_data_dtype() == np.uint8
    return image[..., 0].T, np.asarray(label.dataobj)[..., 0].T


def test_nnunet_export_streams_the_samples_of_a_plain_run(ckpt, plain, tmp_path):
    info = run_sample(ckpt, tmp_path, *ARGS, "export=nnunet", "dataset_id=12", "dataset_name=Echo")
    folder = tmp_path / "Dataset012_Echo"
    assert info["export"] == {"format": "nnunet", "folder": str(folder)} and info["nfe"] == 2
    for i in range(5):
        image, label = nnunet_case(folder, i)
        np.testing.assert_array_equal(image, plain["images"][i, 0])  # bit for bit
        np.testing.assert_array_equal(label, plain["masks"][i, 0])
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 5 and meta["labels"]["background"] == 0
    assert list(meta["motfm"]["class_labels"].values()) == plain["labels"].tolist()
    assert not (tmp_path / "samples.npz").exists() and (tmp_path / "grid.png").exists()


def test_interrupted_export_resumes_where_it_stopped(ckpt, plain, tmp_path, monkeypatch):
    import motfm.sample as sample_mod

    real, calls = sample_mod.generate_batch, {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_mod, "generate_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_sample(ckpt, tmp_path, *ARGS, "export=nnunet")
    folder = tmp_path / "Dataset500_MotfmEchoPhantom"
    assert not (folder / "dataset.json").exists() and len(list((folder / "imagesTr").iterdir())) == 2
    monkeypatch.setattr(sample_mod, "generate_batch", real)
    assert run_sample(ckpt, tmp_path, *ARGS, "export=nnunet")["generated_now"] == 3  # batches [2, 3] and [4]
    again = run_sample(ckpt, tmp_path, *ARGS, "export=nnunet")
    assert again["generated_now"] == 0 and again["nfe"] == 2
    for i in range(5):
        np.testing.assert_array_equal(nnunet_case(folder, i)[0], plain["images"][i, 0])


def test_ranks_share_the_batches_and_rank0_merges(ckpt, plain, tmp_path):
    """Two ranks simulated in turn (no process group: barriers are no-ops): rank 1 writes its shards (or
    export files), rank 0 writes its own and merges; the result equals the single-process run."""
    for kind in (None, "png"):
        out = tmp_path / str(kind)
        extra = [] if kind is None else [f"export={kind}", f"export_root={tmp_path / 'pngs'}"]
        for rank in (1, 0):
            _sample(config(ckpt, out, *ARGS, *extra), DistInfo(rank, 2, rank))
    assert np.load(tmp_path / "None" / "samples.npz")["images"].tobytes() == plain["images"].tobytes()
    folder = tmp_path / "pngs" / "MotfmEchoPhantom"
    rows = list(csv.DictReader((folder / "index.csv").open()))
    assert [int(r["label"]) for r in rows] == plain["labels"].tolist() and len(rows) == 5
    pixels = np.stack([np.asarray(Image.open(folder / r["image"])) for r in rows])
    np.testing.assert_allclose(pixels / 127.5 - 1, plain["images"][:, 0], atol=1 / 127.5)
    shards = sorted(p.name for p in (tmp_path / "None" / "parts").glob("part_*.pt"))
    assert shards == ["part_000000.pt", "part_000002.pt", "part_000004.pt"]


def _launch(args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [*args, f"hydra.run.dir={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(ckpt, tmp_path):
    """Real ``torchrun --nproc_per_node=2`` (gloo on the CPU) against one process with the same seed.

    Both use one intra-op thread per process (torchrun's default): on the CPU the thread count can change the
    last bits of a convolution, so only like is compared with like."""
    common = ["-m", "motfm.sample", f"ckpt_path={ckpt}", "steps=2", "num_samples=7", "batch_size=2", "seed=3"]
    _launch([sys.executable, *common], tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _launch([*torchrun, *common], tmp_path / "two")
    one, two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    for key in ("images", "indices", "labels", "masks"):
        assert one[key].dtype == two[key].dtype and one[key].tobytes() == two[key].tobytes(), key
    info = json.loads((tmp_path / "two" / "sampling.json").read_text())
    assert info["world_size"] == 2 and info["generated_now"] == 7
