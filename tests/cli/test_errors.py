"""Every entry point reports bad input as ONE line ``error: <file>: <problem>`` on stderr, exit status 2;
``debug=true`` / ``HYDRA_FULL_ERROR=1`` bring the traceback back. Run as subprocesses, as a person would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.fixtures import write_camus, write_legacy_pickle, write_msd
from motfm.cli import debug_requested, one_line, unwrap

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", **env)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600
    )


def assert_one_line(proc: subprocess.CompletedProcess, file: Path | str, *words: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {file}"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def truncated_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"PK\x03\x04 truncated")
    return path


def hydra_dir(tmp_path: Path) -> str:
    return f"hydra.run.dir={tmp_path / 'run'}"


def test_train_camus_label_value_7(tmp_path: Path) -> None:
    write_camus(tmp_path / "camus", n_patients=3, size=(32, 24))
    bad = sorted((tmp_path / "camus").rglob("*_gt.nii.gz"))
    for path in bad:
        img = nib.load(path)
        labels = np.asarray(img.dataobj).copy()
        labels[0, 0] = 7
        nib.save(nib.Nifti1Image(labels, img.affine), path)
    args = [
        "-m",
        "motfm.train",
        "data=camus",
        f"data.dataset.root={tmp_path / 'camus'}",
        "data.dataset.cache=false",
    ]
    args += [
        "data.dataset.image_size=32",
        "model=unet2d_small",
        "logger=none",
        "trainer=cpu",
        hydra_dir(tmp_path),
    ]
    line = assert_one_line(run(args, tmp_path), tmp_path / "camus", "_gt.nii.gz", "label map values", "7")
    assert Path(line.split()[1].rstrip(":")) in bad


def test_sample_truncated_checkpoint_and_debug(truncated_ckpt: Path, tmp_path: Path) -> None:
    args = ["-m", "motfm.sample", f"ckpt_path={truncated_ckpt}", hydra_dir(tmp_path)]
    assert_one_line(run(args, tmp_path), truncated_ckpt, "cannot be read as a torch checkpoint")
    proc = run([*args, "debug=true"], tmp_path)  # Hydra's own report, with the traceback
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_debug_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert not debug_requested(OmegaConf.create({"debug": False})) and debug_requested({"debug": True})
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert debug_requested(OmegaConf.create({"debug": False})) and debug_requested()


def test_evaluate_truncated_checkpoint(truncated_ckpt: Path, tmp_path: Path) -> None:
    args = ["-m", "motfm.evaluate", f"ckpt_path={truncated_ckpt}", hydra_dir(tmp_path)]
    assert_one_line(run(args, tmp_path), truncated_ckpt, "cannot be read as a torch checkpoint")


def test_export_model_truncated_checkpoint(truncated_ckpt: Path, tmp_path: Path) -> None:
    args = ["-m", "motfm.export_model", f"ckpt_path={truncated_ckpt}", f"out={tmp_path / 'shared'}"]
    assert_one_line(run(args, tmp_path), truncated_ckpt, "cannot be read")
    assert not (tmp_path / "shared").exists()


def test_bench_unknown_model_in_a_case(tmp_path: Path) -> None:
    case = "cases=[{name:tiny,model:nope,data:echo_phantom,size:16,batch_size:1}]"
    args = ["-m", "motfm.bench", case, "memory3d=null", f"out_dir={tmp_path / 'bench'}", hydra_dir(tmp_path)]
    assert_one_line(run(args, tmp_path), "bench case 'tiny'", "model/nope")
    assert not list((tmp_path / "bench").glob("*.json"))


def test_prepare_data_truncated_nifti(tmp_path: Path) -> None:
    root = tmp_path / "Task01_BrainTumour"
    write_msd(root, n_cases=3)
    image = root / "imagesTr" / "BRATS_002.nii.gz"
    image.write_bytes(image.read_bytes()[:300])
    args = [str(ROOT / "scripts" / "prepare_data.py"), "data=msd_brain", f"data.dataset.root={root}"]
    args += ["data.dataset.cache=false", "data.dataset.image_size=[8,8,8]"]
    assert_one_line(run(args, tmp_path), image, "not a readable NIfTI file")


def test_prepare_data_checks_every_item_of_every_split(tmp_path: Path) -> None:
    args = [str(ROOT / "scripts" / "prepare_data.py"), "data.dataset._target_=entry_helpers.NanInTestSplit"]
    assert_one_line(run(args, tmp_path), "test-1 (test item 1)", "image contains NaN")


def test_convert_pickle_missing_file(tmp_path: Path) -> None:
    write_legacy_pickle(tmp_path / "ok.pkl")
    args = [str(ROOT / "scripts" / "convert_pickle.py"), str(tmp_path / "absent.pkl"), str(tmp_path / "out")]
    assert_one_line(run([*args, "--trust-pickle"], tmp_path), tmp_path / "absent.pkl")


def test_unwrap_and_one_line() -> None:
    from hydra.errors import InstantiationException

    from motfm.data.base import DataError

    cause = DataError("/data/x.nii.gz: broken\nsecond line")
    try:
        raise InstantiationException("Error in call to target 'motfm.data.X'") from cause
    except InstantiationException as err:
        assert unwrap(err) is cause
    assert one_line(cause) == "/data/x.nii.gz: broken second line"
    worker = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\nmotfm.data.base.DataError: /data/y.png: bad mask\n'
    )
    assert one_line(worker) == "/data/y.png: bad mask"
    missing = FileNotFoundError(2, "No such file or directory", "/data/z.json")
    assert one_line(missing) == "/data/z.json: No such file or directory"
    assert json.loads(json.dumps(one_line(ValueError("a\tb")))) == "a b"
