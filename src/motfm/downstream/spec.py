"""The experiment file of ``python -m motfm.downstream``: what is generated, trained and scored.

A file (YAML) holds::

    name: echo2d
    out_dir: outputs/downstream/echo2d        # synthetic sets and per-run records (not committed)
    results_dir: experiments/downstream       # results.json / results.md / the plot (committed)
    seeds: [0, 1, 2]                          # replicates: real subset, weights, batch order, augmentation
    data: {real_items: 32, synthetic_items: 512, test_items: 512, train_split: train, test_split: test}
                                              # test_items: the first items of the test split (null: all)
    checkpoints: {fm: PATH, ddpm: PATH}       # mask + class-conditioned generators (--ckpt NAME=PATH)
    checkpoint_training: {fm: [OVERRIDES], ddpm: [...]}   # how each is trained (python -m motfm.train ...)
    missing_hint: "..."                       # what to run first when a checkpoint is missing
    generators: {fm_euler_1: {checkpoint: fm, sampler: euler, steps: 1}, ...}
    generation: {batch_size: 16, seed: 0, guidance_scale: 1.0, precision: fp32}   # seed: of the noise
    regimes: [real, synthetic, both, real_matched]
    segmenter: {features: [16, 16, 32, 64, 128, 16], training: {steps, batch_size, lr, ..., augment: {...}}}
    classifier: {width: 16, input_size: 64, training: {...}}
    threads: 1                                # torch CPU threads
    device: cpu                               # cpu | cuda | auto (generation and the downstream networks)
    data_overrides: [dataset.root=/data/CAMUS]  # changes of the checkpoints' data config (--data KEY=VALUE)
    dry_run: {...}                            # merged over the file by --dry-run (tiny sizes)

The real data are the generators' own training data (the data config stored in the checkpoints; all must
agree). With ``--dry-run`` no checkpoint is read: each generator is built untrained from
``checkpoint_training`` plus ``dry_run.checkpoint_overrides``, samplers take at most
:data:`DRY_RUN_MAX_STEPS` steps, and the whole pipeline runs on the tiny sizes of the ``dry_run`` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from motfm.downstream.augment import Augment
from motfm.downstream.regimes import REGIMES
from motfm.downstream.training import TrainSettings
from motfm.io.yaml_file import read_mapping

DRY_RUN_MAX_STEPS = 2


class DownstreamError(ValueError):
    """An experiment that cannot run; the message names the file or checkpoint and the problem."""


@dataclass(frozen=True)
class GeneratorSpec:
    """One way of making synthetic images: a checkpoint (by name) and a sampler setting."""

    name: str
    checkpoint: str
    sampler: str
    steps: int | None


@dataclass
class Experiment:
    """A parsed experiment file (see the module docstring)."""

    path: Path
    name: str
    out_dir: Path
    results_dir: Path
    seeds: list[int]
    real_items: int
    synthetic_items: int
    test_items: int | None
    train_split: str
    test_split: str
    checkpoints: dict[str, Path]
    checkpoint_training: dict[str, list[str]]
    missing_hint: str
    generators: dict[str, GeneratorSpec]
    generation: dict[str, Any]
    regimes: list[str]
    segmenter_features: list[int]
    segmenter_training: TrainSettings
    classifier_width: int
    classifier_input_size: int | None
    classifier_training: TrainSettings
    threads: int
    device: str = "cpu"
    data_overrides: list[str] = field(default_factory=list)
    dry_run: bool = False
    checkpoint_overrides: list[str] = field(default_factory=list)
    notes: str = ""

    def protocol(self) -> dict[str, Any]:
        """Every setting of the experiment (recorded in ``results.json``)."""
        return {
            "seeds": self.seeds,
            "real_items": self.real_items,
            "synthetic_items": self.synthetic_items,
            "test_items": self.test_items,
            "train_split": self.train_split,
            "test_split": self.test_split,
            "generators": {k: vars(g) for k, g in self.generators.items()},
            "generation": self.generation,
            "regimes": self.regimes,
            "segmenter": {
                "features": self.segmenter_features,
                "training": _settings(self.segmenter_training),
            },
            "classifier": {
                "width": self.classifier_width,
                "input_size": self.classifier_input_size,
                "training": _settings(self.classifier_training),
            },
            "threads": self.threads,
            "device": self.device,
            "data_overrides": self.data_overrides,
            "dry_run": self.dry_run,
        }

    def common_protocol(self) -> dict[str, Any]:
        """The settings every cell depends on (its seed, regime and generator come on top): part of the key
        of every record."""
        return {
            k: v
            for k, v in self.protocol().items()
            if k not in ("seeds", "generators", "regimes", "generation")
        }


def _settings(s: TrainSettings) -> dict[str, Any]:
    return {**{k: v for k, v in vars(s).items() if k != "augment"}, "augment": vars(s.augment)}


def _steps(steps: Any, dry_run: bool) -> int | None:
    """A generator's sampler steps; a dry run takes at most :data:`DRY_RUN_MAX_STEPS`."""
    if steps is None:
        return None
    return min(int(steps), DRY_RUN_MAX_STEPS) if dry_run else int(steps)


def _training(raw: dict[str, Any]) -> TrainSettings:
    raw = dict(raw)
    augment = Augment(**dict(raw.pop("augment", None) or {}))
    return TrainSettings(**raw, augment=augment)


def load_experiment(
    path: str | Path,
    checkpoints: dict[str, str] | None = None,
    out_dir: str | Path | None = None,
    results_dir: str | Path | None = None,
    dry_run: bool = False,
    data_overrides: list[str] | None = None,
    generators: list[str] | None = None,
) -> Experiment:
    """Read and check an experiment file.

    Args:
        path: the YAML file.
        checkpoints: ``{name: path}`` replacing the file's checkpoints (``--ckpt NAME=PATH``).
        out_dir: replaces the file's ``out_dir``.
        results_dir: replaces the file's ``results_dir``.
        dry_run: merge the file's ``dry_run`` section over it (tiny sizes; see the module docstring).
        data_overrides: ``KEY=VALUE`` changes of the data config (e.g. ``dataset.root=/data/CAMUS``),
            applied after the file's own ``data_overrides``.
        generators: keep only these generators of the file (``None``: all).

    Raises:
        DownstreamError: naming the file and the first problem.
    """
    path = Path(path)
    raw = read_mapping(path, DownstreamError, "experiment file")
    tiny = dict(raw.pop("dry_run", None) or {})
    overrides = list(tiny.pop("checkpoint_overrides", None) or [])
    if dry_run:
        raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(raw), OmegaConf.create(tiny)))
    unknown_ckpt = set(checkpoints or {}) - set(raw.get("checkpoints") or {})
    if unknown_ckpt:
        raise DownstreamError(f"{path}: --ckpt names {sorted(unknown_ckpt)} are not in 'checkpoints'")
    try:
        data, seg, cls = raw["data"], raw["segmenter"], raw["classifier"]
        ckpts = {str(k): Path(v) for k, v in {**raw["checkpoints"], **(checkpoints or {})}.items()}
        exp = Experiment(
            path=path,
            name=str(raw["name"]),
            out_dir=Path(out_dir or raw["out_dir"]),
            results_dir=Path(results_dir or raw["results_dir"]),
            seeds=[int(s) for s in raw["seeds"]],
            real_items=int(data["real_items"]),
            synthetic_items=int(data["synthetic_items"]),
            test_items=None if data.get("test_items") is None else int(data["test_items"]),
            train_split=str(data.get("train_split", "train")),
            test_split=str(data.get("test_split", "test")),
            checkpoints=ckpts,
            checkpoint_training={str(k): [str(o) for o in v] for k, v in raw["checkpoint_training"].items()},
            missing_hint=str(raw.get("missing_hint") or ""),
            generators={
                str(k): GeneratorSpec(
                    str(k), str(g["checkpoint"]), str(g["sampler"]), _steps(g.get("steps"), dry_run)
                )
                for k, g in raw["generators"].items()
            },
            generation={
                "batch_size": 64,
                "seed": 0,
                "guidance_scale": 1.0,
                "precision": "fp32",
                **(raw.get("generation") or {}),
            },
            regimes=[str(r) for r in raw["regimes"]],
            segmenter_features=[int(f) for f in seg["features"]],
            segmenter_training=_training(seg["training"]),
            classifier_width=int(cls["width"]),
            classifier_input_size=None if cls.get("input_size") is None else int(cls["input_size"]),
            classifier_training=_training(cls["training"]),
            threads=int(raw.get("threads", 1)),
            device=str(raw.get("device", "cpu")),
            data_overrides=[*(str(o) for o in raw.get("data_overrides") or []), *(data_overrides or [])],
            dry_run=dry_run,
            checkpoint_overrides=overrides,
            notes=str(raw.get("notes") or ""),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DownstreamError(f"{path}: malformed experiment ({type(err).__name__}: {err})") from None
    if generators is not None:
        unknown = set(generators) - set(exp.generators)
        if unknown:
            raise DownstreamError(f"{path}: --generators names {sorted(unknown)} are not in 'generators'")
        exp.generators = {k: g for k, g in exp.generators.items() if k in generators}
    _check(exp)
    return exp


def _check(exp: Experiment) -> None:
    where = exp.path
    bad_regimes = set(exp.regimes) - set(REGIMES)
    if bad_regimes or not exp.regimes:
        raise DownstreamError(f"{where}: regimes must be a non-empty subset of {REGIMES}, got {exp.regimes}")
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        raise DownstreamError(f"{where}: seeds must be distinct and at least one, got {exp.seeds}")
    missing = {g.checkpoint for g in exp.generators.values()} - set(exp.checkpoints)
    if missing:
        raise DownstreamError(
            f"{where}: generators use checkpoints {sorted(missing)} not named in 'checkpoints'"
        )
    untrained = set(exp.checkpoints) - set(exp.checkpoint_training)
    if untrained:
        raise DownstreamError(f"{where}: 'checkpoint_training' lacks {sorted(untrained)}")
    if exp.real_items < 1 or exp.synthetic_items < 1 or (exp.test_items is not None and exp.test_items < 1):
        raise DownstreamError(f"{where}: real_items, synthetic_items and test_items must be >= 1")
    if any(r in ("synthetic", "both") for r in exp.regimes) and not exp.generators:
        raise DownstreamError(f"{where}: the synthetic / both regimes need at least one generator")
