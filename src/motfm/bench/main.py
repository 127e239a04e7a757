"""Benchmark the suite's networks, optionally against the original MOTFM stack, in one run.

``python -m motfm.bench [bench=cpu|gpu] [reference=true] [device=cuda] [out_dir=DIR]``

For every case of the preset (a model config at an image size and batch size) and every precision (bf16
only where it is native), it times, alternating between the suite's model and, with ``reference=true``, MONAI
Generative's ``DiffusionModelUNet`` + ``ControlNet`` at the same architecture (:mod:`motfm.bench.reference`):
one network evaluation, Euler sampling at each NFE, and a training step; counts their FLOPs; profiles one
evaluation of each (its time by kind of work, and the operators with the most self time:
:mod:`motfm.bench.profile`); and measures peak training memory in a fresh process per measurement
(:mod:`motfm.bench.memory`). 3D memory tables (``memory3d``: peak training memory by model, volume,
representation and precision, with and without activation checkpointing) tell what fits. With
``reference=true`` the ``imported`` entries time models imported from the original MOTFM code against the
original at the released sizes (:mod:`motfm.bench.imported`). Results:
``<out_dir>/<date>-<device>[-reference].json`` and ``.md``; compare
ratios only within one file.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from motfm.bench.candidates import Candidate, random_batch
from motfm.bench.imported import bench_imported
from motfm.bench.memory import measure_memory
from motfm.bench.ours import build_ours
from motfm.bench.profile import profile_evaluation
from motfm.bench.reference import build_reference, reference_missing
from motfm.bench.report import output_stem, to_markdown
from motfm.bench.timing import count_flops, machine_info, peak_flops, timed_alternating
from motfm.cli import readable_errors
from motfm.data_spec import DataSpec
from motfm.io.atomic import atomic_open, write_json
from motfm.runtime import cpu_has_native_bf16, pick_device, resolve_precision
from motfm.validate import ConfigError

log = logging.getLogger(__name__)

# Absolute: ``python -m motfm.bench`` calls this module through ``__main__``, so Hydra would otherwise resolve
# a relative path against the package, not the file.
CONFIG_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively (CUDA with bf16, or a CPU whose oneDNN reports it)."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def case_config(case: DictConfig, out_dir: str, *extra: str) -> DictConfig:
    """The training config of a case, composed as ``python -m motfm.train`` would (nothing is written to
    ``out_dir``: it only stands for the run folder that a training run would have)."""
    # A phantom case sets the size and makes few samples; a case without ``size`` keeps the data config's
    # own (files-backed data such as ``msd_brain_full``, measured from a ``spec`` without reading them).
    sized = (
        []
        if case.get("size") is None
        else [
            f"data.dataset.size={case.size}",
            "data.dataset.num_samples={train:2,val:1,test:1}",
        ]
    )
    overrides = [
        f"paths.output_dir={out_dir}",
        f"model={case.model}",
        f"data={case.data}",
        *sized,
        "logger=none",
        *case.get("overrides", []),
        *extra,
    ]
    try:
        return hydra.compose(config_name="train", overrides=overrides)
    except HydraException as err:  # an unknown model/data group or key in the case: the case is the input
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"bench case {case.get('name', case.model)!r}: {first}") from err


def memory_job(
    side: str,
    train_cfg: DictConfig,
    spec: DataSpec,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, Any]:
    """A job for :func:`motfm.bench.memory.run_job`: two training steps of one candidate."""
    return {
        "side": side,
        "config": OmegaConf.to_container(train_cfg, resolve=True),
        "spec": spec.to_dict(),
        "batch_size": batch_size,
        "device": str(device),
        "precision": precision,
        "steps": 2,
    }


def bench_case(
    cfg: DictConfig, case: DictConfig, precision: str, device: torch.device, reference: bool
) -> dict[str, Any]:
    """Time, count and (fp32) measure the memory of one case at one precision, alternating the candidates."""
    train_cfg = case_config(case, cfg.out_dir)
    spec = instantiate(train_cfg.data).spec
    batch = random_batch(spec, case.batch_size, device)
    cands: list[Candidate] = [build_ours(train_cfg, spec, batch, device, precision)]
    reference = reference and on_voxels(train_cfg)  # the reference runs on voxels: a Haar case is timed alone
    if reference:
        model = OmegaConf.to_container(train_cfg.model, resolve=True)
        cands.append(build_reference(model, spec, batch, device, precision))
    log.info("case %s (%s): counting FLOPs", case.name, precision)
    out: dict[str, Any] = {
        "case": case.name,
        "model": case.model,
        "precision": precision,
        "image_size": list(spec.image_size),
        "batch_size": case.batch_size,
        "candidates": {
            c.name: {
                "params": c.params,
                "notes": c.notes,
                "eval_flops": count_flops(c.forward),
                "train_flops": count_flops(c.train_step),
            }
            for c in cands
        },
    }
    log.info("case %s (%s): one evaluation", case.name, precision)
    times = timed_alternating({c.name: c.forward for c in cands}, cfg.repeats, cfg.warmup, device)
    for name, s in times.items():
        out["candidates"][name]["eval_s"] = s
    if cfg.profile_top > 0:
        log.info("case %s (%s): profiling one evaluation", case.name, precision)
        for c in cands:
            prof = profile_evaluation(c.forward, device, cfg.profile_top)
            out["candidates"][c.name]["eval_profile"] = prof["operators"]
            out["candidates"][c.name]["eval_profile_kinds"] = prof["kinds"]
    log.info("case %s (%s): training step", case.name, precision)
    times = timed_alternating({c.name: c.train_step for c in cands}, cfg.repeats, cfg.warmup, device)
    for name, s in times.items():
        out["candidates"][name]["train_step_s"] = s
    for nfe in cfg.nfe:
        log.info("case %s (%s): sampling at NFE %d", case.name, precision, nfe)
        fns = {c.name: functools.partial(c.sample, nfe) for c in cands}
        times = timed_alternating(fns, cfg.sample_repeats, 0, device)
        for name, s in times.items():
            out["candidates"][name].setdefault("sampling", []).append(
                {"nfe": nfe, "seconds": s, "images_per_s": case.batch_size / s}
            )
    del cands, batch
    if precision == "fp32":
        for side in ["motfm", "reference"] if reference else ["motfm"]:
            log.info("case %s: peak training memory of %s (fresh process)", case.name, side)
            job = memory_job(side, train_cfg, spec, case.batch_size, device)
            out["candidates"][side]["train_memory"] = measure_memory(job, cfg.memory_timeout_s)
    return out


def memory_tables(cfg: DictConfig) -> list[DictConfig]:
    """The ``memory3d`` tables of a bench config: one table, a list of them, or none (``null``)."""
    tables = cfg.get("memory3d") or []
    return [tables] if isinstance(tables, DictConfig) else list(tables)


def memory_table_cell(
    cfg: DictConfig, table: DictConfig, model: str, size: int | None, *extra: str
) -> DictConfig:
    """The training config of one cell of a ``memory3d`` table (see :func:`memory_table`)."""
    case = {"name": f"memory3d {model}", "model": model, "data": table.data, "size": size}
    return case_config(
        OmegaConf.create({**case, "overrides": list(table.get("overrides", []))}), cfg.out_dir, *extra
    )


def memory_spec(table: DictConfig, train_cfg: DictConfig) -> DataSpec:
    """The data description of a table's cell: its stand-in ``spec`` (checked against the data config's
    ``image_size`` and ``modalities`` where it has them), else the data's own (which reads the data)."""
    given = table.get("spec")
    if not given:
        return instantiate(train_cfg.data).spec
    spec = DataSpec(3, **OmegaConf.to_container(given))
    dataset = train_cfg.data.dataset
    if "image_size" in dataset and tuple(dataset.image_size) != spec.image_size:
        raise ConfigError(
            f"memory3d spec image_size {list(spec.image_size)} != data {list(dataset.image_size)}"
        )
    if "modalities" in dataset and len(dataset.modalities) != spec.channels:
        raise ConfigError(
            f"memory3d spec channels {spec.channels} != {len(dataset.modalities)} data modalities"
        )
    return spec


def check_memory_tables(cfg: DictConfig, precisions: list[str]) -> None:
    """Compose the first cell of every table and check its precisions: a bad table fails in one line before
    the cases are timed, not after."""
    for table in memory_tables(cfg):
        unknown = set(table.get("precisions", ["fp32"])) - {"fp32", "bf16"}
        if unknown:
            raise ConfigError(f"memory3d precisions must be fp32 or bf16, got {sorted(unknown)}")
        memory_spec(table, memory_table_cell(cfg, table, table.models[0], table.sizes[0]))


def memory_table(
    cfg: DictConfig, device: torch.device, reference: bool, precisions: list[str]
) -> Iterator[dict[str, Any]]:
    """Peak training memory (one fresh process each) of 3D models by volume, precision and checkpointing:
    the rows one by one, as they are measured.

    ``memory3d``: one table or a list of tables, each with ``models``, ``data``, ``sizes`` (phantom sides;
    ``[null]`` keeps the data config's size), ``batch_size``, optional ``overrides`` (e.g.
    ``[representation=haar]``), ``precisions`` (default ``[fp32]``; only those of the run's ``precisions``
    that run here) and ``spec`` (a :class:`DataSpec` dict without ``spatial_dims``, standing in for data
    read from files, e.g. ``msd_brain_full``, so that no dataset is needed to measure it). The reference is
    measured only with ``reference=true`` and on voxels.
    """
    for table in memory_tables(cfg):
        wanted = [p for p in table.get("precisions", ["fp32"]) if p in precisions]
        overrides = list(table.get("overrides", []))
        for model, size, precision in itertools.product(table.models, table.sizes, wanted):
            for side, ckpt in [("motfm", False), ("motfm", True), ("reference", False)]:
                checkpointing = f"model.activation_checkpointing={str(ckpt).lower()}"
                train_cfg = memory_table_cell(cfg, table, model, size, checkpointing)
                if side == "reference" and not (reference and on_voxels(train_cfg)):
                    continue
                spec = memory_spec(table, train_cfg)
                label = volume_label(spec, train_cfg)
                log.info("memory: %s %s %s %s checkpointing=%s", model, label, precision, side, ckpt)
                job = memory_job(side, train_cfg, spec, table.batch_size, device, precision)
                cell = {"model": model, "size": size, "volume": label, "overrides": overrides}
                result = measure_memory(job, cfg.memory_timeout_s)
                yield {**cell, "precision": precision, "side": side, "checkpointing": ckpt, **result}


def on_voxels(train_cfg: DictConfig) -> bool:
    """Whether a composed training config's flow runs on the pixels (voxels) themselves."""
    return train_cfg.representation._target_.endswith("PixelRepresentation")


def volume_label(spec: DataSpec, train_cfg: DictConfig) -> str:
    """``[C×]D×H×W`` of the data, with the representation when it is not the voxels (``, Haar 1 level``)."""
    volume = "×".join(str(s) for s in spec.image_size)
    label = f"{spec.channels}×{volume}" if spec.channels > 1 else volume
    if not on_voxels(train_cfg):
        levels = train_cfg.representation.levels
        label += f", Haar {levels} level{'s' if levels > 1 else ''}"
    return label


def run(cfg: DictConfig) -> Path:
    """Run the benchmark of a composed ``bench`` config (Hydra initialised) and write the results files.

    Returns:
        The results' path without suffix (``.json`` and ``.md`` exist beside it).
    """
    device = pick_device(cfg.device)
    torch.manual_seed(0)
    for case in cfg.cases:  # a bad case fails now, in one line, not after minutes of peak probes
        case_config(case, cfg.out_dir)
    info = machine_info(device)
    reference = bool(cfg.reference)
    if reference:
        missing = reference_missing()
        if missing:
            log.warning("reference=true: the reference stack is skipped: %s; measuring motfm alone", missing)
            info["reference_skipped"] = missing
            reference = False
    info["reference"] = reference
    native = native_bf16(device)
    n = cfg.peak_matmul_size
    probes = {"fp32": peak_flops(device, torch.float32, n, cfg.peak_warmup_s, cfg.peak_measure_s)}
    if native:
        probes["bf16"] = peak_flops(device, torch.bfloat16, n, cfg.peak_warmup_s, cfg.peak_measure_s)
    info["peak_probes"] = probes
    info["peak_flops"] = {dtype: p["peak"] for dtype, p in probes.items()}
    auto = {dims: resolve_precision("auto", device, dims) for dims in (2, 3)}
    info["precision_auto"] = {f"{d}d": {"name": p.name, "reason": p.reason} for d, p in auto.items()}
    precisions = []
    for p in cfg.precisions:
        if p == "bf16" and not native:
            reason = "bf16 is not native here (it would fall back to kernels 80-300x slower): skipped"
            log.warning("precision bf16: %s", reason)
            info["bf16_skipped"] = reason
        else:
            precisions.append(p)
    check_memory_tables(cfg, precisions)
    stem = output_stem(cfg.out_dir, info, device, reference)

    imported: list[dict[str, Any]] = []

    def write(results: list[dict[str, Any]], memory: list[dict[str, Any]]) -> str:
        data = {"machine": info, "results": results, "memory3d": memory, "imported": imported}
        write_json(stem.with_suffix(".json"), data)
        markdown = to_markdown(info, results, memory, imported)
        with atomic_open(stem.with_suffix(".md")) as f:
            f.write(markdown)
        return markdown

    results: list[dict[str, Any]] = []
    for case in cfg.cases:
        for p in precisions:
            results.append(bench_case(cfg, case, p, device, reference))
            write(results, [])  # a run cut short keeps the cases it measured
    for entry in (cfg.get("imported") or {}).get("cases") or [] if reference else []:
        for p in precisions:
            imported.append(bench_imported(cfg, entry, p, device))
            write(results, [])
    memory: list[dict[str, Any]] = []
    markdown = write(results, memory)
    for row in memory_table(cfg, device, reference, precisions):
        memory.append(row)
        markdown = write(results, memory)  # a run cut short keeps the rows it measured
    print(markdown)
    log.info("results: %s.{json,md}", stem)
    return stem


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
@readable_errors
def main(cfg: DictConfig) -> None:
    """``python -m motfm.bench``: run the benchmark and write the results files."""
    run(cfg)


if __name__ == "__main__":
    main()
