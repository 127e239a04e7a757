"""The benchmark's wavelet cases (the network evaluated on Haar coefficients, sampling decoded to images) and
its 3D memory tables (overrides, precisions, a stand-in spec for file-backed data, rows kept as measured)."""

import json

import pytest
from test_bench import TINY_MODEL, fake_memory, run_bench

import motfm.bench.main as bench_main
from motfm.bench.candidates import Candidate
from motfm.validate import ConfigError


@pytest.mark.slow  # a whole bench run (FLOPs, timings, sampling): ~8 s
def test_a_haar_case_evaluates_the_network_on_coefficients(tmp_path, monkeypatch):
    jobs = fake_memory(monkeypatch)
    haar = json.dumps(["model.conditioning=[class,mask]", *TINY_MODEL, "representation=haar"])
    case = "{name: haar, model: unet2d_small, data: echo_phantom, size: 16, batch_size: 2, overrides: %s}"
    case = f"cases=[{case % haar}]"
    data, md = run_bench(tmp_path, case, "precisions=[fp32]", "nfe=[1]", "profile_top=0")
    (result,) = data["results"]
    ours = result["candidates"]["motfm"]
    assert ours["notes"] == ["flow on haar coefficients"]
    assert ours["eval_flops"] > 0 and ours["train_step_s"] > 0 and ours["sampling"][0]["seconds"] > 0
    assert jobs[0]["config"]["representation"]["_target_"].endswith("HaarRepresentation")
    assert "| haar | fp32 |" in md


TINY_3D = [*TINY_MODEL[:2], "model.head_dim=[8,16]", "model.norm_groups=4"]


def table(data: str, size: str, overrides: list[str], extra: str = "") -> str:
    """A ``memory3d`` table as a Hydra override value."""
    quoted = ", ".join(f"'{o}'" for o in overrides)
    return f"{{models: [unet3d], data: {data}, sizes: [{size}], batch_size: 1, overrides: [{quoted}]{extra}}}"


def full_resolution_table(image_size: str = "[16,16,16]") -> str:
    overrides = ["representation=haar", "data.dataset.image_size=[16,16,16]", *TINY_3D]
    spec = f", spec: {{channels: 4, image_size: {image_size}}}, precisions: [fp32, bf16]"
    return table("msd_brain_full", "null", overrides, spec)


def test_full_resolution_msd_memory_rows_need_no_files(tmp_path, monkeypatch):
    """The full-resolution MSD memory table (bench=wavelet, bench=gpu) composes data=msd_brain_full with its
    spec given, without a Decathlon tree; each row is one fresh-process job of the Haar model, checkpointing
    off and on (no voxel reference; no bf16 where it is not native), and the job really trains (run here
    in-process at a tiny size)."""
    from motfm.bench.memory import run_job

    monkeypatch.setattr(bench_main, "reference_missing", lambda: None)
    monkeypatch.setattr(bench_main, "native_bf16", lambda device: False)
    jobs = fake_memory(monkeypatch)
    data, md = run_bench(tmp_path, "cases=[]", "reference=true", f"memory3d=[{full_resolution_table()}]")
    assert [(r["checkpointing"], r["precision"], r["side"]) for r in data["memory3d"]] == [
        (False, "fp32", "motfm"),
        (True, "fp32", "motfm"),
    ]
    assert [j["config"]["model"]["activation_checkpointing"] for j in jobs] == [False, True]
    job = jobs[0]
    assert job["spec"]["channels"] == 4 and job["spec"]["image_size"] == [16, 16, 16]
    assert job["config"]["data"]["dataset"]["resize"] is False  # msd_brain_full, native spacing
    assert job["config"]["representation"]["_target_"].endswith("HaarRepresentation")
    assert "| unet3d | 4×16×16×16, Haar 1 level | fp32 | 2 | 2 |" in md
    result = run_job(job)
    assert result["params"] > 0 and result["step_s"] > 0 and result["peak_MiB"] > 0


def test_a_stand_in_spec_that_disagrees_with_the_data_fails_before_any_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_main, "bench_case", lambda *a: pytest.fail("a case was timed"))
    bad = full_resolution_table(image_size="[16,16,32]")
    with pytest.raises(ConfigError, match=r"memory3d spec image_size \[16, 16, 32\] != data \[16, 16, 16\]"):
        run_bench(tmp_path, "precisions=[fp32]", f"memory3d=[{bad}]")


def test_a_single_memory_table_measures_each_wanted_precision_and_the_reference_on_voxels(
    tmp_path, monkeypatch
):
    """``memory3d`` as one table (``make bench``'s form): bf16 rows where bf16 is native and the run asks for
    it, the reference beside the suite's model on voxels."""
    monkeypatch.setattr(bench_main, "reference_missing", lambda: None)
    monkeypatch.setattr(bench_main, "native_bf16", lambda device: True)
    fake_memory(monkeypatch)
    voxels = table("brain_phantom", "16", TINY_3D, ", precisions: [fp32, bf16]")
    data, md = run_bench(tmp_path, "cases=[]", "reference=true", f"memory3d={voxels}")
    cells = [(r["precision"], r["side"], r["checkpointing"]) for r in data["memory3d"]]
    sides = [("motfm", False), ("motfm", True), ("reference", False)]
    assert cells == [(p, side, ckpt) for p in ("fp32", "bf16") for side, ckpt in sides]
    assert "| unet3d | 16×16×16 | bf16 | 2 | 2 | 2 |" in md
    data, _ = run_bench(tmp_path / "fp32", "cases=[]", "precisions=[fp32]", f"memory3d={voxels}")
    assert {r["precision"] for r in data["memory3d"]} == {"fp32"}  # the run's precisions bound the table's


def test_haar_cases_are_timed_without_the_voxel_reference(tmp_path, monkeypatch):
    """The reference runs on voxels: beside a voxel case it is built, beside a Haar case it is not."""
    monkeypatch.setattr(bench_main, "reference_missing", lambda: None)
    built = []

    def stand_in_reference(model, spec, batch, device, precision):
        built.append(spec.image_size)  # the suite's tiny model stands in for MONAI's
        return Candidate("reference", 1, lambda: None, lambda nfe: None, lambda: None)

    monkeypatch.setattr(bench_main, "build_reference", stand_in_reference)
    fake_memory(monkeypatch)
    case = "{name: NAME, model: unet2d_small, data: echo_phantom, size: 16, batch_size: 2, overrides: %s}"
    haar = case.replace("NAME", "haar") % json.dumps([*TINY_MODEL, "representation=haar"])
    voxels = case.replace("NAME", "voxels") % json.dumps(TINY_MODEL)
    args = ["reference=true", "precisions=[fp32]", "nfe=[1]", "profile_top=0", "repeats=1"]
    data, _ = run_bench(tmp_path, f"cases=[{haar},{voxels}]", *args)
    assert [set(r["candidates"]) for r in data["results"]] == [{"motfm"}, {"motfm", "reference"}]
    assert built == [(16, 16)]


def test_a_memory_run_cut_short_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """Full-resolution rows take minutes each: a time limit (the GPU check's) must not lose finished ones."""
    calls = []

    def measure(job, timeout):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run stops mid-table (a time limit, Ctrl-C)
        return {"peak_MiB": 5.0, "model_MiB": 1.0, "step_s": 0.1, "params": 1}

    monkeypatch.setattr(bench_main, "measure_memory", measure)
    voxels = table("brain_phantom", "16", TINY_3D)
    with pytest.raises(KeyboardInterrupt):
        run_bench(tmp_path, "cases=[]", "precisions=[fp32]", f"memory3d=[{voxels}]")
    (written,) = tmp_path.glob("*.json")
    rows = json.loads(written.read_text())["memory3d"]
    assert [(r["volume"], r["checkpointing"], r["peak_MiB"]) for r in rows] == [("16×16×16", False, 5.0)]
