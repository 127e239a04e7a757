"""Every method trains, samples and evaluates through the same CLIs; NFE is reported exactly; samplers of
another method are refused in one line."""

import pytest
import torch

from cli_helpers import FAST_EVAL, TINY_2D, TINY_3D, compose_config
from motfm.checkpoint import read_checkpoint
from motfm.evaluate import evaluate
from motfm.objectives.base import SamplerError
from motfm.sample import sample
from motfm.train import train

MASK_CLASS = "model.conditioning=[class,mask]"


@pytest.mark.parametrize("method", ["ddpm", "meanflow"])
@pytest.mark.parametrize("tiny", [TINY_2D, TINY_3D], ids=["2d", "3d"])
def test_fast_dev_run_of_each_method_with_mask_and_class(tmp_path, method, tiny):
    cond = MASK_CLASS
    cfg = compose_config("train", [*tiny, f"method={method}", cond, "+trainer.fast_dev_run=2"], tmp_path)
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    assert "val/loss_ema" in result["metrics"]


@pytest.fixture(scope="module", params=["ddpm", "meanflow"])
def method_ckpt(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    cfg = compose_config(
        "train", [*TINY_2D, f"method={request.param}", MASK_CLASS, "trainer.max_epochs=1"], out
    )
    return request.param, train(cfg)["last_ckpt"]


def run_sample(ckpt, out_dir, *overrides):
    return sample(compose_config("sample", [f"ckpt_path={ckpt}", f"out_dir={out_dir}", *overrides], out_dir))


def test_checkpoint_records_its_method(method_ckpt):
    method, ckpt = method_ckpt
    assert read_checkpoint(ckpt)["motfm"]["method"] == method


def test_sample_cli_reports_exact_nfe_for_each_sampler(method_ckpt, tmp_path):
    method, ckpt = method_ckpt
    cases = {"ddpm": [("ddpm", 3, 3), ("ddim", 2, 2), ("dpmpp_2m", 4, 4)], "meanflow": [("meanflow", 1, 1)]}
    for sampler, steps, nfe in cases[method]:
        out = tmp_path / sampler
        info = run_sample(ckpt, out, f"sampler={sampler}", f"steps={steps}", "num_samples=3", "batch_size=2")
        assert (info["method"], info["sampler"], info["nfe"]) == (method, sampler, nfe)
    # guidance evaluates both branches: twice the NFE
    sampler = cases[method][0][0]
    info = run_sample(
        ckpt, tmp_path / "cfg", f"sampler={sampler}", "steps=2", "guidance_scale=2.0", "num_samples=2"
    )
    assert info["nfe"] == 4


def test_default_sampler_is_the_methods_own(method_ckpt, tmp_path):
    method, ckpt = method_ckpt
    info = run_sample(ckpt, tmp_path, "steps=1", "num_samples=2")
    assert info["sampler"] == {"ddpm": "dpmpp_2m", "meanflow": "meanflow"}[method]


def test_a_sampler_of_another_method_is_refused_in_one_line(method_ckpt, tmp_path):
    method, ckpt = method_ckpt
    with pytest.raises(SamplerError, match=f"sampler 'euler' does not apply to a '{method}' model") as err:
        run_sample(ckpt, tmp_path, "sampler=euler")
    assert "\n" not in str(err.value)


def test_flow_matching_checkpoint_refuses_diffusion_samplers(tmp_path):
    ckpt = train(compose_config("train", [*TINY_2D, "trainer.max_epochs=1"], tmp_path / "fm"))["last_ckpt"]
    with pytest.raises(SamplerError, match="sampler 'ddim' does not apply to a 'fm' model"):
        run_sample(ckpt, tmp_path / "s", "sampler=ddim")


def test_evaluate_cli_on_each_method_reports_nfe(method_ckpt, tmp_path):
    method, ckpt = method_ckpt
    overrides = [
        f"ckpt_path={ckpt}",
        f"out_dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "steps=[1,2]",
        *FAST_EVAL,
        "phantom_classifier.num_train=64",
        "phantom_classifier.num_val=16",
        "phantom_classifier.epochs=1",
        "cmmd=false",
    ]
    rows = evaluate(compose_config("evaluate", overrides, tmp_path))["results"]
    generated = [r for r in rows if r.get("nfe") is not None]
    expected = {"ddpm": ["dpmpp_2m", "ddim", "ddpm"], "meanflow": ["meanflow"]}[method]
    assert [(r["sampler"], r["nfe"]) for r in generated] == [(s, n) for s in expected for n in (1, 2)]
