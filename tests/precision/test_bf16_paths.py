"""Every precision-dependent path run in forced bf16 on tiny configs, whatever the CPU.

The rest of the suite runs ``precision=auto`` as a CPU without native bf16 would (fp32; see conftest), so
that no test depends on the machine that runs it; users' GPUs and AMX / AVX512-BF16 servers take the bf16
paths, which these tests force: ``trainer.precision=bf16-mixed`` for training, ``precision=bf16`` for
sampling, evaluation, reflow pairs, the audit, downstream generation and exports. On a CPU without native
bf16 oneDNN emulates it (slowly: the networks here are tiny).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_helpers import FAST_EVAL, TINY_2D, TINY_3D, compose_config, run_cli
from motfm.audit import audit
from motfm.checkpoint import read_checkpoint
from motfm.conditions import Conditions
from motfm.data.phantom import EchoPhantom
from motfm.evaluate import evaluate
from motfm.loading import load_model
from motfm.objectives.base import SamplerOptions
from motfm.reflow import generate_pairs
from motfm.sample import generate_batch, sample
from motfm.train import train

pytestmark = pytest.mark.bf16

BF16 = "trainer.precision=bf16-mixed"
MASK_CLASS = "model.conditioning=[class,mask]"
SAMPLERS = {  # (sampler, steps, NFE): the fewest steps that run each one's every stage
    "fm": [("euler", 1, 1), ("heun", 2, 3), ("midpoint", 1, 2), ("rk4", 1, 3), ("dopri5", None, None)],
    "ddpm": [("ddpm", 2, 2), ("ddim", 2, 2), ("dpmpp_2m", 2, 2)],
    "meanflow": [("meanflow", 2, 2)],
}


def train_bf16(out, *overrides):
    return train(compose_config("train", [*TINY_2D, BF16, MASK_CLASS, *overrides], out))


@pytest.fixture(scope="module", params=["fm", "ddpm", "meanflow"])
def bf16_ckpt(request, tmp_path_factory):
    """A tiny mask + class model of each method, 2 steps in bf16-mixed (default optimiser, clipping)."""
    out = tmp_path_factory.mktemp(f"bf16-{request.param}")
    result = train_bf16(out, f"method={request.param}", "trainer.max_steps=2")
    assert result["global_step"] == 2 and np.isfinite(result["metrics"]["train/loss"])
    return request.param, result["last_ckpt"]


def test_each_method_trains_in_bf16_mixed_2d(bf16_ckpt):
    method, ckpt = bf16_ckpt
    state = read_checkpoint(ckpt)
    assert (
        state["motfm"]["method"] == method
        and state["motfm"]["config"]["trainer"]["precision"] == "bf16-mixed"
    )
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("method", ["fm", "ddpm", "meanflow"])
def test_each_method_trains_in_bf16_mixed_3d(tmp_path, method):
    cfg = compose_config(
        "train", [*TINY_3D, BF16, MASK_CLASS, f"method={method}", "trainer.max_steps=2"], tmp_path
    )
    result = train(cfg)
    assert result["global_step"] == 2 and np.isfinite(result["metrics"]["train/loss"])


def test_the_demo_command_in_bf16_mixed(tmp_path):
    """The README's demo training, as a user on a bf16 machine runs it (data and width shrunk for time;
    MeanFlow's bf16 training runs in process above)."""
    args = [
        "experiment=demo",
        BF16,
        "trainer.max_steps=3",
        "trainer.max_time=null",
        "method=fm",
        "model.conditioning=[class,mask]",
        "model.channels=[8,16]",
        "model.attention_levels=[false,true]",
        "model.norm_groups=4",
        "model.head_dim=8",
        "data.dataset.size=32",
        "data.dataset.num_samples={train:12,val:4,test:4}",
        "data.batch_size=4",
        "callbacks.sample_grid.num_samples=2",
        "callbacks.sample_grid.steps=1",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = run_cli("motfm.train", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_resume_in_bf16_mixed(bf16_ckpt, tmp_path):
    method, ckpt = bf16_ckpt
    if method != "fm":
        pytest.skip("one method suffices: resume does not depend on it")
    result = train_bf16(tmp_path, "trainer.max_steps=3", f"ckpt_path={ckpt}")
    assert read_checkpoint(result["last_ckpt"])["global_step"] == 3


def test_reflow_student_trains_in_bf16_from_bf16_pairs(bf16_ckpt, tmp_path):
    method, teacher = bf16_ckpt
    if method != "fm":
        pytest.skip("reflow takes a flow-matching teacher")
    pairs = tmp_path / "pairs"
    args = [
        f"ckpt_path={teacher}",
        f"out_dir={pairs}",
        "num_pairs=4",
        "batch_size=4",
        "steps=1",
        "precision=bf16",
    ]
    info = generate_pairs(compose_config("reflow", args, pairs))
    assert info["precision"] == "bf16" and info["num_pairs"] == 4
    for objective in ("reflow", "reflow_distill"):
        overrides = [
            o for o in TINY_2D if not o.startswith("data.dataset.size") and "num_samples" not in o
        ] + [
            "method=reflow",
            "data=pairs",
            f"data.dataset.root={pairs}",
            "data.dataset.val_fraction=0.25",
            "data.batch_size=2",
            f"init_ckpt={teacher}",
            MASK_CLASS,
            BF16,
            "trainer.max_steps=1",
        ]
        if objective == "reflow_distill":
            overrides.append("method.distill=true")
        result = train(compose_config("train", overrides, tmp_path / objective))
        assert result["global_step"] == 1 and np.isfinite(result["metrics"]["train/loss"])


def run_sample(ckpt, out, *overrides):
    return sample(compose_config("sample", [f"ckpt_path={ckpt}", f"out_dir={out}", *overrides], out))


def test_every_sampler_in_bf16_is_close_to_fp32(bf16_ckpt):
    method, ckpt = bf16_ckpt
    model = load_model(ckpt)
    ds = EchoPhantom("val", size=32, num_samples=2)
    conditions = Conditions(
        torch.stack([ds[i]["label"] for i in range(2)]), torch.stack([ds[i]["mask"] for i in range(2)])
    )
    options = SamplerOptions(rtol=0.05, atol=0.05)  # dopri5: bf16 rounding would shrink its steps forever
    for sampler, steps, nfe in SAMPLERS[method]:
        out = {p: generate_batch(model, [0, 1], 0, sampler, steps, conditions, precision=p, options=options)
               for p in ("fp32", "bf16")}  # fmt: skip
        if nfe is not None:
            assert out["bf16"][1] == out["fp32"][1] == nfe
        assert torch.isfinite(out["bf16"][0]).all()
        # bf16 rounds v to 8 bits of mantissa: a few steps stay within a few hundredths of fp32
        assert (out["bf16"][0] - out["fp32"][0]).abs().max() < 0.15, (method, sampler)


def test_cuda_graph_and_compile_fallbacks_in_bf16(bf16_ckpt, tmp_path):
    method, ckpt = bf16_ckpt
    if method != "fm":
        pytest.skip("the wrappers do not depend on the method")
    eager = run_sample(ckpt, tmp_path / "eager", "steps=2", "num_samples=2", "precision=bf16")
    graphs = run_sample(
        ckpt, tmp_path / "graphs", "steps=2", "num_samples=2", "precision=bf16", "cuda_graphs=true"
    )
    assert graphs["precision"] == eager["precision"] == "bf16"
    a, b = (np.load(tmp_path / n / "samples.npz")["images"] for n in ("eager", "graphs"))
    assert np.array_equal(a, b)  # on a CPU, cuda_graphs=true falls back to the eager network


def test_evaluate_and_audit_in_bf16(bf16_ckpt, tmp_path):
    method, ckpt = bf16_ckpt
    if method == "ddpm":
        pytest.skip("fm and meanflow cover the evaluation's precision path")
    overrides = [
        f"ckpt_path={ckpt}",
        f"out_dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "steps=[1]",
        *FAST_EVAL,
        "phantom_classifier.num_train=32",
        "phantom_classifier.num_val=8",
        "phantom_classifier.epochs=1",
        "cmmd=false",
        "precision=bf16",
    ]
    result = evaluate(compose_config("evaluate", overrides, tmp_path))
    rows = [r for r in result["results"] if r.get("nfe") is not None]
    assert rows and all(np.isfinite(r["fid"]) for r in rows)
    assert "bf16" in json.dumps(result)
    out = tmp_path / "audit"
    args = [
        f"ckpt_path={ckpt}",
        f"out_dir={out}",
        "num_samples=6",
        "steps=1",
        "precision=bf16",
        "extractor=random_conv",
        "closest_pairs=3",
        "batch_size=8",
        "load_batch_size=16",
    ]
    report = audit(compose_config("audit", args, out))
    assert "bf16" in json.dumps(report)


def test_exports_in_bf16(bf16_ckpt, tmp_path):
    method, ckpt = bf16_ckpt
    if method != "fm":
        pytest.skip("exports do not depend on the method")
    info = run_sample(ckpt, tmp_path / "nnunet", "steps=2", "num_samples=3", "batch_size=2", "precision=bf16",
                      "export=nnunet")  # fmt: skip
    assert info["precision"] == "bf16"
    assert len(list((tmp_path / "nnunet").rglob("*.nii.gz"))) >= 3


def test_downstream_generation_in_bf16(bf16_ckpt):
    method, ckpt = bf16_ckpt
    if method != "fm":
        pytest.skip("one method suffices")
    from motfm.downstream.items import real_items
    from motfm.downstream.synthetic import synthetic_items

    model = load_model(ckpt)
    conditions = real_items(EchoPhantom("train", size=32, num_samples=4), [0, 1, 2])
    items, info = synthetic_items(model, conditions, "euler", 2, seed=0, batch_size=2, precision="bf16")
    assert info["precision"] == "bf16" and items.images.dtype == torch.float32
    assert torch.isfinite(items.images).all() and len(items) == 3
