"""python -m motfm.bench on tiny configs: the suite alone, against the reference stack, and the skip path."""

import json
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.autograd import DeviceType

import motfm.bench.main as bench_main
from cli_helpers import CONF_DIR
from motfm.bench.candidates import random_batch
from motfm.bench.memory import measure_in_fresh_process, proc_status_kib
from motfm.bench.profile import profile_evaluation, self_us
from motfm.bench.reference import reference_missing
from motfm.data.base import DataSpec

TINY_MODEL = [
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.head_dim=[8,16]",
    "model.norm_groups=4",
    "model.resblock_updown=true",
    "model.transformer_num_layers=2",
    "model.mask_embed_channels=[16]",
    "model.class_dim=4",  # = the phantom's 4 classes: the reference's one-hot context has the same width
]
TINY_CASE = (
    "cases=[{name: tiny, model: unet2d_small, data: echo_phantom, size: 16, batch_size: 2, "
    f"overrides: {json.dumps(['model.conditioning=[class,mask]', *TINY_MODEL])}}}]"
)


def run_bench(tmp_path, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "bench",
            overrides=[
                TINY_CASE,
                "memory3d=null",
                "imported=null",
                "repeats=1",
                "warmup=0",
                "sample_repeats=1",
                "nfe=[1,2]",
                "memory_timeout_s=300",
                "peak_matmul_size=256",
                "peak_warmup_s=0",
                "peak_measure_s=0",
                f"out_dir={tmp_path}",
                *overrides,
            ],
        )
        stem = bench_main.run(cfg)
    return json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".md").read_text()


def fake_memory(monkeypatch):
    """Record the memory jobs instead of starting a process for each (see test_memory_of_a_fresh_process)."""
    jobs = []

    def measure(job, timeout):
        jobs.append(job)
        return {"peak_MiB": 2.0, "model_MiB": 1.0, "step_s": 0.1, "params": 1}

    monkeypatch.setattr(bench_main, "measure_memory", measure)
    return jobs


def test_reference_skipped_with_a_clear_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_main, "reference_missing", lambda: "monai-generative not installed (pip ...)")
    fake_memory(monkeypatch)
    data, md = run_bench(tmp_path, "reference=true", "precisions=[fp32]")
    assert data["machine"]["reference"] is False
    assert "reference skipped: monai-generative not installed" in md
    (result,) = data["results"]
    assert set(result["candidates"]) == {"motfm"}
    ours = result["candidates"]["motfm"]
    assert ours["eval_flops"] > 0 and ours["train_flops"] > 2 * ours["eval_flops"]
    assert [s["nfe"] for s in ours["sampling"]] == [1, 2]


@pytest.mark.skipif(reference_missing() is not None, reason=f"reference stack: {reference_missing()}")
def test_reference_runs_alternating_on_a_tiny_config(tmp_path, monkeypatch):
    jobs = fake_memory(monkeypatch)
    data, md = run_bench(tmp_path, "reference=true", "precisions=[fp32]")
    (result,) = data["results"]
    ours, ref = result["candidates"]["motfm"], result["candidates"]["reference"]
    for c in (ours, ref):
        assert c["eval_s"] > 0 and c["train_step_s"] > 0 and len(c["sampling"]) == 2
    assert [j["side"] for j in jobs] == ["motfm", "reference"]
    # the same architecture: FLOPs of one evaluation agree (the mask embedding reads 4 one-hot channels
    # here, 1 float channel there)
    assert ours["eval_flops"] == pytest.approx(ref["eval_flops"], rel=0.02)
    assert "| tiny | fp32 | 16x16 x 2 |" in md and "ours/ref" in md
    for c in (ours, ref):  # the profile of one evaluation: convolutions among the top operators
        shares = [op["share"] for op in c["eval_profile"]]
        assert 0 < sum(shares) <= 1 + 1e-6 and shares == sorted(shares, reverse=True)
        assert any("conv" in op["op"] for op in c["eval_profile"]), c["eval_profile"]
    assert "## Where one evaluation spends its time" in md and "| kind of work | motfm | reference |" in md


@pytest.mark.skipif(reference_missing() is not None, reason=f"reference stack: {reference_missing()}")
def test_reference_unet_has_the_same_architecture():
    from hydra.utils import instantiate

    from motfm.bench.reference import build_reference_model

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=unet2d_small", "model.conditioning=[class,mask]", *TINY_MODEL]
        )
    spec = DataSpec(2, 1, (16, 16), num_classes=4, num_mask_labels=4)
    model = dict(cfg.model)
    ours = instantiate(cfg.model, _partial_=True)(spec=spec)
    ref, _ = build_reference_model(model, spec, torch.device("cpu"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours.unet) == count(ref.unet)
    # ControlNet: our mask embedding reads 4 one-hot channels (MOTFM: 1 float channel) and our class tokens
    # are a learned table of (classes + null) x class_dim
    assert count(ours.controlnet) - count(ref.controlnet) == 3 * 16 * 9
    batch = random_batch(spec, 2, torch.device("cpu"))
    with torch.no_grad():
        from motfm.bench.reference import reference_inputs

        cond, masks = reference_inputs(batch, spec)
        assert ref(batch["image"], torch.rand(2), cond, masks).shape == batch["image"].shape


def test_fresh_process_memory_reads_procfs():
    rss = proc_status_kib("VmRSS") or 0  # read first: the later high-water mark includes it
    assert (proc_status_kib("VmHWM") or 0) >= rss > 0


@pytest.mark.skipif(reference_missing() is not None, reason=f"reference stack: {reference_missing()}")
def test_memory_of_a_fresh_process(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model=unet2d_small",
                "model.conditioning=[class,mask]",
                *TINY_MODEL,
                "logger=none",
                f"paths.output_dir={tmp_path}",
            ],
        )
    spec = DataSpec(2, 1, (16, 16), num_classes=4, num_mask_labels=4)
    job = bench_main.memory_job("reference", cfg, spec, 2, torch.device("cpu"))
    result = measure_in_fresh_process(job, timeout_s=300)
    assert result["peak_MiB"] > result["model_MiB"] > 0 and result["step_s"] > 0, result


def test_markdown_ratios_auto_check_and_memory_table():
    from motfm.bench.report import to_markdown

    info = {
        "date": "2026-01-01T00:00:00",
        "device": "cpu: test",
        "threads": 2,
        "python": "3.11",
        "torch": "2",
        "lightning": "2",
        "peak_flops": {"fp32": 1e11, "bf16": 2e11},
        "peak_probes": {
            "fp32": {"matmul": 0.9e11, "conv3x3": 1e11, "peak": 1e11},
            "bf16": {"matmul": 2e11, "conv3x3": 1.5e11, "peak": 2e11},
        },
        "precision_auto": {"2d": {"name": "bf16", "reason": "AMX"}, "3d": {"name": "fp32", "reason": "-"}},
        "reference": True,
    }

    def result(precision, eval_s, ref_eval_s):
        side = {
            "params": 1e6,
            "eval_flops": 1e9,
            "train_flops": 3e9,
            "train_step_s": 2.0,
            "notes": [],
            "eval_profile": [{"op": "aten::conv2d", "ms": 30.0, "share": 0.6, "calls": 4}],
            "eval_profile_kinds": [{"kind": "convolution", "ms": 30.0, "share": 0.6}],
        }
        return {
            "case": "c",
            "precision": precision,
            "image_size": [8, 8],
            "batch_size": 2,
            "candidates": {
                "motfm": {
                    **side,
                    "eval_s": eval_s,
                    "sampling": [{"nfe": 1, "seconds": 1.0, "images_per_s": 2}],
                },
                "reference": {
                    **side,
                    "eval_s": ref_eval_s,
                    "train_step_s": 4.0,
                    "sampling": [{"nfe": 1, "seconds": 2.0, "images_per_s": 1}],
                },
            },
        }

    memory = [
        {"model": "m", "size": 32, "side": "motfm", "checkpointing": False, "peak_MiB": 1000, "step_s": 1.0},
        {"model": "m", "size": 32, "side": "motfm", "checkpointing": True, "peak_MiB": 500, "step_s": 1.25},
        {
            "model": "m",
            "size": 32,
            "side": "reference",
            "checkpointing": False,
            "peak_MiB": 1250,
            "step_s": 1.1,
        },
    ]
    md = to_markdown(info, [result("fp32", 0.5, 1.0), result("bf16", 0.4, 1.0)], memory)
    assert "| 500 | 1000 | 0.50 | 2000 | 4000 | 0.50 | 2 (2%) |" in md  # eval and train ours/ref
    assert "| c | fp32 | 1 | 2.00 | 1.00 | 0.50 |" in md  # sampling
    assert "precision=auto on c, evaluation: bf16, 0% slower" in md
    assert "| m | 32³ | fp32 | 1000 | 500 | 1250 | 0.40 | 1.00 / 1.25 / 1.10 | 1.25 |" in md
    memory_only = to_markdown(info, [], memory)  # a run of the 3D memory table alone: no empty speed tables
    assert "| m | 32³ | fp32 | 1000 | 500 | 1250 | 0.40 |" in memory_only and "## Speed" not in memory_only
    assert "| `aten::conv2d` 30 ms (60%) | `aten::conv2d` 30 ms (60%) |" in md  # motfm | reference
    assert "| convolution | 30 ms (60%) | 30 ms (60%) |" in md  # by kind of work


class ProfiledNet(torch.nn.Module):
    """An operator of each kind: convolution, normalisation, activation, layout copy, dtype cast, matmul."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 8)
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.nn.functional.silu(self.norm(self.conv(x)))
        tokens = h.transpose(1, 3).contiguous()  # layout copy
        tokens = tokens.to(torch.float64).to(torch.float32)  # dtype casts
        return self.linear(tokens)


def test_profile_sorts_one_evaluation_by_kind_of_work():
    net, x = ProfiledNet(), torch.randn(2, 8, 32, 32)
    prof = profile_evaluation(lambda: net(x), torch.device("cpu"), top=3)
    assert len(prof["operators"]) == 3
    kinds = {k["kind"]: k for k in prof["kinds"]}
    for kind in ("convolution", "normalisation", "activation", "layout copy", "dtype cast", "matmul"):
        assert kinds[kind]["ms"] > 0, (kind, prof["kinds"])
    assert sum(k["share"] for k in prof["kinds"]) == pytest.approx(1.0)
    assert [k["ms"] for k in prof["kinds"]] == sorted((k["ms"] for k in prof["kinds"]), reverse=True)


def test_profile_counts_kernel_time_once_on_cuda():
    # a CUDA kernel's time is the self device time of the operator that launched it: the kernel's own event
    # must count 0, or every share would be counted twice
    op = SimpleNamespace(device_type=DeviceType.CPU, self_device_time_total=5.0, self_cpu_time_total=2.0)
    kernel = SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=5.0, self_cpu_time_total=0.0)
    assert (self_us(op, cuda=True), self_us(kernel, cuda=True), self_us(op, cuda=False)) == (5.0, 0.0, 2.0)


def test_peak_probes_take_the_better_kernel_and_count_flops():
    from motfm.bench.timing import peak_flops

    probes = peak_flops(torch.device("cpu"), torch.float32, n=64, warmup_s=0.0, measure_s=0.0)
    assert set(probes) == {"matmul", "conv3x3", "peak"}
    assert probes["peak"] == max(probes["matmul"], probes["conv3x3"]) > 0
    # 2 n^3 FLOPs per matmul: a 64x64 matmul cannot take less than a nanosecond nor more than a second
    assert 2 * 64**3 < probes["matmul"] < 2 * 64**3 * 1e9


def test_flops_of_the_onednn_routed_conv3d_are_counted_like_a_convolution():
    from motfm.bench.timing import count_flops
    from motfm.nn.conv3d import Conv3d, routes_to_onednn

    conv = Conv3d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 8, 8, 8)
    assert routes_to_onednn(x, conv)
    expected = 2 * 8 * 4 * 27 * 8**3  # 2 x C_out x C_in x taps x output voxels
    assert count_flops(lambda: conv(x)) == expected
    xg = x.clone().requires_grad_()
    assert count_flops(lambda: conv(xg).sum().backward()) == 3 * expected  # + grad input + grad weight


def test_imported_models_are_timed_against_their_original(tmp_path, monkeypatch):
    import motfm.bench.imported as imported
    from motfm_original import CONFIGS

    fake_memory(monkeypatch)
    monkeypatch.setitem(imported.RELEASED, "tiny", (CONFIGS["mask_class"], (16, 16), 4))
    cases = "imported={cases: [{name: tiny-import, family: tiny, batch_size: 2}], nfe: [2]"
    cases += ", repeats: 1, warmup: 0}"
    data, md = run_bench(tmp_path, "reference=true", "precisions=[fp32]", "cases=[]", cases)
    (row,) = data["imported"]
    assert row["velocity_rel_diff"] < 1e-4  # the import computes the original's velocity
    for side in ("motfm", "reference"):
        c = row["candidates"][side]
        assert c["eval_s"] > 0 and [s["nfe"] for s in c["sampling"]] == [2]
    # a conditioned model: every parameter carried over one for one
    assert row["candidates"]["motfm"]["params"] == row["candidates"]["reference"]["params"]
    assert "## Imported MOTFM models" in md and "| tiny-import | fp32 | 16x16 x 2 |" in md
