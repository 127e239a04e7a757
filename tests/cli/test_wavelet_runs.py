"""``representation=haar`` end to end: every method trains on coefficients and samples images; the band
scales travel with checkpoints, resumed runs and exported models; old pixel checkpoints still load."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import motfm
from cli_helpers import CONF_DIR, FAST_EVAL, TINY_2D, TINY_3D, compose_config
from motfm.checkpoint import read_checkpoint
from motfm.conditions import Conditions
from motfm.data.phantom import BrainPhantom, EchoPhantom
from motfm.evaluate import evaluate
from motfm.export_model import export_model
from motfm.loading import load_model
from motfm.reflow import generate_pairs
from motfm.representation import HaarRepresentation, PixelRepresentation
from motfm.sample import generate_batch
from motfm.train import train
from tiny_ckpt import tiny_checkpoint

STEPS = ["trainer.max_steps=2", "trainer.max_epochs=-1", "~callbacks.sample_grid", "representation=haar"]
COND = "model.conditioning=[class,mask]"
EVAL_FAST = [
    *FAST_EVAL,
    "phantom_classifier.num_train=64",
    "phantom_classifier.num_val=16",
    "phantom_classifier.epochs=1",
    "steps=[2]",
    "samplers=[euler]",
]


def conditions(n: int) -> Conditions:
    ds = BrainPhantom("val", size=16, num_samples=n)
    labels = torch.stack([ds[i]["label"] for i in range(n)])
    return Conditions(labels, torch.stack([ds[i]["mask"] for i in range(n)]))


@pytest.fixture(scope="module")
def haar_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("haar3d")
    return train(compose_config("train", [*TINY_3D, *STEPS, COND, "trainer.precision=32-true"], out))[
        "last_ckpt"
    ]


def test_checkpoint_records_the_representation_and_its_band_scales(haar_ckpt):
    ckpt = read_checkpoint(haar_ckpt)
    stored = ckpt["motfm"]["representation"]
    assert (stored["kind"], stored["levels"], len(stored["scale"])) == ("haar", 1, 8)
    assert max(stored["scale"]) > 1.5 * min(stored["scale"])  # estimated from the data, not the ones
    torch.testing.assert_close(ckpt["state_dict"]["representation.scale"], torch.tensor(stored["scale"]))
    model = load_model(haar_ckpt)
    assert isinstance(model.representation, HaarRepresentation)
    assert model.net.unet.cfg.in_channels == 8  # the network runs on the 8 sub-bands at half the side


def test_samples_are_decoded_volumes_of_the_data_shape(haar_ckpt):
    model = load_model(haar_ckpt)
    images, nfe, _ = generate_batch(model, [0, 1], 3, "euler", 2, conditions(2), guidance_scale=2.0)
    assert images.shape == (2, 1, 16, 16, 16) and nfe == 4
    assert torch.isfinite(images).all() and images.abs().max() <= 1


def test_resume_restores_the_band_scales(haar_ckpt, tmp_path):
    first = read_checkpoint(haar_ckpt)["motfm"]["representation"]["scale"]
    overrides = [*TINY_3D, *STEPS, COND, "trainer.max_steps=3", "trainer.precision=32-true"]
    result = train(compose_config("train", [*overrides, f"ckpt_path={haar_ckpt}"], tmp_path))
    assert result["global_step"] == 3
    assert read_checkpoint(result["last_ckpt"])["motfm"]["representation"]["scale"] == first


def test_export_and_load_pretrained_sample_what_the_checkpoint_samples(haar_ckpt, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        export_model(compose("export_model", overrides=[f"ckpt_path={haar_ckpt}", f"out={tmp_path}"]))
    gen = motfm.load_pretrained(tmp_path)
    assert gen.model.representation.to_dict() == read_checkpoint(haar_ckpt)["motfm"]["representation"]
    cond = conditions(2)
    x = gen.sample(2, steps=2, labels=cond.labels, masks=cond.masks, seed=5)
    reference = generate_batch(load_model(haar_ckpt), [0, 1], 5, "euler", 2, cond)[0]
    assert x.shape == (2, 1, 16, 16, 16)
    torch.testing.assert_close(x, reference, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("method", "tiny", "levels", "precision"),
    [
        ("fm", TINY_2D, 2, "bf16-mixed"),  # fm in fp32, 3D, one level: the haar_ckpt fixture
        ("ddpm", TINY_2D, 2, "32-true"),
        ("meanflow", TINY_3D, 1, "bf16-mixed"),
    ],
)
def test_each_method_trains_on_coefficients_and_samples_images(tmp_path, method, tiny, levels, precision):
    overrides = [*tiny, *STEPS, f"method={method}", f"representation.levels={levels}"]
    cfg = compose_config("train", [*overrides, f"trainer.precision={precision}"], tmp_path)
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    model = load_model(result["last_ckpt"])
    spec = model.spec
    assert model.net.unet.cfg.in_channels == 2 ** (spec.spatial_dims * levels)
    sampler = model.objective.default_samplers[0]
    bf16 = "bf16" if precision == "bf16-mixed" else "fp32"
    images, _, _ = generate_batch(model, [0, 1], 0, sampler, 2, Conditions(None, None), 1.0, bf16)
    assert images.shape == (2, spec.channels, *spec.image_size) and torch.isfinite(images).all()


def test_a_pixel_checkpoint_without_a_representation_record_still_loads(tmp_path_factory, tmp_path):
    result = {"last_ckpt": tiny_checkpoint(tmp_path_factory)}  # the session's shared pixel model
    ckpt = torch.load(result["last_ckpt"], weights_only=True)
    del ckpt["motfm"]["representation"]  # as written before representations existed
    torch.save(ckpt, tmp_path / "old.ckpt")
    model = load_model(tmp_path / "old.ckpt")
    assert isinstance(model.representation, PixelRepresentation)
    echo = EchoPhantom("val", size=32, num_samples=1)[0]
    conditions = Conditions(echo["label"][None], echo["mask"][None])
    images, _, _ = generate_batch(model, [0], 0, "euler", 1, conditions)
    assert images.shape == (1, 1, 32, 32)


@pytest.mark.slow  # the phantom classifier is trained for the class-conditioned model: ~20 s
def test_evaluate_scores_the_decoded_volumes_with_high_frequency_fidelity(haar_ckpt, tmp_path):
    overrides = [*EVAL_FAST, f"ckpt_path={haar_ckpt}", f"out_dir={tmp_path}", f"paths.cache_dir={tmp_path}"]
    result = evaluate(compose_config("evaluate", overrides, tmp_path))
    (row,) = result["results"]
    assert row["num_fake"] == 4 and row["nfe"] == 2
    for key in ("fid", "mmd_rbf", "ms_ssim", "psd_hf_log_error", "psd_hf_ratio", "dice"):
        assert isinstance(row[key], float), key
    assert row["psd_hf_ratio"] > 0 and 0 <= row["dice"] <= 1


def test_reflow_pairs_hold_coefficient_noise_and_the_student_keeps_its_teachers_scales(haar_ckpt, tmp_path):
    pairs = tmp_path / "pairs"
    args = [f"ckpt_path={haar_ckpt}", f"out_dir={pairs}", "num_pairs=6", "batch_size=3", "steps=2"]
    generate_pairs(compose_config("reflow", args, pairs))
    shard = torch.load(pairs / "parts" / "part_000000.pt", weights_only=True)
    assert shard["noise"].shape == (3, 8, 8, 8, 8) and shard["images"].shape == (3, 1, 16, 16, 16)
    tiny = [o for o in TINY_3D if not o.startswith(("data=", "data.dataset."))]
    student = [
        *tiny,
        COND,
        "method=reflow",
        "data=pairs",
        f"data.dataset.root={pairs}",
        f"init_ckpt={haar_ckpt}",
    ]
    student += ["data.dataset.val_fraction=0.34", "trainer.precision=32-true", *STEPS]
    result = train(compose_config("train", student, tmp_path / "student"))
    stored = read_checkpoint(result["last_ckpt"])["motfm"]["representation"]
    assert stored == read_checkpoint(haar_ckpt)["motfm"]["representation"]
    pixel = [*student[:-1], "representation=pixel", "init_ckpt=null"]  # STEPS ends with representation=haar
    with pytest.raises(ValueError, match="train the student with its teacher's representation") as err:
        train(compose_config("train", pixel, tmp_path / "pixel"))
    assert "\n" not in str(err.value)


def test_an_image_size_the_levels_cannot_halve_is_refused_in_one_line(tmp_path):
    overrides = [*TINY_2D, "data.dataset.size=34", "representation=haar", "representation.levels=2"]
    with pytest.raises(ValueError, match=r"divisible by 4; got image size \(34, 34\)") as err:
        train(compose_config("train", overrides, tmp_path))
    assert "\n" not in str(err.value)
