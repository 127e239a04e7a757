"""Evaluate a model or a set of samples against real data:
``python -m motfm.evaluate ckpt_path=... steps=[1,2,5,10] samplers=[euler,midpoint] num_samples=256`` or
``python -m motfm.evaluate samples=.../samples.npz``.

With ``ckpt_path`` alone, samples are generated on the fly (:func:`motfm.sample.generate_batch`) for every
sampler x steps pair, all from the same seeded noise; with ``samples`` the samples written by
``motfm.sample`` are scored (a ``samples.npz`` or its folder, or a folder of ``volumes/*.nii.gz``). The
reference set is the ``ref_split`` split of the checkpoint's training data (its data config is stored in the
checkpoint; ``data_overrides`` may change e.g. the root folder); conditional models are conditioned on the
labels / masks of the reference items, sample ``i`` on item ``i mod num_ref``.

Metrics of each generated set (one table row per sampler / steps):

- ``fid``, ``kid`` (``kid_std``): Fréchet (Heusel et al. 2017) and kernel (Bińkowski et al. 2018) distances on
  the features of ``extractor`` (TF-FID InceptionV3 by default; volumes through 2.5D slices), plus
  ``mmd_rbf`` for volumes (Gaussian-RBF MMD^2, Gretton et al. 2012, the "3D MMD"); ``cmmd`` (Jayasumana et al.
  2024) when the CLIP extractor is available, else a note; ``is`` (Salimans et al. 2016) when the extractor
  has a classifier head;
- ``precision`` / ``recall`` (Kynkäänniemi et al. 2019, k-NN balls with ``manifold_k.precision_recall`` = 3)
  and ``density`` / ``coverage`` (Naeem et al. 2020, ``manifold_k.density_coverage`` = 5) on the same features
  and the same real set (see :mod:`motfm.metrics.manifold`); each row records its ``pr_k`` and ``dc_k``;
- ``ms_ssim``: mean MS-SSIM of random pairs of generated images (diversity, Odena et al. 2017; the reference
  row gives the value of the real set); ``ssim_paired``: SSIM of mask-conditioned samples against the real
  image whose mask conditioned them;
- ``psd_hf_log_error`` / ``psd_hf_ratio``: high-frequency fidelity, the radially averaged power spectrum of
  the samples against the reference images above a quarter of the sampling frequency (mean absolute log10
  difference, and the power ratio: < 1 blur, > 1 noise; :mod:`motfm.metrics.spectrum`);
- on the embedded phantoms: ``dice`` (mean and per label) of the deterministic segmentation of
  mask-conditioned samples against their masks (``dice_vs_random_real`` for models without masks:
  against the masks of random real items, a chance baseline), and ``label_acc`` of class-conditioned samples
  by :mod:`motfm.metrics.phantom_classifier`;
- ``nfe``, ``seconds`` and ``images_per_s`` of the generation.

Writes ``metrics.json`` (every value with the extractor name, weights hash and the numbers of real and
generated images) and ``metrics.md`` (the table) into ``out_dir``, atomically, and only when everything
succeeded. A missing feature extractor stops the run with its message before any work.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from motfm.cli import readable_errors
from motfm.evaluation.generation import generate_sets
from motfm.evaluation.inputs import data_config, load_reference, read_samples, resolve_source
from motfm.evaluation.scorer import Scorer, table_columns
from motfm.metrics.report import build_extractor, markdown_table, write_report
from motfm.runtime import pick_device

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation as configured; returns the content of ``metrics.json``.

    Raises:
        ExtractorUnavailable: the feature extractor cannot be built (nothing is written then).
        InputError, CheckpointError, DataError: missing or bad inputs (nothing is written then).
    """
    device = pick_device(cfg.device)
    source = resolve_source(cfg, device)
    extractor = build_extractor(
        cfg.extractor, source.spec.spatial_dims, cfg.extractor_kwargs, cfg.slices_2p5d, device
    )
    data_cfg = data_config(cfg, source)
    reference = load_reference(data_cfg, cfg.ref_split, cfg.num_ref)
    scorer = Scorer(cfg, source, data_cfg, reference, extractor, device)
    sets = (
        [read_samples(source.samples)]
        if source.samples is not None
        else generate_sets(cfg, source.model, reference)
    )
    rows = []
    for generated in sets:
        row = scorer.score(generated)
        log.info("%s", {k: v for k, v in row.items() if not k.startswith("dice/")})
        rows.append(row)
    reference_row = scorer.reference_row()
    described = extractor.describe()
    for row in rows:
        row.update(described)
    result = {
        "ckpt_path": source.ckpt_path,
        "samples": None if source.samples is None else str(source.samples),
        "spatial_dims": source.spec.spatial_dims,
        "conditioning": source.conditioning,
        "dataset": data_cfg.dataset.get("_target_"),
        "ref_split": cfg.ref_split,
        "num_real": reference.images.shape[0],
        **described,
        "ref_features_from_cache": scorer.ref_from_cache,
        "seed": cfg.seed,
        "guidance_scale": cfg.guidance_scale,
        "manifold_k": OmegaConf.to_container(cfg.manifold_k),
        "notes": scorer.notes,
        "reference": reference_row,
        "results": rows,
    }
    columns = table_columns([*rows, reference_row])
    lines = [
        f"# Evaluation of {source.ckpt_path if source.samples is None else source.samples}",
        "",
        f"Extractor `{extractor.name}` (weights {extractor.weights_hash}); "
        f"{reference.images.shape[0]} real images ({cfg.ref_split} split of "
        f"`{data_cfg.dataset.get('_target_')}`), seed {cfg.seed}.",
        "",
        markdown_table([*rows, reference_row], columns),
        f"k-NN balls: precision/recall k={cfg.manifold_k.precision_recall} (Kynkäänniemi et al. 2019), "
        f"density/coverage k={cfg.manifold_k.density_coverage} (Naeem et al. 2020).",
        "",
    ]
    lines += [f"- {note}" for note in scorer.notes]
    write_report(cfg.out_dir, result, "\n".join(lines) + "\n")
    log.info("wrote %s", Path(cfg.out_dir) / "metrics.json")
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
@readable_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point; bad input (a missing feature extractor too) exits with status 2 and one line."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


if __name__ == "__main__":
    main()
