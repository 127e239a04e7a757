"""Studies: the file format, the dry run, the report, and a tiny study end to end (slow)."""

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cli_helpers import TINY_2D
from motfm.objectives.base import SamplerOptions
from motfm.objectives.diffusion import Diffusion
from motfm.objectives.flow_matching import FlowMatching
from motfm.sample import SAMPLER_OPTION_KEYS, sampler_options
from motfm.study.report import by_nfe_table, figure_rows, plot_metric, sampling_config, steps_for_nfe
from motfm.study.run import dry_run, main
from motfm.study.spec import StudyError, load_study

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def write_study(tmp_path, models, runs, figure=None):
    common = ", ".join(f'"{o}"' for o in [*TINY_2D, "model.conditioning=[class,mask]", "trainer.max_steps=4"])
    text = textwrap.dedent(
        f"""
        name: tiny
        out_dir: {tmp_path / "runs"}
        results_dir: {tmp_path / "results"}
        train:
          common: [{common}]
          models: {json.dumps(models)}
        evaluate:
          common: ["extractor=random_conv", "num_samples=4", "batch_size=4", "kid_subsets=4",
                   "ms_ssim_pairs=4", "phantom_classifier.num_train=32", "phantom_classifier.num_val=8",
                   "phantom_classifier.epochs=1", "cmmd=false", "paths.cache_dir={tmp_path / "cache"}"]
          runs: {json.dumps(runs)}
        figure: {json.dumps(figure or {})}
        metrics: [fid, kid, dice, label_acc]
        """
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_study_file_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "missing.yaml")
    path = write_study(tmp_path, {"fm": ["method=fm"]}, {"ddpm": {"ddim": [1]}})
    with pytest.raises(
        StudyError, match=r"study.yaml: evaluations, figure or pairs name models that are not trained"
    ):
        load_study(path)
    (tmp_path / "bad.yaml").write_text("name: x\n")
    with pytest.raises(StudyError, match="bad.yaml: malformed study"):
        load_study(tmp_path / "bad.yaml")


def test_figure_rows_take_their_sampler_and_sampling_settings_from_evaluation_runs(tmp_path):
    runs = {
        "fm": {
            "euler": [1],
            "bf16": {
                "sampler": "heun",
                "steps": [2],
                "overrides": ["precision=bf16", "time_grid=edm", "seed=3"],
            },
        }
    }
    figure = {"models": {"fm": "euler"}, "runs": ["fm/bf16", "fm/euler"]}
    rows = figure_rows(load_study(write_study(tmp_path, {"fm": ["method=fm"]}, runs, figure)))
    assert [(m, name, sampler) for m, name, sampler, _ in rows] == [
        ("fm", "euler", "euler"),
        ("fm", "bf16 (heun)", "heun"),
        ("fm", "euler (euler)", "euler"),
    ]
    assert dict(rows[0][3]) == {} and dict(rows[2][3]) == {}
    assert dict(rows[1][3]) == {"precision": "bf16", "time_grid": "edm"}  # not the seed, not the extractor
    path = write_study(tmp_path, {"fm": ["method=fm"]}, runs, {"runs": ["fm/fp32"]})
    with pytest.raises(StudyError, match=r"figure.runs names 'fm/fp32', which is not an evaluate run"):
        load_study(path)


def test_dry_run_builds_every_model(tmp_path):
    path = write_study(
        tmp_path, {"fm": ["method=fm"], "ddpm": ["method=ddpm"], "mf": ["method=meanflow"]}, {}
    )
    assert dry_run(load_study(path)) == ["fm", "ddpm", "mf"]


def test_steps_for_nfe_counts_evaluations_per_step():
    assert steps_for_nfe(FlowMatching(), "midpoint", 10) == 5
    assert steps_for_nfe(FlowMatching(), "midpoint", 5) is None
    assert steps_for_nfe(FlowMatching(), "euler", 5) == 5
    assert steps_for_nfe(FlowMatching(), "heun", 5) == 3  # 2 N - 1: the last step is Euler's
    assert steps_for_nfe(FlowMatching(), "heun", 4) is None
    assert steps_for_nfe(FlowMatching(), "rk4", 7) == 2  # 4 N - 1: the last step is Ralston's third-order
    assert steps_for_nfe(FlowMatching(), "rk4", 8) is None
    assert steps_for_nfe(Diffusion(), "dpmpp_2m", 5) == 5


def test_metric_plot_is_written(tmp_path):
    rows = [
        {"model": "a", "sampler": "euler", "nfe": n, "fid": 100 / n, "fid_std": 1.0} for n in (1, 2, 5)
    ] + [{"model": "b", "sampler": "ddim", "nfe": n, "fid": 200 / n} for n in (1, 10)]
    plot_metric(rows, "fid", tmp_path / "fid.png", "t")
    assert (tmp_path / "fid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


STUDIES = sorted(EXPERIMENTS.glob("*/study*.yaml"))
# the GPU-sized studies read real datasets; their dry run swaps in the phantom of the same dimension
PHANTOM = {
    "study_camus_gpu.yaml": ["data=echo_phantom", "data.dataset.size=256"],
    "study_msd_gpu.yaml": ["data=brain_phantom", "data.dataset.size=32"],
}


def test_experiments_have_studies():
    assert {p.parent.name for p in STUDIES} >= {"speed_quality", "one_step"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_studies_parse(path):
    study = load_study(path)
    assert study.runs and study.models


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_studies_build_every_model(path, tmp_path):
    study = load_study(path, out_dir=tmp_path)
    assert dry_run(study, PHANTOM.get(path.name)) == list(study.models)


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    path = write_study(
        tmp_path,
        {"fm": ["method=fm"], "ddpm": ["method=ddpm"]},
        {
            "fm": {
                "euler": [1, 2],
                "bf16": {"sampler": "euler", "steps": [1], "overrides": ["precision=bf16"]},
            },
            "ddpm": {"dpmpp_2m": [1, 2]},
        },
        {"models": {"fm": "euler", "ddpm": "dpmpp_2m"}, "runs": ["fm/bf16"], "nfe": [1, 2], "num_samples": 2},
    )
    main([str(path)])
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    generated = [(r["model"], r["sampler"], r["nfe"]) for r in results["rows"] if r["model"] != "real"]
    assert generated == [
        ("fm", "euler", 1),
        ("fm", "euler", 2),
        ("fm", "bf16", 1),
        ("ddpm", "dpmpp_2m", 1),
        ("ddpm", "dpmpp_2m", 2),
    ]
    assert set(results["train"]) == {"fm", "ddpm"} and results["train"]["fm"]["seconds"] > 0
    for f in ("results.md", "fid_vs_nfe.png", "kid_vs_nfe.png", "side_by_side.png"):
        assert (tmp_path / "results" / f).is_file(), f
    # a second invocation trains and evaluates nothing again
    before = (tmp_path / "runs" / "fm" / "eval_euler" / "metrics.json").stat().st_mtime
    main([str(path)])
    assert (tmp_path / "runs" / "fm" / "eval_euler" / "metrics.json").stat().st_mtime == before


def test_placeholders_must_name_models_trained_before(tmp_path):
    path = write_study(tmp_path, {"student": ["init_ckpt={ckpt:teacher}"], "teacher": ["method=fm"]}, {})
    with pytest.raises(StudyError, match="student needs teacher, which must be trained before it"):
        load_study(path)
    path = write_study(tmp_path, {"student": ["data.dataset.root={pairs:nowhere}"]}, {})
    with pytest.raises(StudyError, match=r"uses \{pairs:nowhere\}, which is not in pairs"):
        load_study(path)


def test_placeholders_resolve_to_checkpoints_and_pairs(tmp_path):
    from motfm.study.run import resolve_overrides

    path = write_study(tmp_path, {"teacher": ["method=fm"], "student": ["init_ckpt={ckpt:teacher}"]}, {})
    study = load_study(path)
    (out,) = resolve_overrides(study, ["init_ckpt={ckpt:teacher}"], {})
    assert out == f"init_ckpt={tmp_path / 'runs' / 'teacher' / 'train' / 'checkpoints' / 'last.ckpt'}"
    known = {"p": {"num_pairs": 1}}
    study.pairs = {"p": {"teacher": "teacher", "overrides": []}}
    (out,) = resolve_overrides(study, ["data.dataset.root={pairs:p}"], known)
    assert out == f"data.dataset.root={tmp_path / 'runs' / 'pairs' / 'p'}"


def test_evaluations_fill_caches_with_the_cheapest_run_then_go_longest_first(tmp_path, monkeypatch):
    import motfm.study.run as run_module

    clipped = {"sampler": "dpmpp_2m", "steps": [20], "overrides": ["clip_x0=true"]}
    runs = {"fm": {"euler": [1, 2], "midpoint": [5]}, "ddpm": {"ddim": [1], "dpmpp_2m_clip": clipped}}
    study = load_study(write_study(tmp_path, {"fm": ["method=fm"], "ddpm": ["method=ddpm"]}, runs))
    calls = []

    def fake_run(module, overrides, log_file, threads=None):
        sampler = next(o for o in overrides if o.startswith("samplers="))[len("samplers=[") : -1]
        calls.append((log_file.parent.parent.name, log_file.parent.name, threads, sampler))
        assert ("clip_x0=true" in overrides) == (log_file.parent.name == "eval_dpmpp_2m_clip")
        metrics = {"results": [{"sampler": sampler, "nfe": 1}], "reference": None}
        log_file.parent.mkdir(parents=True, exist_ok=True)
        (log_file.parent / "metrics.json").write_text(json.dumps(metrics))
        return 0.0

    monkeypatch.setattr(run_module, "_run", fake_run)
    monkeypatch.setattr(run_module, "THREADS", 1)
    rows = run_module.evaluate_models(study, jobs=1)
    assert [c[:2] for c in calls] == [
        ("ddpm", "eval_ddim"),  # NFE 1: fills the caches
        ("ddpm", "eval_dpmpp_2m_clip"),  # 20
        ("fm", "eval_midpoint"),  # 5 steps x 2 evaluations
        ("fm", "eval_euler"),  # 3
    ]
    assert calls[1][3] == "dpmpp_2m"  # a named run evaluates its sampler
    assert [(r["model"], r["sampler"]) for r in rows] == [  # the study's order, named runs by their name
        ("fm", "euler"),
        ("fm", "midpoint"),
        ("ddpm", "ddim"),
        ("ddpm", "dpmpp_2m_clip"),
    ]
    calls.clear()
    for metrics in tmp_path.rglob("metrics.json"):
        metrics.unlink()
    run_module.evaluate_models(study, jobs=2)
    assert calls[0][:3] == ("ddpm", "eval_ddim", 2)  # alone, on both jobs' threads
    assert {c[2] for c in calls[1:]} == {None}  # the others on the study's default (THREADS)


def test_a_named_run_needs_steps(tmp_path):
    runs = {"fm": {"euler_edm": {"sampler": "euler", "overrides": ["time_grid=edm"]}}}
    with pytest.raises(StudyError, match=r"evaluate.runs.fm.euler_edm must be a list of steps"):
        load_study(write_study(tmp_path, {"fm": ["method=fm"]}, runs))


def test_headline_table_pivots_a_metric_by_nfe_with_its_std():
    rows = [
        {"model": "fm", "sampler": "euler", "nfe": 1, "fid": 198.04, "fid_std": 2.84},
        {"model": "fm", "sampler": "euler", "nfe": 10, "fid": 36.4, "fid_std": 1.7},
        {"model": "ddpm", "sampler": "ddim", "nfe": 10, "fid": 171.5},
        {"model": "ddpm", "sampler": "ddim", "nfe": 50, "fid": None},
    ]
    lines = by_nfe_table(rows, "fid")
    assert lines[2] == "| model | sampler | NFE 1 | NFE 10 |"  # NFE 50 has no value anywhere
    assert "| fm | euler | 198.0 ± 2.8 | 36.4 ± 1.7 |" in lines
    assert "| ddpm | ddim | - | 171.5 |" in lines


def test_a_figure_row_carries_every_sampler_option_to_sampling():
    # Every SamplerOptions field is set by exactly one config key, and a figure row taken from an evaluation
    # run's overrides passes each of them (non-default values) through to the sampler.
    fields = {f.name for f in dataclasses.fields(SamplerOptions)}
    assert sorted(SAMPLER_OPTION_KEYS.values()) == sorted(fields)
    values = {"time_grid": "edm", "time_shift": 3.0, "rho": 5.0, "rtol": 1e-3, "atol": 1e-4, "eta": 0.5,
              "clip_x0": True}  # fmt: skip
    assert values.keys() == SAMPLER_OPTION_KEYS.keys()
    overrides = [f"{k}={v}" for k, v in values.items()] + ["seed=4", "num_samples=8"]
    cfg = sampling_config(overrides)
    assert set(cfg) == set(values)
    options = sampler_options(cfg)
    assert options == SamplerOptions(**{SAMPLER_OPTION_KEYS[k]: v for k, v in values.items()})
    assert options != SamplerOptions()
    assert sampler_options(OmegaConf.create({"time_shift": 2})).shift == 2.0  # an int read as a float
