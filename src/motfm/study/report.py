"""A study's results: ``results.json``, ``results.md``, metric-vs-NFE plots and the side-by-side figure."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from motfm.conditions import Conditions  # noqa: E402
from motfm.data.pairs import source_data_config  # noqa: E402
from motfm.flow.solvers import FIXED_STEP_SOLVERS, solver_nfe  # noqa: E402
from motfm.io.atomic import atomic_open, atomic_path, write_json  # noqa: E402
from motfm.io.images import mid_slices  # noqa: E402
from motfm.loading import LoadedModel, load_model  # noqa: E402
from motfm.metrics.report import markdown_table  # noqa: E402
from motfm.runtime import resolve_precision  # noqa: E402
from motfm.sample import SAMPLER_OPTION_KEYS, generate_batch, sampler_options  # noqa: E402
from motfm.study.layout import checkpoint  # noqa: E402
from motfm.study.spec import Study, figure_run  # noqa: E402

log = logging.getLogger(__name__)

PAIRS_COLUMNS = ("num_pairs", "sampler", "steps", "nfe", "generation_seconds", "generation_cpu_seconds")
LOWER_IS_BETTER = {"fid", "kid", "mmd_rbf", "cmmd", "ms_ssim"}
ERRORS = {"fid": "fid_std", "kid": "kid_std"}


def machine() -> dict[str, Any]:
    """Where and when the study ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
    }


def steps_for_nfe(objective: Any, sampler: str, nfe: int) -> int | None:
    """Solver steps that cost ``nfe`` evaluations (``None`` when no whole number of steps does)."""
    if objective.name not in ("fm", "reflow") or sampler not in FIXED_STEP_SOLVERS:
        return nfe
    return next((s for s in range(1, nfe + 1) if solver_nfe(sampler, s) == nfe), None)


def by_nfe_table(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The headline table: ``metric`` (± its ``_std`` where measured) of each (model, sampler) by NFE."""
    nfes = sorted({r["nfe"] for r in rows if r.get("nfe") is not None and r.get(metric) is not None})
    series: dict[tuple[str, str], dict[int, str]] = {}
    for r in rows:
        if r.get(metric) is None or r.get("nfe") is None:
            continue
        std, spec = r.get(f"{metric}_std"), ".1f" if abs(r[metric]) >= 1 else ".4f"
        cell = f"{r[metric]:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")
        series.setdefault((r["model"], str(r["sampler"])), {})[r["nfe"]] = cell
    lines = [
        f"## {metric} by number of network evaluations",
        "",
        "| model | sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|" + "---|" * len(nfes),
    ]
    for (model, sampler), cells in series.items():
        lines.append(f"| {model} | {sampler} | " + " | ".join(cells.get(n, "-") for n in nfes) + " |")
    return [*lines, ""]


def write_results(
    study: Study,
    records: dict[str, dict[str, Any]],
    rows: list[dict[str, Any]],
    seconds: float,
    pairs: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write every result file of the study into ``study.results_dir``."""
    out = study.results_dir
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    result = {
        "study": study.name,
        "study_file": str(study.path),
        "machine": info,
        "train": records,
        "pairs": {
            name: {k: p.get(k) for k in ("teacher_ckpt", *PAIRS_COLUMNS)} for name, p in (pairs or {}).items()
        },
        "seconds_this_invocation": seconds,
        "rows": rows,
    }
    write_json(out / "results.json", result)
    metrics = [m for m in study.metrics if any(r.get(m) is not None for r in rows)]
    generated = [r for r in rows if r["model"] != "real"]
    generated.sort(key=lambda r: (r["model"], str(r.get("sampler")), r.get("nfe") or 0))
    columns = ["model", "sampler", "steps", "nfe", *metrics]
    columns += [c for c in ("fid_std", "kid_std", "images_per_s") if any(c in r for r in rows)]
    lines = [
        f"# {study.name}",
        "",
        f"Measured {info['date'][:10]} on {info['gpu'] or info['cpu']} ({info['threads']} threads), "
        f"torch {info['torch']}, commit {info['commit']}.",
        "",
        "## Training",
        "",
        markdown_table(
            [{**r, "model": m, "overrides": " ".join(r.get("overrides", []))} for m, r in records.items()],
            ["model", "steps", "seconds", "cpu_seconds", "overrides"],
        ),
        "",
        *(
            [
                "Reflow pairs (their generation is part of the student's cost):",
                "",
                markdown_table(
                    [{"pairs": n, **p} for n, p in result["pairs"].items()],
                    ["pairs", *PAIRS_COLUMNS],
                ),
                "",
            ]
            if result["pairs"]
            else []
        ),
        *(by_nfe_table(generated, metrics[0]) if metrics else []),
        "## Samples",
        "",
        markdown_table([*generated, *[r for r in rows if r["model"] == "real"]], columns),
    ]
    with atomic_open(out / "results.md") as f:
        f.write("\n".join(lines) + "\n")
    for metric in metrics:
        plot_metric(generated, metric, out / f"{metric}_vs_nfe.png", study.name)
    if study.figure:
        side_by_side(study, out / "side_by_side.png")
    log.info("results in %s", out)


def plot_metric(rows: list[dict[str, Any]], metric: str, path: Path, title: str) -> None:
    """One line per (model, sampler): ``metric`` against NFE on a log axis, with error bars where known."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get(metric) is not None and r.get("nfe"):
            series.setdefault((r["model"], str(r["sampler"])), []).append(r)
    for (model, sampler), points in sorted(series.items()):
        points.sort(key=lambda r: r["nfe"])
        x = [p["nfe"] for p in points]
        y = [p[metric] for p in points]
        err = [p.get(ERRORS.get(metric, ""), 0.0) or 0.0 for p in points]
        ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=f"{model} / {sampler}")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else " (higher is better)"))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


SAMPLING_KEYS = ("precision", "guidance_scale", *SAMPLER_OPTION_KEYS)


def sampling_config(overrides: list[str]) -> DictConfig:
    """The sampling settings (:data:`SAMPLING_KEYS`) among ``key=value`` evaluation overrides; later wins."""
    kept = [o for o in overrides if o.partition("=")[0] in SAMPLING_KEYS]
    return OmegaConf.from_dotlist(kept)


def figure_rows(study: Study) -> list[tuple[str, str, str, DictConfig]]:
    """``(model, row name, sampler, sampling config)`` of each figure row: ``figure.models`` (model ->
    sampler, default settings), then ``figure.runs`` (``MODEL/RUN``: that evaluation run's sampler and
    settings)."""
    rows = [(m, str(s), str(s), OmegaConf.create()) for m, s in (study.figure.get("models") or {}).items()]
    for entry in study.figure.get("runs") or []:
        model, name = figure_run(entry)
        run = study.runs[model][name]
        cfg = sampling_config([*study.eval_common, *run.overrides])
        rows.append((model, f"{name} ({run.sampler})", run.sampler, cfg))
    return rows


def side_by_side(study: Study, path: Path) -> None:
    """The same seeds and conditions through each figure row at each NFE (rows: model / run @ NFE)."""
    fig_cfg = study.figure
    nfes, n = list(fig_cfg.get("nfe", [1, 5, 10])), int(fig_cfg.get("num_samples", 6))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[tuple[str, torch.Tensor]] = []
    masks = None
    loaded: dict[str, tuple[LoadedModel, Conditions]] = {}  # a model shown in several rows is read once
    for model_name, row_name, sampler, cfg in figure_rows(study):
        if model_name not in loaded:
            model = load_model(checkpoint(study, model_name), device=device)
            ds = instantiate(source_data_config(model.config["data"])).dataset("test")
            items = [ds[i] for i in range(n)]
            labels = torch.stack([s["label"] for s in items]) if model.net.num_classes else None
            masks = torch.stack([s["mask"] for s in items]) if model.net.num_mask_labels else masks
            conditions = Conditions(labels, masks if model.net.num_mask_labels else None, "data:test")
            loaded[model_name] = model, conditions
        model, conditions = loaded[model_name]
        precision = resolve_precision(cfg.get("precision", "fp32"), device, model.spec.spatial_dims).name
        for nfe in nfes:
            steps = steps_for_nfe(model.objective, sampler, nfe)
            if steps is None:
                continue
            images, used, _ = generate_batch(
                model,
                list(range(n)),
                0,
                sampler,
                steps,
                conditions,
                guidance_scale=float(cfg.get("guidance_scale", 1.0)),
                precision=precision,
                options=sampler_options(cfg),
            )
            rows.append((f"{model_name}\n{row_name}, NFE {used}", images))
    if masks is not None:
        rows.insert(0, ("condition\n(mask)", masks.float() / masks.max().clamp(min=1) * 2 - 1))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.35 * len(rows)), squeeze=False)
    for i, (label, images) in enumerate(rows):
        if images.ndim == 5:
            images = mid_slices(images)
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(np.asarray(images[j, 0].cpu()), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(f"{study.name}: same seeds and conditions", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # keep the title clear of the first row
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
