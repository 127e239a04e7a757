"""Run a downstream experiment: ``python -m motfm.downstream FILE.yaml [--ckpt NAME=PATH] [--data KEY=VALUE]
[--generators A,B] [--out-dir DIR] [--results-dir DIR] [--dry-run]``.

Draw the conditioning items from the training split and generate the synthetic items of every generator once
(cached in ``out_dir/synthetic/``); then for every seed draw the small real subset
(:func:`~motfm.downstream.regimes.draw_indices`), and for every regime (and generator, where the regime uses
one) train a segmenter and a classifier and score them on the first ``test_items`` real items of the test
split. Each result is written to ``out_dir/runs/<regime>[-<generator>]/seed_<s>.json`` as soon as it exists,
so an interrupted run restarted with the same command continues. Every record (and synthetic set) carries the
key of what made it (protocol, data, generator, checkpoint identity); a cell is reused only under the same
key and a stale one is refused, so results of different checkpoints or protocols never mix. Running some
generators first (``--generators``) and the rest later reuses the finished cells. Finally
:mod:`motfm.downstream.report` writes ``results.json``, ``results.md`` and the plot into ``results_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Any

import torch

from motfm.data.base import DataSpec
from motfm.downstream.generators import check_spec, checkpoint_identity, load_generators, shared_data_config
from motfm.downstream.items import Items, data_splits, real_items
from motfm.downstream.regimes import GENERATOR_REGIMES, build_regime, draw_indices
from motfm.downstream.report import write_report
from motfm.downstream.scoring import accuracy, segmentation_scores
from motfm.downstream.spec import DownstreamError, Experiment, GeneratorSpec, load_experiment
from motfm.downstream.synthetic import synthetic_items
from motfm.downstream.training import train_classifier, train_segmenter
from motfm.io.atomic import atomic_path, write_json
from motfm.loading import LoadedModel
from motfm.runtime import pick_device

log = logging.getLogger("motfm.downstream")


def run_name(regime: str, generator: str | None) -> str:
    """The folder name of a (regime, generator) cell: ``real``, ``synthetic-fm_euler_10``, ..."""
    return regime if generator is None else f"{regime}-{generator}"


def _key_text(key: dict[str, Any]) -> str:
    """A canonical text of a record key (JSON, sorted keys)."""
    return json.dumps(key, sort_keys=True, default=str)


def synthetic_set(
    exp: Experiment, gen: GeneratorSpec, model: LoadedModel, conditions: Items, key: dict[str, Any]
) -> tuple[Items, dict[str, Any]]:
    """The synthetic items of a generator (noise seed ``generation.seed``): read from
    ``out_dir/synthetic/<generator>.pt`` when its key matches, else generated and written there.

    Raises:
        DownstreamError: the file holds images of another generator, checkpoint or protocol.
    """
    path = exp.out_dir / "synthetic" / f"{gen.name}.pt"
    key = {**key, "conditions": conditions.source_index.tolist()}
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != _key_text(key):
            raise DownstreamError(f"{path}: {_STALE}")
        synthetic = torch.ones(len(conditions), dtype=torch.bool)
        items = Items(
            saved["images"], conditions.masks, conditions.labels, synthetic, conditions.source_index
        )
        return items, saved["info"]
    g = exp.generation
    items, info = synthetic_items(
        model,
        conditions,
        gen.sampler,
        gen.steps,
        int(g["seed"]),
        int(g["batch_size"]),
        float(g["guidance_scale"]),
        g["precision"],
    )
    info = {**info, "checkpoint": gen.checkpoint, "num_images": len(items)}
    with atomic_path(path) as tmp:
        torch.save({"images": items.images, "info": info, "key": _key_text(key)}, tmp)
    log.info("%s: %d images, %d NFE, %.1f s", gen.name, len(items), info["nfe"], info["seconds"])
    return items, info


_STALE = "holds a result of another protocol or checkpoint; choose another --out-dir or remove it"


def train_and_score(
    exp: Experiment, items: Items, test: Items, label_names: tuple[str, ...], num_classes: int, seed: int
) -> dict[str, Any]:
    """Train the segmenter and the classifier of one cell and score them on the test items."""
    device = pick_device(exp.device)
    seg, seg_record = train_segmenter(
        items, len(label_names), exp.segmenter_features, exp.segmenter_training, seed, device
    )
    cls, cls_record = train_classifier(
        items,
        num_classes,
        exp.classifier_width,
        exp.classifier_input_size,
        exp.classifier_training,
        seed,
        device,
    )
    return {
        "dice": segmentation_scores(seg, test, label_names),
        "accuracy": accuracy(cls, test),
        "segmenter": seg_record,
        "classifier": cls_record,
    }


def _cell(
    exp: Experiment,
    regime: str,
    gen: GeneratorSpec | None,
    seed: int,
    items: Items,
    test: Items,
    spec: DataSpec,
    key: dict[str, Any],
) -> dict[str, Any]:
    """The record of one (regime, generator, seed) cell: read back when its key matches, else trained,
    scored and written.

    Raises:
        DownstreamError: the record was made under another protocol or from another checkpoint.
    """
    name = run_name(regime, None if gen is None else gen.name)
    path = exp.out_dir / "runs" / name / f"seed_{seed}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("key") != _key_text(key):
            raise DownstreamError(f"{path}: {_STALE}")
        return record
    t0 = time.perf_counter()
    record = {
        "key": _key_text(key),
        "regime": regime,
        "generator": None if gen is None else gen.name,
        "seed": seed,
        "num_real": items.num_real,
        "num_synthetic": items.num_synthetic,
        **train_and_score(exp, items, test, spec.mask_label_names, spec.num_classes, seed),
    }
    record["seconds"] = time.perf_counter() - t0
    write_json(path, record)
    dice, acc = record["dice"]["mean"], record["accuracy"]
    log.info("%s seed %d: Dice %.3f, accuracy %.3f (%.0f s)", name, seed, dice, acc, record["seconds"])
    return record


def machine() -> dict[str, Any]:
    """Where and when the experiment ran (load averages show the contention of a shared machine)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _generator_key(exp: Experiment, gen: GeneratorSpec, identity: dict[str, Any]) -> dict[str, Any]:
    """What a synthetic set depends on: the generator, its checkpoint and the generation settings."""
    return {"generator": vars(gen), "checkpoint": identity[gen.checkpoint], "generation": exp.generation}


def run(exp: Experiment) -> dict[str, Any]:
    """Run every cell that has no record yet, then write the report; returns the content of results.json.

    Torch uses ``exp.threads`` CPU threads meanwhile (on a loaded machine one thread per process is much
    faster for these small networks; see experiments/downstream/README.md, "Threads"); the previous setting is
    restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(exp.threads)
    try:
        return _run(exp)
    finally:
        torch.set_num_threads(threads)


def _run(exp: Experiment) -> dict[str, Any]:
    t_start, started = time.perf_counter(), machine()
    device = pick_device(exp.device)
    models = load_generators(exp, device)
    data_cfg = shared_data_config(models, exp.data_overrides)
    data = data_splits(data_cfg)
    train_ds, test_ds = data.dataset(exp.train_split), data.dataset(exp.test_split)
    spec = train_ds.spec
    check_spec(models, spec)
    num_test = len(test_ds) if exp.test_items is None else exp.test_items
    if num_test > len(test_ds):
        raise DownstreamError(
            f"{exp.path}: test_items={exp.test_items}, the {exp.test_split} split holds {len(test_ds)}"
        )
    identity = checkpoint_identity(exp, models)
    base_key = {"protocol": exp.common_protocol(), "data": data_cfg, "test_items": num_test}
    test = real_items(test_ds, range(num_test))
    try:
        draws = {
            seed: draw_indices(len(train_ds), exp.real_items, exp.synthetic_items, seed) for seed in exp.seeds
        }
    except ValueError as err:
        raise DownstreamError(f"{exp.path}: {err}") from None
    conditions = real_items(train_ds, draws[exp.seeds[0]][1])  # the same for every seed
    synthetic, generation = {}, {}
    if any(r in GENERATOR_REGIMES for r in exp.regimes):
        for gen in exp.generators.values():
            key = {**_generator_key(exp, gen, identity), "data": data_cfg}
            synthetic[gen.name], generation[gen.name] = synthetic_set(
                exp, gen, models[gen.checkpoint], conditions, key
            )
    records = []
    for seed in exp.seeds:
        real = real_items(train_ds, draws[seed][0])
        for regime in exp.regimes:
            for gen in list(exp.generators.values()) if regime in GENERATOR_REGIMES else [None]:
                items = build_regime(regime, real, conditions, None if gen is None else synthetic[gen.name])
                key = base_key if gen is None else {**base_key, **_generator_key(exp, gen, identity)}
                records.append(_cell(exp, regime, gen, seed, items, test, spec, key))
    run_info = {
        "machine": started,
        "load_average_end": machine()["load_average"],
        "threads": exp.threads,
        "device": str(device),
        "test_items": len(test),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t_start,
        "checkpoints": identity,
    }
    return write_report(exp, records, generation, run_info, spec, conditions, synthetic)


def _checkpoint_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m motfm.downstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="the experiment file (YAML)")
    parser.add_argument(
        "--ckpt",
        action="append",
        type=_checkpoint_arg,
        default=[],
        metavar="NAME=PATH",
        help="replace a checkpoint of the file (repeatable)",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the data config, e.g. --data dataset.root=/data/CAMUS (repeatable)",
    )
    parser.add_argument(
        "--generators",
        help="run only these generators of the file, comma-separated (finished cells are kept)",
    )
    parser.add_argument("--out-dir", help="replace the file's out_dir")
    parser.add_argument("--results-dir", help="replace the file's results_dir")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build every part untrained on the file's tiny dry_run sizes (no checkpoint read)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("motfm").setLevel(logging.INFO)
    try:
        exp = load_experiment(
            args.experiment,
            dict(args.ckpt),
            args.out_dir,
            args.results_dir,
            args.dry_run,
            args.data,
            None if args.generators is None else [g for g in args.generators.split(",") if g],
        )
        run(exp)
    except (DownstreamError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("wrote %s", exp.results_dir / "results.md")
