"""``python -m motfm.downstream``: the results files of a tiny experiment, restarts, and one-line errors."""

import json
import textwrap
from pathlib import Path

import pytest

from cli_helpers import TINY_2D
from motfm.downstream import run as run_module
from motfm.downstream.run import main
from motfm.downstream.spec import DownstreamError, load_experiment

pytest.importorskip("monai", reason="the downstream segmenter needs MONAI: pip install -e '.[downstream]'")

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "downstream"
TINY_MODEL = [o for o in TINY_2D if o.startswith(("model.", "data.dataset."))]
LABELS = ["lv_cavity", "myocardium", "left_atrium"]


def write_experiment(
    tmp_path, checkpoints=None, steps=2, regimes=("real", "real_matched", "synthetic", "both")
):
    """A tiny experiment: two generators (flow matching, 1 Euler step; DDPM, 2 DPM-Solver++ steps), 2 seeds
    (``--dry-run`` builds them untrained)."""
    overrides = json.dumps(TINY_MODEL)
    ckpts = checkpoints or {"fm": str(tmp_path / "no_fm.ckpt"), "ddpm": str(tmp_path / "no_ddpm.ckpt")}
    text = textwrap.dedent(
        f"""
        name: tiny
        out_dir: {tmp_path / "out"}
        results_dir: {tmp_path / "results"}
        seeds: [0, 1]
        data: {{real_items: 2, synthetic_items: 4, test_items: 4}}
        checkpoints: {json.dumps(ckpts)}
        checkpoint_training:
          fm: ["model=unet2d_small", "model.conditioning=[class,mask]", "method=fm"]
          ddpm: ["model=unet2d_small", "model.conditioning=[class,mask]", "method=ddpm"]
        missing_hint: train one first with python -m motfm.train
        generators:
          fm_euler_1: {{checkpoint: fm, sampler: euler, steps: 1}}
          ddpm_dpmpp_2: {{checkpoint: ddpm, sampler: dpmpp_2m, steps: 2}}
        generation: {{batch_size: 4}}
        regimes: {json.dumps(list(regimes))}
        segmenter: {{features: [4, 4, 8, 8, 8, 4], training: {{steps: {steps}, batch_size: 2, lr: 1.0e-3}}}}
        classifier: {{width: 4, training: {{steps: {steps}, batch_size: 2, lr: 1.0e-3}}}}
        dry_run:
          checkpoint_overrides: {overrides}
        """
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def check_results(results_dir, seeds, num_test, generators):
    results = json.loads((results_dir / "results.json").read_text())
    assert results["dice_labels"] == LABELS
    assert results["protocol"]["seeds"] == seeds and results["protocol"]["test_items"] == num_test
    assert set(results["run"]) >= {"machine", "date", "wall_seconds", "threads", "checkpoints"}
    rows = results["rows"]
    expected = [("real", None), ("real_matched", None)]
    expected += [(r, g) for r in ("synthetic", "both") for g in generators]
    assert [(r["regime"], r["generator"]) for r in rows] == expected
    counts = {"real": (2, 0), "real_matched": (4, 0), "synthetic": (0, 4), "both": (2, 4)}
    for row in rows:
        assert (row["num_real"], row["num_synthetic"]) == counts[row["regime"]]
        assert row["seeds"] == seeds
        assert set(row["dice"]) == {*LABELS, "mean"}
        for stat in [*row["dice"].values(), row["accuracy"]]:
            assert len(stat["values"]) == len(seeds) and 0 <= stat["mean"] <= 1 and stat["std"] >= 0
    assert set(results["generators"]) == set(generators)
    md = (results_dir / "results.md").read_text()
    assert md.count("\n| both |") == md.count("\n| synthetic |") == len(generators)
    assert (results_dir / "dice_vs_nfe.png").stat().st_size > 1000
    assert (results_dir / "examples.png").stat().st_size > 1000
    return results


def test_dry_run_results_restart_and_protocol_guard(tmp_path, monkeypatch):
    path = write_experiment(tmp_path)
    main([str(path), "--dry-run", "--generators", "fm_euler_1"])
    check_results(tmp_path / "results", [0, 1], 4, ["fm_euler_1"])

    trained = []
    train_and_score = run_module.train_and_score
    monkeypatch.setattr(
        run_module,
        "train_and_score",
        lambda exp, items, *a: trained.append(items.num_synthetic) or train_and_score(exp, items, *a),
    )
    main([str(path), "--dry-run"])  # the remaining generator only
    assert trained == [4, 4] * 2  # synthetic and both of ddpm_dpmpp_2, two seeds
    results = check_results(tmp_path / "results", [0, 1], 4, ["fm_euler_1", "ddpm_dpmpp_2"])
    assert {g: v["nfe"] for g, v in results["generators"].items()} == {"fm_euler_1": 1, "ddpm_dpmpp_2": 2}
    assert len(list((tmp_path / "out" / "runs").rglob("seed_*.json"))) == 12
    assert len(list((tmp_path / "out" / "synthetic").glob("*.pt"))) == 2

    def no_work(*args, **kwargs):
        raise AssertionError("a finished cell was computed again")

    monkeypatch.setattr(run_module, "train_and_score", no_work)
    monkeypatch.setattr(run_module, "synthetic_items", no_work)
    main([str(path), "--dry-run"])  # everything is read back
    assert json.loads((tmp_path / "results" / "results.json").read_text())["rows"] == results["rows"]

    write_experiment(tmp_path, steps=3)
    with pytest.raises(DownstreamError, match="seed_0.json: holds a result of another protocol"):
        run_module.run(load_experiment(path, dry_run=True))


def test_missing_checkpoint_is_one_line_with_what_to_run(tmp_path, capsys):
    path = write_experiment(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no_ddpm.ckpt: checkpoint 'ddpm' not found; train one first with python -m motfm.train" in err
    assert not (tmp_path / "out").exists()


def test_experiment_file_errors(tmp_path):
    path = write_experiment(tmp_path)
    with pytest.raises(DownstreamError, match="--ckpt names \\['gan'\\]"):
        load_experiment(path, {"gan": "x.ckpt"})
    exp = load_experiment(path, {"fm": "other.ckpt"}, out_dir=tmp_path / "o")
    assert exp.checkpoints["fm"] == Path("other.ckpt") and exp.out_dir == tmp_path / "o"
    with pytest.raises(DownstreamError, match="regimes must be"):
        load_experiment(write_experiment(tmp_path, regimes=["real", "mixed"]))
    with pytest.raises(DownstreamError, match="not found"):
        load_experiment(tmp_path / "nothing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("segmenter:", "segmentr:"))
    with pytest.raises(DownstreamError, match="bad.yaml: malformed experiment"):
        load_experiment(bad)
    dry = load_experiment(EXPERIMENTS / "echo2d.yaml", dry_run=True)
    full = load_experiment(EXPERIMENTS / "echo2d.yaml")
    assert dry.segmenter_training.steps < full.segmenter_training.steps and dry.seeds == [0]
    assert full.seeds == [0, 1, 2] and full.real_items == 32 and not full.dry_run
