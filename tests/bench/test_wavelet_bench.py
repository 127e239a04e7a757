"""The benchmark's wavelet cases: the network evaluated on Haar coefficients, sampling decoded to images."""

import json

import pytest
from test_bench import TINY_MODEL, fake_memory, run_bench

import motfm.bench.main as bench_main


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


TINY_3D = [
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=[8,16]",
    "model.norm_groups=4",
]


def test_full_resolution_msd_memory_rows_need_no_files(tmp_path, monkeypatch):
    """The full-resolution MSD memory table (bench=wavelet, bench=gpu) composes data=msd_brain_full with its
    spec given, without a Decathlon tree; each row is one fresh-process job of the Haar model, checkpointing
    off and on, and the job really trains (run here in-process at a tiny size)."""
    from motfm.bench.memory import run_job

    jobs = fake_memory(monkeypatch)
    overrides = ", ".join(f"'{o}'" for o in ["representation=haar", *TINY_3D])
    table = (
        "{models: [unet3d], data: msd_brain_full, sizes: [null], batch_size: 1, overrides: [OVERRIDES], "
        "spec: {channels: 4, image_size: [16, 16, 16]}, precisions: [fp32]}"
    ).replace("OVERRIDES", overrides)
    data, md = run_bench(tmp_path, "cases=[]", "precisions=[fp32]", f"memory3d=[{table}]")
    assert [(r["checkpointing"], r["precision"], r["side"]) for r in data["memory3d"]] == [
        (False, "fp32", "motfm"),
        (True, "fp32", "motfm"),
    ]
    assert [j["config"]["model"]["activation_checkpointing"] for j in jobs] == [False, True]
    job = jobs[0]
    assert job["spec"]["channels"] == 4 and job["spec"]["image_size"] == [16, 16, 16]
    assert job["config"]["data"]["dataset"]["resize"] is False  # msd_brain_full, native spacing
    assert job["config"]["representation"]["_target_"].endswith("HaarRepresentation")
    label = "4×16×16×16, Haar 1 level"
    assert f"| unet3d | {label} | fp32 | 2 | 2 |" in md
    result = run_job(job)
    assert result["params"] > 0 and result["step_s"] > 0 and result["peak_MiB"] > 0


def test_haar_cases_are_timed_without_the_voxel_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_main, "reference_missing", lambda: None)
    monkeypatch.setattr(
        bench_main, "build_reference", lambda *a: pytest.fail("reference built for a Haar case")
    )
    fake_memory(monkeypatch)
    haar = json.dumps([*TINY_MODEL, "representation=haar"])
    case = "{name: haar, model: unet2d_small, data: echo_phantom, size: 16, batch_size: 2, overrides: %s}"
    case = f"cases=[{case % haar}]"
    data, _ = run_bench(tmp_path, case, "reference=true", "precisions=[fp32]", "nfe=[1]", "profile_top=0")
    assert set(data["results"][0]["candidates"]) == {"motfm"}


def test_a_memory_run_cut_short_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """Full-resolution rows take minutes each: a time limit (the GPU check's) must not lose finished ones."""
    calls = []

    def measure(job, timeout):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a time limit's signal does mid-table
        return {"peak_MiB": 5.0, "model_MiB": 1.0, "step_s": 0.1, "params": 1}

    monkeypatch.setattr(bench_main, "measure_memory", measure)
    table = "{models: [unet3d], data: brain_phantom, sizes: [16], batch_size: 1}"
    with pytest.raises(KeyboardInterrupt):
        run_bench(tmp_path, "cases=[]", "precisions=[fp32]", f"memory3d=[{table}]")
    (written,) = tmp_path.glob("*.json")
    rows = json.loads(written.read_text())["memory3d"]
    assert [(r["volume"], r["checkpointing"], r["peak_MiB"]) for r in rows] == [("16×16×16", False, 5.0)]
