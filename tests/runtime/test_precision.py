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


def test_cuda_accelerator_resolves_by_cuda_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert trainer_precision("auto", "gpu").name == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert trainer_precision("auto", "gpu").name == "32-true"


def test_sampling_auto_matches(cpu):
    cpu(native=False)
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
