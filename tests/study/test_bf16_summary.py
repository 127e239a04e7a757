"""The bf16-quality study's paired summary: differences by seed and the fixed within-noise verdict."""

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "experiments" / "bf16_quality" / "summarise.py"
spec = importlib.util.spec_from_file_location("bf16_summarise", PATH)
summarise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarise)


def rows(fid_fp32, fid_bf16, nfe=10):
    out = [{"model": "fm", "sampler": f"fp32_s{s}", "nfe": nfe, "fid": v} for s, v in enumerate(fid_fp32)]
    out += [{"model": "fm", "sampler": f"bf16_s{s}", "nfe": nfe, "fid": v} for s, v in enumerate(fid_bf16)]
    return out + [{"model": "real", "sampler": None, "nfe": None, "fid": None}]


def test_paired_difference_and_verdict():
    (row,) = summarise.paired(rows([10.0, 12.0, 14.0], [10.5, 12.5, 14.5]), "fid")
    assert row["fp32"] == (12.0, 2.0) and row["diff"] == (0.5, 0.5) and row["within_noise"]
    (row,) = summarise.paired(rows([10.0, 10.2, 10.4], [13.0, 11.0, 14.0]), "fid")
    assert row["diff"][0] == pytest.approx(2.4667, abs=1e-3) and row["diff"][1] == pytest.approx(3.6)
    assert not row["within_noise"]  # the seeds spread by 0.2


def test_summary_file_is_written_and_a_missing_result_is_one_line(tmp_path):
    machine = {"date": "2026-11-29T00:00:00", "cpu": "cpu", "torch": "2", "commit": "abc"}
    (tmp_path / "results.json").write_text(json.dumps({"machine": machine, "rows": rows([1, 2], [1, 2], 4)}))
    summarise.main([str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert "## fid" in text and "| 4 | 2 | 1.500 ± 0.7071 | 1.500 ± 0.7071 | +0 | +0 | yes |" in text
    with pytest.raises(SystemExit, match="absent/results.json: cannot read"):
        summarise.main([str(tmp_path / "absent")])
