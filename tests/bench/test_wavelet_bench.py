"""The benchmark's wavelet cases: the network evaluated on Haar coefficients, sampling decoded to images."""

import json

import pytest
from test_bench import TINY_MODEL, fake_memory, run_bench


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
