"""Share a trained model: ``python -m motfm.export_model ckpt_path=... out=DIR [metrics=PATH]``.

Writes into ``out`` (each file atomically, ``config.json`` last but one and the card last):

- ``model.safetensors``: the EMA weights of the network (``use_ema=false``: the raw training weights);
- ``config.json``: the model config, the method config, the data spec and the representation (pixels, or
  wavelet levels and band scales: everything
  :func:`motfm.load_pretrained` needs to rebuild the network), the default sampling settings, a summary of
  the training run and the weights' SHA-256;
- ``README.md``: a model card: what the model generates, the training configuration, the metrics of an
  evaluation (``metrics=PATH`` to a ``metrics.json`` of ``python -m motfm.evaluate``, else one found beside
  the checkpoint or in its run folder) and how to load it.

Nothing on this path is pickled: the checkpoint is read with ``weights_only=True``, the export is safetensors
and JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from motfm import __version__
from motfm.checkpoint import CheckpointError, load_state, read_checkpoint, weights_under
from motfm.cli import readable_errors
from motfm.data.base import DataSpec
from motfm.io.atomic import atomic_open, atomic_path, write_json
from motfm.loading import build_model, read_representation
from motfm.metrics.report import markdown_table
from motfm.pretrained import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("solver", "steps", "nfe", "fid", "kid", "mmd_rbf", "cmmd", "ms_ssim", "ssim_paired", "dice")
ORIGIN_KEYS = ("time_input", "class_context", "mask_input", "data_range")
MODEL_KEYS = ("channels", "num_res_blocks", "attention_levels", "head_dim", "conditioning", "class_dim")


def find_metrics(ckpt_path: Path, given: str | None) -> Path | None:
    """The evaluation to report: ``given``, else a ``metrics.json`` beside the checkpoint or in its run
    folder (the checkpoint's grandparent, as ``<run>/checkpoints/last.ckpt``)."""
    if given:
        path = Path(given)
        path = path / "metrics.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"metrics={given}: no metrics.json there")
        return path
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        if (folder / "metrics.json").is_file():
            return folder / "metrics.json"
    return None


def read_metrics(path: Path) -> dict[str, Any]:
    """Read an evaluation's ``metrics.json`` (``results`` rows); errors name the file."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable metrics.json ({type(err).__name__}: {err})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), list):
        raise ValueError(f"{path}: not a metrics.json of motfm.evaluate (no 'results' list)")
    return metrics


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_summary(config: dict[str, Any], ckpt: dict[str, Any], ckpt_path: Path) -> dict[str, Any]:
    """The facts of the training run worth recording (no file paths beyond the checkpoint's name)."""
    data = config.get("data") or {}
    dataset = data.get("dataset") or {}
    method = config.get("method") or {}
    return {
        "checkpoint": ckpt_path.name,
        "global_step": int(ckpt.get("global_step", 0)),
        "epoch": int(ckpt.get("epoch", 0)),
        "method": str(method.get("_target_", "motfm.objectives.flow_matching.FlowMatching")),
        "p_uncond": method.get("p_uncond"),
        "dataset": dataset.get("_target_"),
        "batch_size": data.get("batch_size"),
        "seed": config.get("seed"),
        "lr": (config.get("optimizer") or {}).get("lr"),
        "ema_decay": config.get("ema_decay"),
        "coupling": (config.get("coupling") or {}).get("_target_"),
    }


def model_card(name: str, exported: dict[str, Any], metrics: dict[str, Any] | None, metrics_name: str) -> str:
    """The ``README.md`` of an exported model."""
    spec = DataSpec.from_dict(exported["data_spec"])
    model, training = exported["model"], exported["training"]
    size = "x".join(map(str, spec.image_size))
    conditioning = list(model.get("conditioning") or [])
    lines = [
        f"# {name}",
        "",
        f"A motfm generative model of {spec.spatial_dims}D images ({spec.channels} channel(s), {size}), "
        f"{'conditioned on ' + ' and '.join(conditioning) if conditioning else 'unconditional'}; "
        f"method `{training['method']}`, trained for {training['global_step']} steps. "
        f"The weights are the {'EMA' if exported['weights']['source'] == 'ema' else 'raw training'} weights.",
        "",
    ]
    origin = exported.get("origin")
    if origin:
        lines += [
            f"Imported from {origin['source']} (`{origin['checkpoint']}`), its network fed as the original "
            "code feeds it: "
            + "; ".join(f"{k} {origin[k]}" for k in ORIGIN_KEYS if k in origin)
            + " (samples are returned in [-1, 1]).",
            "",
        ]
    if spec.class_names:
        lines += [
            f"Classes (label: name): {', '.join(f'{i}: {n}' for i, n in enumerate(spec.class_names))}.",
            "",
        ]
    if spec.has_mask:
        names = spec.mask_label_names or tuple(str(i) for i in range(spec.num_mask_labels))
        lines += [f"Mask labels (value: name): {', '.join(f'{i}: {n}' for i, n in enumerate(names))}.", ""]
    items = [(f"model.{k}", model[k]) for k in MODEL_KEYS if k in model]
    items += [(k, v) for k, v in training.items() if v is not None]
    representation = exported.get("representation") or {"kind": "pixel"}
    items += [(f"representation.{k}", v) for k, v in representation.items() if k != "scale"]
    items += [(f"sampling.{k}", v) for k, v in (exported.get("sampling") or {}).items()]
    rows = [{"key": k, "value": v if isinstance(v, str | int | float) else json.dumps(v)} for k, v in items]
    lines += ["## Training configuration", "", markdown_table(rows, ["key", "value"])]
    if metrics is not None:
        results = metrics["results"]
        columns = [c for c in METRIC_COLUMNS if any(r.get(c) is not None for r in results)]
        lines += [
            "## Metrics",
            "",
            f"From `{metrics_name}`: {metrics.get('num_real', '?')} real images "
            f"({metrics.get('ref_split', '?')} split), extractor `{metrics.get('extractor', '?')}`.",
            "",
            markdown_table(results, columns),
        ]
    else:
        lines += ["## Metrics", "", "No evaluation was given (`python -m motfm.evaluate ckpt_path=...`).", ""]
    call = ["16", f"steps={(exported.get('sampling') or {}).get('steps') or 10}", "seed=0"]
    if "class" in conditioning:
        call.insert(1, "labels=[0]")
    if "mask" in conditioning:
        call.insert(1, "masks=masks")
    lines += [
        "## How to load",
        "",
        "```python",
        "import motfm",
        "",
        'gen = motfm.load_pretrained("path/to/this/folder")',
        *(["masks = ...  # integer label maps [m, 1, *spatial]"] if "mask" in conditioning else []),
        f"x = gen.sample({', '.join(call)})  # [16, {spec.channels}, {', '.join(map(str, spec.image_size))}]"
        ", values in [-1, 1]",
        "```",
        "",
        f"Files: `{WEIGHTS_FILE}` (safetensors, sha256 `{exported['weights']['sha256']}`), `{CONFIG_FILE}` "
        f"(model, method and data description). Exported by motfm {exported['motfm_version']}.",
        "",
    ]
    return "\n".join(lines)


def export_model(cfg: DictConfig) -> Path:
    """Export the checkpoint ``cfg.ckpt_path`` into ``cfg.out`` (see the module docstring).

    Returns:
        The output folder.
    """
    from safetensors.torch import save_file

    ckpt_path = Path(cfg.ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt["motfm"]
    config = meta["config"]
    spec = DataSpec.from_dict(meta["data_spec"])
    prefix = "ema.module." if cfg.use_ema else "net."
    state = {k: v.detach().clone().contiguous() for k, v in weights_under(ckpt["state_dict"], prefix).items()}
    if not state:
        raise CheckpointError(f"{ckpt_path}: no weights under '{prefix}' in the checkpoint")
    representation = read_representation(meta.get("representation"), spec, ckpt_path)
    # the stored config must rebuild a net these weights fit
    net, _ = build_model(config, spec, ckpt_path, representation=representation)
    load_state(net, state, ckpt_path)
    metrics_path = find_metrics(ckpt_path, cfg.get("metrics"))
    metrics = read_metrics(metrics_path) if metrics_path is not None else None

    out = Path(cfg.out)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": f"motfm {__version__}"})
    model_cfg = {
        **config["model"],
        "base_ckpt": None,
        "freeze_base": False,
    }  # self-contained: all weights here
    exported = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "motfm_version": __version__,
        "model": model_cfg,
        "method": config.get("method"),
        "data_spec": spec.to_dict(),
        "representation": representation.to_dict(),
        "sampling": config.get("sampling"),
        "weights": {
            "file": WEIGHTS_FILE,
            "source": "ema" if cfg.use_ema else "raw",
            "sha256": sha256(out / WEIGHTS_FILE),
        },
        "training": training_summary(config, ckpt, ckpt_path),
        "metrics": None if metrics_path is None else metrics_path.name,
        "origin": config.get("origin"),  # an imported model's provenance (motfm.import_motfm), else None
    }
    write_json(out / CONFIG_FILE, exported)
    name = cfg.get("name") or out.resolve().name
    with atomic_open(out / "README.md", "w", encoding="utf-8") as f:
        f.write(model_card(name, exported, metrics, str(metrics_path.name if metrics_path else "")))
    log.info("exported %s (%d tensors) to %s", ckpt_path, len(state), out)
    return out


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export_model")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    print(export_model(cfg))


if __name__ == "__main__":
    main()
