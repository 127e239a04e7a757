"""The generators of an experiment: mask + class-conditioned checkpoints loaded for sampling, or, in a dry
run, the same networks built untrained from their training overrides; and the real data they were trained
on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from motfm.checkpoint import CheckpointError
from motfm.data.base import DataSpec
from motfm.data.pairs import source_data_config
from motfm.downstream.spec import DownstreamError, Experiment
from motfm.downstream.synthetic import check_generator
from motfm.loading import LoadedModel, load_model

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def load_generators(exp: Experiment, device: torch.device | str = "cpu") -> dict[str, LoadedModel]:
    """Every checkpoint the experiment's generators use, by checkpoint name.

    Raises:
        DownstreamError: a missing or unreadable checkpoint (with the experiment's ``missing_hint``), or a
            model that is not mask + class conditioned.
    """
    used = sorted({g.checkpoint for g in exp.generators.values()})
    models = {}
    for name in used:
        if exp.dry_run:
            models[name] = untrained_generator(exp, name, device)
        else:
            path = exp.checkpoints[name]
            if not path.is_file():
                raise DownstreamError(
                    f"{path}: checkpoint {name!r} not found; {exp.missing_hint}".rstrip("; ")
                )
            try:
                models[name] = load_model(path, use_ema=True, device=device)
            except CheckpointError as err:
                raise DownstreamError(str(err)) from None
        check_generator(models[name], name)
    return models


def untrained_generator(exp: Experiment, name: str, device: torch.device | str = "cpu") -> LoadedModel:
    """The network and objective that ``checkpoint_training[name]`` (+ the dry run's overrides) would train,
    with their initial weights: what a dry run samples from."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from motfm.lit.module import GenerativeModule
    from motfm.validate import validate_train_config

    data = [f"data.{o}" for o in exp.data_overrides]
    overrides = [
        *exp.checkpoint_training[name],
        *exp.checkpoint_overrides,
        *data,
        f"paths.output_dir={exp.out_dir}",
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides)
    finally:
        GlobalHydra.instance().clear()
    validate_train_config(cfg)
    spec = instantiate(cfg.data, seed=cfg.seed).spec
    module = GenerativeModule.from_config(cfg, spec)
    return LoadedModel(
        net=module.net.eval().to(device),
        objective=module.objective,
        spec=spec,
        config=OmegaConf.to_container(cfg, resolve=True),
        path=Path(f"untrained:{name}"),
        global_step=0,
        representation=module.representation.to(device),
    )


def shared_data_config(models: dict[str, LoadedModel], overrides: list[str] | None = None) -> dict[str, Any]:
    """The real data config all generators were trained on (a reflow pairs config maps to its teacher's),
    with ``overrides`` (``KEY=VALUE``, e.g. ``dataset.root=/data``) applied.

    Raises:
        DownstreamError: when the generators were trained on different datasets or data descriptions.
    """
    configs = {n: OmegaConf.to_container(source_data_config(m.config["data"])) for n, m in models.items()}
    names = list(configs)
    first = configs[names[0]]
    for other in names[1:]:
        if configs[other]["dataset"] != first["dataset"] or models[other].spec != models[names[0]].spec:
            raise DownstreamError(
                f"generators {names[0]!r} ({models[names[0]].path}) and {other!r} ({models[other].path}) "
                "were trained on different data; downstream results would not be comparable"
            )
    return OmegaConf.to_container(OmegaConf.merge(first, OmegaConf.from_dotlist(list(overrides or []))))


def check_spec(models: dict[str, LoadedModel], spec: DataSpec) -> None:
    """Raise one line when a generator's images, classes or labels differ from the data's."""
    for name, model in models.items():
        ms = model.spec
        same = (ms.image_size, ms.channels, ms.num_classes, ms.num_mask_labels) == (
            spec.image_size,
            spec.channels,
            spec.num_classes,
            spec.num_mask_labels,
        )
        if not same:
            raise DownstreamError(
                f"{model.path}: generator {name!r} was trained on {ms}, the data are {spec}"
            )


def checkpoint_identity(exp: Experiment, models: dict[str, LoadedModel]) -> dict[str, Any]:
    """What identifies each checkpoint in the records: path, size, modification time and training step."""
    out = {}
    for name, model in models.items():
        if exp.dry_run:
            out[name] = {"path": str(model.path), "global_step": 0}
            continue
        stat = exp.checkpoints[name].stat()
        out[name] = {
            "path": str(exp.checkpoints[name].resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "global_step": model.global_step,
            "method": model.objective.name,
        }
    return out
