"""Run a study end to end: ``python -m motfm.study STUDY.yaml [--out-dir DIR] [--dry-run] [--only STAGE]``.

1. trains every model with ``python -m motfm.train`` (one process each; a finished model is skipped, an
   interrupted one resumes from its last checkpoint), recording its wall-clock time;
2. evaluates every (model, sampler) with ``python -m motfm.evaluate`` on the same reference set, extractor and
   seeds (a finished evaluation is skipped);
3. writes ``results.json``, ``results.md``, a plot per metric against NFE and the side-by-side figure into the
   study's ``results_dir``.

``--dry-run`` composes every training config and builds its model and objective on the data without training:
a check that a study (e.g. a GPU-sized one) still fits the code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from motfm.flow.solvers import FIXED_STEP_SOLVERS, solver_nfe
from motfm.io.atomic import write_json
from motfm.study.layout import checkpoint, train_dir
from motfm.study.spec import PLACEHOLDER, EvalRun, Study, load_study

log = logging.getLogger("motfm.study")

STAGES = ("train", "evaluate", "report")


THREADS: int | None = None  # threads of every job (--threads); None: the machine's default
_PAIRS_LOCK = threading.Lock()  # jobs side by side must not generate the same pairs twice


def _run(module: str, overrides: list[str], log_file: Path, threads: int | None = None) -> float:
    """Run ``python -m <module> <overrides>`` (output into ``log_file``) with ``threads`` threads (default
    :data:`THREADS`); returns its wall-clock seconds."""
    threads = THREADS if threads is None else threads
    cmd = [sys.executable, "-m", module, *overrides]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(log_file, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        tail = log_file.read_text().splitlines()[-5:]
        raise RuntimeError(f"{module} failed (exit {proc.returncode}); see {log_file}:\n" + "\n".join(tail))
    return seconds


def make_pairs(study: Study, name: str) -> dict[str, Any]:
    """Generate (or find) the reflow pairs ``name`` from their teacher; returns ``pairs.json``."""
    folder = study.out_dir / "pairs" / name
    info_file = folder / "pairs.json"
    if not info_file.is_file():
        spec = study.pairs[name]
        log.info("generating pairs %s from %s", name, spec["teacher"])
        args = [f"ckpt_path={checkpoint(study, spec['teacher'])}", f"out_dir={folder}", *spec["overrides"]]
        _run("motfm.reflow", [*args, f"hydra.run.dir={folder}"], folder / "study_pairs.log")
    return json.loads(info_file.read_text())


def resolve_overrides(study: Study, overrides: list[str], pairs: dict[str, dict[str, Any]]) -> list[str]:
    """Replace ``{ckpt:MODEL}`` and ``{pairs:NAME}`` by paths (generating the pairs when first needed)."""

    def path(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "ckpt":
            return str(checkpoint(study, name))
        with _PAIRS_LOCK:
            if name not in pairs:
                pairs[name] = make_pairs(study, name)
        return str(study.out_dir / "pairs" / name)

    return [PLACEHOLDER.sub(path, o) for o in overrides]


def train_model(study: Study, model: str, pairs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Train one model unless it has finished (an interrupted run resumes); returns its done record."""
    overrides = resolve_overrides(study, study.models[model], pairs)
    folder = train_dir(study, model)
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    last = folder / "checkpoints" / "last.ckpt"
    resume = ["resume=auto"] if last.is_file() else []
    log.info("training %s", model)
    args = [*study.train_common, *overrides, *resume, f"hydra.run.dir={folder}", "logger=csv"]
    seconds = _run("motfm.train", args, folder / "study_train.log")
    result = json.loads((folder / "result.json").read_text())
    record = {
        "model": model,
        "overrides": [*study.train_common, *overrides],
        "seconds": seconds,
        "steps": result["global_step"],
        "cpu_seconds": result["metrics"].get("train/cpu_seconds"),
    }
    record["threads"] = THREADS
    if resume:
        record["resumed"] = True
    write_json(done, record)
    return record


def dependencies(study: Study, model: str) -> set[str]:
    """The models whose checkpoints a model's overrides name (directly or through pairs)."""
    needed = set()
    for kind, name in PLACEHOLDER.findall(" ".join(study.models[model])):
        needed.add(name if kind == "ckpt" else study.pairs[name]["teacher"])
    return needed


def train_models(
    study: Study, pairs: dict[str, dict[str, Any]] | None = None, jobs: int = 1
) -> dict[str, dict[str, Any]]:
    """Train every model that has not finished, ``jobs`` at a time, each after the models it needs; returns
    ``{model: done record}`` (pairs made on the way go into ``pairs``)."""
    pairs = {} if pairs is None else pairs
    records: dict[str, dict[str, Any]] = {}
    pending = list(study.models)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future[dict[str, Any]], str] = {}
        while pending or running:
            ready = [m for m in pending if dependencies(study, m) <= set(records)]
            while ready and len(running) < jobs:
                model = ready.pop(0)
                pending.remove(model)
                running[pool.submit(train_model, study, model, pairs)] = model
            if not running:
                raise RuntimeError(f"models {pending} wait for models that never finish")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                records[running.pop(future)] = future.result()
    return {m: records[m] for m in study.models}


def evaluate_run(study: Study, model: str, name: str, run: EvalRun, threads: int | None = None) -> Path:
    """Evaluate one (model, run) unless done (with ``threads`` threads, default :data:`THREADS`); returns
    its ``metrics.json``."""
    folder = study.out_dir / model / f"eval_{name}"
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        log.info("evaluating %s with %s at steps %s %s", model, run.sampler, run.steps, run.overrides)
        steps_list = "[" + ",".join(str(s) for s in run.steps) + "]"
        args = [
            f"ckpt_path={checkpoint(study, model)}",
            f"samplers=[{run.sampler}]",
            f"steps={steps_list}",
            *study.eval_common,
            *run.overrides,
            f"hydra.run.dir={folder}",
        ]
        _run("motfm.evaluate", args, folder / "study_evaluate.log", threads)
    return metrics


def evaluation_cost(run: EvalRun) -> int:
    """Network evaluations per sample of one run: what orders the runs."""
    if run.sampler in FIXED_STEP_SOLVERS:
        return sum(solver_nfe(run.sampler, s) for s in run.steps)
    return sum(run.steps)


def evaluate_models(study: Study, jobs: int = 1) -> list[dict[str, Any]]:
    """Evaluate every (model, sampler), ``jobs`` at a time; returns the rows of all ``metrics.json`` files."""
    runs = [(m, name, run) for m, named in study.runs.items() for name, run in named.items()]
    # The cheapest run first, alone and on every job's threads: it fills the reference caches the others
    # then read. The others longest first, so that the jobs side by side finish close together.
    order = sorted(runs, key=lambda item: evaluation_cost(item[2]))
    if order and jobs > 1:
        evaluate_run(study, *order[0], threads=THREADS * jobs if THREADS is not None else None)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda run: evaluate_run(study, *run), order[:1] + order[:0:-1]))
    rows = []
    for model, name, _ in runs:
        result = json.loads((study.out_dir / model / f"eval_{name}" / "metrics.json").read_text())
        rows += [{"model": model, **row, "sampler": name} for row in result["results"]]
        if result.get("reference") is not None and not any(r.get("model") == "real" for r in rows):
            rows.append({"model": "real", **result["reference"]})
    return rows


def dry_run_overrides(study: Study, model: str) -> list[str]:
    """A model's overrides without what needs earlier results (checkpoints, pairs): a pairs student is built
    on its teacher's data instead."""
    overrides = [o for o in study.models[model] if not PLACEHOLDER.search(o) and o != "data=pairs"]
    if "data=pairs" in study.models[model]:
        for teacher in dependencies(study, model):
            overrides += [o for o in dry_run_overrides(study, teacher) if o.startswith("data=")]
    return overrides


def replace_overrides(overrides: list[str], extra: list[str]) -> list[str]:
    """``overrides`` with ``extra`` in place of the same keys; a replaced config group (``data=x``) also drops
    the overrides under it (``data.dataset.root=...``), e.g. to dry-run a study on the phantoms."""
    keys = {e.split("=", 1)[0] for e in extra}
    groups = {k for k in keys if "." not in k}

    def replaced(o: str) -> bool:
        key = o.split("=", 1)[0].lstrip("+~")
        return key in keys or any(key.startswith(g + ".") for g in groups)

    return [o for o in overrides if not replaced(o)] + list(extra)


def dry_run(study: Study, extra: list[str] | None = None) -> list[str]:
    """Compose each model's training config and build its module on the data; returns the model names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from motfm.lit.module import GenerativeModule
    from motfm.validate import validate_train_config

    conf_dir = str(Path(__file__).resolve().parents[3] / "conf")
    built = []
    for model in study.models:
        overrides = replace_overrides([*study.train_common, *dry_run_overrides(study, model)], extra or [])
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            cfg = compose("train", [*overrides, f"paths.output_dir={study.out_dir / model}"])
        validate_train_config(cfg)
        spec = instantiate(cfg.data, seed=cfg.seed).spec
        module = GenerativeModule.from_config(cfg, spec)
        params = sum(p.numel() for p in module.net.parameters()) / 1e6
        log.info("%s: %s, %.1f M parameters, data %s", model, module.objective.name, params, spec)
        built.append(model)
    return built


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m motfm.study", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study YAML file")
    parser.add_argument("--out-dir", help="replace the study's out_dir (training runs and raw metrics)")
    parser.add_argument("--results-dir", help="replace the study's results_dir")
    parser.add_argument("--only", choices=STAGES, action="append", help="run only these stages")
    parser.add_argument("--dry-run", action="store_true", help="compose and build every model, train nothing")
    parser.add_argument("--override", action="append", default=[], help="extra training override (dry run)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings / evaluations run side by side")
    parser.add_argument("--threads", type=int, help="threads of each job (e.g. 1 with --jobs 2 on 2 cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    study = load_study(args.study, args.out_dir)
    if args.results_dir:
        study.results_dir = Path(args.results_dir)
    if args.dry_run:
        dry_run(study, args.override)
        return
    stages = args.only or list(STAGES)
    global THREADS
    THREADS = args.threads
    from motfm.study.report import write_results  # matplotlib only when reporting

    t0 = time.perf_counter()
    pairs: dict[str, dict[str, Any]] = {}
    records = train_models(study, pairs, args.jobs) if "train" in stages else {}
    rows = evaluate_models(study, args.jobs) if "evaluate" in stages or "report" in stages else []
    if "report" in stages:
        for name in study.pairs:
            info = study.out_dir / "pairs" / name / "pairs.json"
            if name not in pairs and info.is_file():
                pairs[name] = json.loads(info.read_text())
        write_results(study, records or _records(study), rows, time.perf_counter() - t0, pairs)


def _records(study: Study) -> dict[str, dict[str, Any]]:
    out = {}
    for model in study.models:
        done = train_dir(study, model) / "done.json"
        if done.is_file():
            out[model] = json.loads(done.read_text())
    return out


if __name__ == "__main__":
    main()
