"""The tables and pictures of a downstream experiment: ``results.json``, ``results.md``, ``dice_vs_nfe.png``
(Dice and accuracy of every regime against the generator's NFE) and ``examples.png`` (label maps, their real
images and every generator's images for them).

Every cell is summarised over its seeds by the mean and the sample standard deviation (``ddof = 1``; 0 for a
single seed), with the per-seed values kept in ``results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from motfm.data.base import DataSpec
from motfm.downstream.items import Items
from motfm.downstream.regimes import REGIMES
from motfm.downstream.spec import Experiment
from motfm.io.atomic import atomic_path, write_json

REGIME_TEXT = {
    "real": "small real subset",
    "real_matched": "real images of the synthetic items' masks (reference)",
    "synthetic": "synthetic only",
    "both": "small real subset + synthetic",
}


def summary(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` of per-seed values (sample std, 0 for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


def aggregate(exp: Experiment, records: list[dict[str, Any]], spec: DataSpec) -> list[dict[str, Any]]:
    """One row per (regime, generator) cell, in the order real, real_matched, synthetic, both (generators in
    the file's order), each with its Dice per label, mean Dice and accuracy over the seeds."""
    cells: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        cells.setdefault((r["regime"], r["generator"]), []).append(r)
    order = {name: i for i, name in enumerate(exp.generators)}
    keys = sorted(
        cells, key=lambda k: (REGIMES.index(k[0]) if k[0] != "real_matched" else 0.5, order.get(k[1], -1))
    )
    rows = []
    for regime, generator in keys:
        runs = cells[(regime, generator)]
        gen = exp.generators.get(generator) if generator else None
        rows.append(
            {
                "regime": regime,
                "generator": generator,
                "checkpoint": gen.checkpoint if gen else None,
                "sampler": gen.sampler if gen else None,
                "steps": gen.steps if gen else None,
                "num_real": runs[0]["num_real"],
                "num_synthetic": runs[0]["num_synthetic"],
                "seeds": [r["seed"] for r in runs],
                "dice": {
                    n: summary([r["dice"][n] for r in runs]) for n in [*spec.mask_label_names[1:], "mean"]
                },
                "accuracy": summary([r["accuracy"] for r in runs]),
                "train_seconds": float(np.mean([r["seconds"] for r in runs])),
            }
        )
    return rows


def generation_summary(exp: Experiment, generation: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per generator: sampler, steps, NFE, number of images and the time it took to generate them."""
    out = {}
    for name, info in generation.items():
        gen = exp.generators[name]
        out[name] = {
            "checkpoint": gen.checkpoint,
            "sampler": gen.sampler,
            "steps": gen.steps,
            "nfe": int(info["nfe"]),
            "images": int(info["num_images"]),
            "seconds": float(info["seconds"]),
        }
    return out


def _pm(s: dict[str, Any], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The results table (and the generation costs) as markdown."""
    labels = results["dice_labels"]
    gens = results["generators"]
    run, protocol = results["run"], results["protocol"]
    lines = [
        f"# Downstream: {results['name']}",
        "",
        f"{run['date']}; {run['machine']['processor']}, {run['machine']['cpu_count']} CPUs, "
        f"torch {run['machine']['torch']}, {run['device']}, {run['threads']} thread(s); "
        f"load average at start {run['machine']['load_average']}, at end {run['load_average_end']}. "
        f"This invocation: {run['wall_seconds'] / 60:.1f} min; all cells (also those read back from earlier "
        f"invocations): {results['compute']['cell_seconds'] / 60:.1f} min of training and scoring, "
        f"{results['compute']['generation_seconds'] / 60:.1f} min of generation.",
        f"Test: {run['test_items']} real items of the '{protocol['test_split']}' split; "
        f"mean ± std over seeds {protocol['seeds']}.",
        "",
        "| regime | generator | NFE | real + synthetic items | "
        + " | ".join(f"Dice {n}" for n in labels)
        + " | Dice mean | accuracy |",
        "|---|---|---|---|" + "---|" * len(labels) + "---|---|",
    ]
    for row in results["rows"]:
        g = row["generator"]
        nfe = str(gens[g]["nfe"]) if g in gens else "-"
        name = f"{g} ({row['sampler']}, {row['steps']} steps)" if g else "-"
        lines.append(
            f"| {row['regime']} | {name} | {nfe} | {row['num_real']} + {row['num_synthetic']} | "
            + " | ".join(_pm(row["dice"][n]) for n in labels)
            + f" | {_pm(row['dice']['mean'])} | {_pm(row['accuracy'])} |"
        )
    lines += ["", "Regimes: " + "; ".join(f"**{k}**: {v}" for k, v in REGIME_TEXT.items()) + ".", ""]
    if gens:
        lines += [
            "| generator | checkpoint | sampler | steps | NFE | images | generation seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {g['checkpoint']} | {g['sampler']} | {g['steps']} | {g['nfe']} | {g['images']} | "
            f"{g['seconds']:.1f} |"
            for n, g in gens.items()
        ]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Mean Dice and accuracy against NFE: one colour per checkpoint and sampler, synthetic solid and both
    dashed, the real regimes as horizontal lines with a band of ± one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = results["generators"]
    families = sorted({(g["checkpoint"], g["sampler"]) for g in gens.values()})
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, (metric, title) in zip(
        axes, (("dice", "mean Dice on the real test split"), ("accuracy", "accuracy on the real test split"))
    ):

        def stat(row: dict[str, Any], metric: str = metric) -> dict[str, Any]:
            return row["dice"]["mean"] if metric == "dice" else row["accuracy"]

        for row in results["rows"]:
            if row["generator"] is None:
                s, grey = stat(row), "black" if row["regime"] == "real" else "grey"
                ax.axhline(s["mean"], color=grey, lw=1, label=f"{row['regime']} ({row['num_real']} real)")
                ax.axhspan(s["mean"] - s["std"], s["mean"] + s["std"], color=grey, alpha=0.12)
        for i, (ckpt, sampler) in enumerate(families):
            for regime, style in (("synthetic", "-"), ("both", "--")):
                rows = [
                    r
                    for r in results["rows"]
                    if r["regime"] == regime and (r["checkpoint"], r["sampler"]) == (ckpt, sampler)
                ]
                if rows:
                    ax.errorbar(
                        [gens[r["generator"]]["nfe"] for r in rows],
                        [stat(r)["mean"] for r in rows],
                        yerr=[stat(r)["std"] for r in rows],
                        color=colours[i % len(colours)],
                        ls=style,
                        marker="o",
                        capsize=3,
                        label=f"{regime}: {ckpt}, {sampler}",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("generator NFE")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def examples(
    conditions: Items, synthetic: dict[str, Items], num_labels: int, path: Path, count: int = 8
) -> None:
    """A picture of the first ``count`` conditioning items: their label map, their real image (never used
    to generate) and each generator's image for them, one row each (3D: mid axial slices)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def flat(x: Tensor) -> Tensor:
        x = x[:count, 0].float()
        return x[:, x.shape[1] // 2] if x.ndim == 4 else x

    rows = {
        "label map": flat(conditions.masks) / max(1, num_labels - 1) * 2 - 1,
        "real image": flat(conditions.images),
    }
    rows.update({name: flat(items.images) for name, items in synthetic.items()})
    n = rows["real image"].shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows.items()):
        ax.imshow(torch.cat(list(images), dim=1).numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, loc="left", fontsize=8, pad=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_report(
    exp: Experiment,
    records: list[dict[str, Any]],
    generation: dict[str, dict[str, Any]],
    run_info: dict[str, Any],
    spec: DataSpec,
    conditions: Items,
    synthetic: dict[str, Items],
) -> dict[str, Any]:
    """Write ``results.json``, ``results.md``, ``dice_vs_nfe.png`` and (with synthetic sets)
    ``examples.png`` into ``exp.results_dir``; returns the content of ``results.json``."""
    results = {
        "name": exp.name,
        "experiment": str(exp.path),
        "protocol": exp.protocol(),
        "run": run_info,
        "dice_labels": list(spec.mask_label_names[1:]),
        "class_names": list(spec.class_names),
        "generators": generation_summary(exp, generation),
        "rows": aggregate(exp, records, spec),
        "compute": {
            "cell_seconds": float(sum(r["seconds"] for r in records)),
            "generation_seconds": float(sum(g["seconds"] for g in generation.values())),
        },
    }
    exp.results_dir.mkdir(parents=True, exist_ok=True)
    write_json(exp.results_dir / "results.json", results)
    with atomic_path(exp.results_dir / "results.md") as tmp:
        tmp.write_text(markdown(results) + "\n")
    plot(results, exp.results_dir / "dice_vs_nfe.png")
    if synthetic:
        examples(conditions, synthetic, spec.num_mask_labels, exp.results_dir / "examples.png")
    return results
