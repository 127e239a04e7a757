"""The description of a study: which models to train, how to evaluate them, what to plot.

A study file (YAML) holds::

    name: speed_quality_2d
    out_dir: outputs/studies/speed_quality_2d        # training runs and raw metrics (not committed)
    results_dir: experiments/speed_quality/results_2d # tables, plots, figure (committed)
    train:
      common: [model=unet2d_small, trainer.max_steps=400, ...]   # overrides of python -m motfm.train
      models: {fm_ot: [method=fm, coupling=minibatch_ot], ddpm: [method=ddpm]}
    evaluate:
      common: [num_samples=256, extractor=inception_bundled, ...] # overrides of python -m motfm.evaluate
      runs: {fm_ot: {euler: [1, 2, 5, 10]}, ddpm: {dpmpp_2m: [1, 2, 5, 10]}}  # model -> sampler -> steps
      # or a named run with its own evaluation overrides (rows and plots show the name as the sampler):
      #   ddpm: {dpmpp_2m_clip: {sampler: dpmpp_2m, steps: [1, 2, 5], overrides: [clip_x0=true]}}
    figure: {models: {fm_ot: euler, ddpm: dpmpp_2m}, nfe: [1, 5, 10], num_samples: 6}
    # or rows from evaluation runs, each with that run's sampler and sampling settings (precision, grid):
    #   figure: {runs: [fm_ot/fp32, fm_ot/bf16], nfe: [1, 5], num_samples: 6}
    metrics: [fid, kid, ms_ssim, dice, label_acc]
    pairs:                                            # optional: reflow pairs from a trained model
      fm_pairs: {teacher: fm_ot, overrides: [num_pairs=2048, sampler=midpoint, steps=25]}

A training override may name another model's checkpoint as ``{ckpt:MODEL}`` and a pairs folder as
``{pairs:NAME}`` (e.g. ``init_ckpt={ckpt:fm_ot}``, ``data.dataset.root={pairs:fm_pairs}``); models are
trained in file order and pairs are generated (``python -m motfm.reflow``) when first needed, so a reflow
student's cost is its teacher's training, the pair generation and its own training, each recorded.

Every model is trained with the same ``train.common`` overrides and differs only by its own; every evaluation
uses the same ``evaluate.common`` (extractor, reference set, seeds), so methods are compared on equal terms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motfm.io.yaml_file import read_mapping

PLACEHOLDER = re.compile(r"\{(ckpt|pairs):([A-Za-z0-9_.-]+)\}")


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the key."""


@dataclass
class EvalRun:
    """One evaluation of a model: a sampler at some step counts, with evaluation overrides of its own."""

    sampler: str
    steps: list[int]
    overrides: list[str] = field(default_factory=list)


@dataclass
class Study:
    """A parsed study file (see the module docstring)."""

    path: Path
    name: str
    out_dir: Path
    results_dir: Path
    train_common: list[str]
    models: dict[str, list[str]]
    eval_common: list[str]
    runs: dict[str, dict[str, EvalRun]]  # model -> run name (the sampler's, unless named) -> run
    figure: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid"])
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StudyError(f"{where} must be a list of override strings")
    return list(value)


def figure_run(entry: Any) -> tuple[str, str]:
    """``(model, run name)`` of a ``figure.runs`` entry ``MODEL/RUN``."""
    model, _, name = str(entry).partition("/")
    return model, name


def _eval_run(name: str, value: Any, where: str) -> EvalRun:
    """``[steps...]`` (a run of the sampler ``name``) or ``{sampler, steps, overrides}``."""
    if isinstance(value, dict):
        if set(value) - {"sampler", "steps", "overrides"} or "steps" not in value:
            raise StudyError(f"{where} must be a list of steps or {{sampler, steps, overrides}}")
        sampler, steps, overrides = value.get("sampler", name), value["steps"], value.get("overrides")
    else:
        sampler, steps, overrides = name, value, None
    return EvalRun(str(sampler), [int(n) for n in steps], _strings(overrides, f"{where}.overrides"))


def load_study(path: str | Path, out_dir: str | Path | None = None) -> Study:
    """Read and check a study file; ``out_dir`` replaces the file's (e.g. for a quick test run).

    Raises:
        StudyError: naming the file and the first problem.
    """
    path = Path(path)
    raw = read_mapping(path, StudyError, "study file")
    try:
        train, evaluate = raw["train"], raw["evaluate"]
        models = {str(k): _strings(v, f"{path}: train.models.{k}") for k, v in train["models"].items()}
        runs = {
            str(m): {str(n): _eval_run(n, run, f"{path}: evaluate.runs.{m}.{n}") for n, run in named.items()}
            for m, named in evaluate["runs"].items()
        }
        study = Study(
            path=path,
            name=str(raw["name"]),
            out_dir=Path(out_dir or raw["out_dir"]),
            results_dir=Path(raw["results_dir"]),
            train_common=_strings(train.get("common"), f"{path}: train.common"),
            models=models,
            eval_common=_strings(evaluate.get("common"), f"{path}: evaluate.common"),
            runs=runs,
            figure=dict(raw.get("figure") or {}),
            metrics=list(raw.get("metrics") or ["fid", "kid"]),
            pairs={
                str(k): {
                    "teacher": str(v["teacher"]),
                    "overrides": _strings(v.get("overrides"), f"{path}: pairs.{k}"),
                }
                for k, v in (raw.get("pairs") or {}).items()
            },
            notes=str(raw.get("notes") or ""),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StudyError(f"{path}: malformed study ({type(err).__name__}: {err})") from None
    for entry in study.figure.get("runs") or []:
        model, name = figure_run(entry)
        if name not in study.runs.get(model, {}):
            raise StudyError(f"{path}: figure.runs names {entry!r}, which is not an evaluate run (MODEL/RUN)")
    teachers = {p["teacher"] for p in study.pairs.values()}
    unknown = (set(study.runs) | set(study.figure.get("models", {})) | teachers) - set(study.models)
    if unknown:
        raise StudyError(
            f"{path}: evaluations, figure or pairs name models that are not trained: {sorted(unknown)}"
        )
    order = list(study.models)
    for model, overrides in study.models.items():
        for kind, name in PLACEHOLDER.findall(" ".join(overrides)):
            needed = name if kind == "ckpt" else study.pairs.get(name, {}).get("teacher")
            if needed is None:
                raise StudyError(f"{path}: train.models.{model} uses {{pairs:{name}}}, which is not in pairs")
            if needed not in order or order.index(needed) >= order.index(model):
                raise StudyError(
                    f"{path}: train.models.{model} needs {needed}, which must be trained before it"
                )
    return study
