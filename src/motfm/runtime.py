"""Where and in which precision networks run: the device, and ``precision=auto``.

bf16 autocast is only worth it where the hardware computes bf16 natively: on a CPU without it, oneDNN falls
back to reference kernels that are 80-300x slower than fp32 (measured: one 3D evaluation of ``unet3d``
took 298 s in bf16 against 3.3 s in fp32 on an AVX2-only EPYC), and a CPU with AVX-512 but no AMX may
still run bf16 slower than fp32. So ``auto`` decides by capability, and where the capability leaves it open
(a CPU that reports bf16 support without AMX), by a short probe: one convolution of the model's kind (2D or
3D) timed in both precisions.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """A resolved precision and why it was chosen.

    Attributes:
        name: ``fp32`` or ``bf16`` (bf16 autocast).
        reason: one line saying why (recorded in ``sampling.json`` and the run log).
    """

    name: str
    reason: str

    @property
    def lightning(self) -> str:
        """The Lightning ``Trainer(precision=...)`` value."""
        return "bf16-mixed" if self.name == "bf16" else "32-true"


# Overrides what the CPU reports, for ``auto`` only: ``none`` (no native bf16), ``native`` (native bf16
# without AMX: the probe decides) or ``amx``. For a CPU whose report misleads, and for running the test suite
# as another kind of machine would choose (the tests set ``none``: no test depends on the CPU that runs it).
CPU_BF16_ENV = "MOTFM_CPU_BF16"
CPU_BF16_KINDS = ("none", "native", "amx")


def _cpu_bf16_override() -> str | None:
    kind = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if kind and kind not in CPU_BF16_KINDS:
        raise ValueError(f"{CPU_BF16_ENV}={kind!r}: expected one of {CPU_BF16_KINDS} (or unset)")
    return kind or None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN reports bf16 support on this CPU (AVX512-BF16, AMX, or AVX-512 emulation).

    ``MOTFM_CPU_BF16`` (``none`` / ``native`` / ``amx``) overrides the report.
    """
    override = _cpu_bf16_override()
    if override is not None:
        return override != "none"
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles (bf16 matrix units), where bf16 is always the faster choice.

    ``MOTFM_CPU_BF16`` overrides the report (only ``amx`` means yes).
    """
    override = _cpu_bf16_override()
    if override is not None:
        return override == "amx"
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


@functools.cache
def probe_cpu_bf16(spatial_dims: int, repeats: int = 3) -> tuple[float, float]:
    """Seconds of one 64-channel 3x3 convolution (2D 64x64, or 3D 16^3, batch 2) in fp32 and bf16 autocast.

    Cached per process; takes well under a second on a CPU with native bf16.
    """
    torch.manual_seed(0)
    size = (64, 64) if spatial_dims == 2 else (16, 16, 16)
    x = torch.randn(2, 64, *size)
    w = torch.randn(64, 64, *([3] * spatial_dims))
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    memory = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    x = x.contiguous(memory_format=memory)

    def best(bf16: bool) -> float:
        times = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                conv(x, w, padding=1)
                times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(False), best(True)


def resolve_precision(requested: str, device: torch.device, spatial_dims: int = 2) -> Precision:
    """Resolve ``auto`` (and check ``bf16``) for a device and a model of ``spatial_dims`` dimensions.

    Args:
        requested: ``auto``, ``fp32`` or ``bf16``.
        device: where the network runs.
        spatial_dims: 2 or 3 (the probe convolution's kind).

    Returns:
        The :class:`Precision`. An explicit ``bf16`` where it is not native is kept, with a one-line warning
        that it will be slow.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "fp32":
        return Precision("fp32", "asked for")
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        if requested == "bf16" or native:
            if not native:
                log.warning("precision=bf16 on a GPU without native bf16: expect it to be slow")
            return Precision("bf16", "asked for" if requested == "bf16" else "CUDA device with native bf16")
        return Precision("fp32", "this GPU has no native bf16")
    if device.type != "cpu":
        return Precision(requested if requested == "bf16" else "fp32", f"{device.type} device: not probed")
    native = cpu_has_native_bf16()
    if requested == "bf16":
        if not native:
            log.warning(
                "precision=bf16 on a CPU without native bf16: convolutions fall back to kernels 80-300x "
                "slower than fp32; use precision=auto or fp32"
            )
        return Precision("bf16", "asked for")
    if not native:
        return Precision("fp32", "the CPU has no native bf16 (oneDNN): bf16 would be 80-300x slower")
    if cpu_has_amx():
        return Precision("bf16", "the CPU has AMX bf16 matrix units")
    fp32_s, bf16_s = probe_cpu_bf16(spatial_dims)
    name = "bf16" if bf16_s < fp32_s else "fp32"
    return Precision(
        name,
        f"probe of a {spatial_dims}D convolution: fp32 {fp32_s * 1e3:.2f} ms, bf16 {bf16_s * 1e3:.2f} ms",
    )


def trainer_precision(requested: str | int, accelerator: str, spatial_dims: int = 2) -> Precision:
    """The Lightning ``Trainer(precision=...)`` value for ``trainer.precision`` (Lightning has no ``auto``).

    Args:
        requested: ``auto`` (resolved by :func:`resolve_precision` for the device the accelerator picks;
            on a GPU without bf16, ``16-mixed`` with a loss scaler where it has fp16 tensor cores, compute
            capability 7.0 and up: V100, T4), or any Lightning value, kept as it is (a bf16 one where bf16 is
            not native warns in one line).
        accelerator: ``trainer.accelerator`` (``auto``, ``cpu``, ``gpu``, ``cuda``, ...).
        spatial_dims: 2 or 3 (the probe's kind).

    Returns:
        A :class:`Precision` whose ``name`` is the Lightning value.
    """
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu" if accelerator in ("auto", "cpu") else accelerator)
    if str(requested) == "auto" and cuda and not torch.cuda.is_bf16_supported():
        major, minor = torch.cuda.get_device_capability()
        if major >= 7:
            return Precision(
                "16-mixed",
                f"CUDA device without bf16 (compute capability {major}.{minor}): fp16 tensor cores, "
                "loss scaling",
            )
        return Precision("32-true", f"CUDA device without bf16 or fp16 tensor cores ({major}.{minor})")
    if str(requested) == "auto":
        resolved = resolve_precision("auto", device, spatial_dims)
        return Precision(resolved.lightning, resolved.reason)
    if str(requested).startswith("bf16"):
        resolve_precision("bf16", device, spatial_dims)  # the one-line warning where bf16 is not native
    return Precision(str(requested), "asked for")


def autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision=bf16``; nothing for ``fp32`` (resolve ``auto`` first).

    ``cache=False`` re-casts the weights at every call, as CUDA graph capture requires.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be resolved to 'fp32' or 'bf16', got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
