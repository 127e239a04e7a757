"""precision=auto for training: resolved before the Trainer is built, by capability (probed where unsure)."""

import logging

import pytest
import torch

import motfm.runtime as runtime
from motfm.runtime import resolve_precision, trainer_precision


@pytest.fixture
def cpu(monkeypatch):
    """Mock the CPU's capabilities: ``cpu(native=..., amx=..., probe=(fp32_s, bf16_s))``."""

    def set_caps(native: bool, amx: bool = False, probe: tuple[float, float] = (1.0, 2.0)) -> None:
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(runtime, "cpu_has_amx", lambda: amx)
        monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda dims: probe)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return set_caps


def test_auto_is_fp32_without_native_bf16(cpu):
    cpu(native=False)
    p = trainer_precision("auto", "auto", 2)
    assert p.name == "32-true" and "no native bf16" in p.reason


def test_auto_is_bf16_with_amx(cpu):
    cpu(native=True, amx=True)
    p = trainer_precision("auto", "cpu", 3)
    assert p.name == "bf16-mixed" and "AMX" in p.reason


@pytest.mark.parametrize(("probe", "expected"), [((2.0, 1.0), "bf16-mixed"), ((1.0, 2.0), "32-true")])
def test_auto_follows_the_probe_where_unsure(cpu, probe, expected):
    cpu(native=True, amx=False, probe=probe)
    p = trainer_precision("auto", "cpu", 2)
    assert p.name == expected and "probe" in p.reason


def test_explicit_bf16_without_native_support_warns_in_one_line(cpu, caplog):
    cpu(native=False)
    with caplog.at_level(logging.WARNING, logger="motfm.runtime"):
        p = trainer_precision("bf16-mixed", "cpu", 2)
    assert p.name == "bf16-mixed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "slower" in warnings[0]


def test_explicit_lightning_values_pass_through(cpu, caplog):
    cpu(native=False)
    with caplog.at_level(logging.WARNING):
        assert trainer_precision("32-true", "cpu").name == "32-true"
        assert trainer_precision("16-mixed", "cpu").name == "16-mixed"
    assert not caplog.records


@pytest.mark.parametrize(
    ("bf16", "capability", "training", "sampling"),
    [
        (True, (9, 0), "bf16-mixed", "bf16"),  # H100 / H200, A100 (8.0)
        (False, (7, 5), "16-mixed", "fp32"),  # T4 (V100: 7.0): fp16 tensor cores, loss scaling
        (False, (6, 1), "32-true", "fp32"),  # P100 / GTX 10x0: no tensor cores
    ],
    ids=["cuda_bf16", "cuda_fp16_tensor_cores", "cuda_old"],
)
def test_cuda_accelerator_resolves_by_cuda_capability(monkeypatch, bf16, capability, training, sampling):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert trainer_precision("auto", "gpu").name == training
    assert resolve_precision("auto", torch.device("cuda")).name == sampling


@pytest.mark.parametrize(
    ("kind", "training"), [("none", "32-true"), ("amx", "bf16-mixed"), ("native", "bf16-mixed")]
)
def test_the_environment_overrides_what_the_cpu_reports(monkeypatch, kind, training):
    monkeypatch.setenv(runtime.CPU_BF16_ENV, kind)
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda dims: (2.0, 1.0))  # bf16 faster in the probe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_precision("auto", "cpu").name == training
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "avx2")
    with pytest.raises(ValueError, match="MOTFM_CPU_BF16='avx2'"):
        trainer_precision("auto", "cpu")


def test_the_suite_runs_as_a_cpu_without_native_bf16():
    """conftest pins auto to fp32 so that no test depends on the CPU that runs it (bf16 paths are forced)."""
    assert trainer_precision("auto", "cpu").name == "32-true"


def test_sampling_auto_matches(cpu):
    cpu(native=False)
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"


@pytest.mark.parametrize(
    ("kind", "native", "amx", "probe", "training"),
    [
        ("avx2_only", False, False, (1.0, 80.0), "32-true"),
        ("avx512_bf16_probe_faster", True, False, (1.31e-3, 0.71e-3), "bf16-mixed"),
        ("avx512_emulated_probe_slower", True, False, (1.0e-3, 3.0e-3), "32-true"),
        ("amx", True, True, (1.0, 80.0), "bf16-mixed"),  # AMX decides without the probe
    ],
)
def test_auto_on_each_kind_of_cpu_from_what_torch_reports(monkeypatch, kind, native, amx, probe, training):
    """The capability probes themselves (not our wrappers) mocked: catches a probe that reads a wrong name."""
    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda dims: probe)
    assert runtime.cpu_has_amx() is amx
    assert trainer_precision("auto", "cpu").name == training
