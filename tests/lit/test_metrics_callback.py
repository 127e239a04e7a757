import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cli_helpers import TINY_2D, compose_config
from motfm.lit.metrics_callback import FeatureDistances, MetricsCallback
from motfm.metrics.extractors import ExtractorUnavailable
from motfm.metrics.frechet import fid_from_features
from motfm.train import train


def _features(seed: int, n: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)) + shift


def test_feature_distances_merge_equals_single_process() -> None:
    real, fake = _features(0, 20), _features(1, 20, shift=0.5)
    single = FeatureDistances(kid_subsets=10)
    ranks = [FeatureDistances(kid_subsets=10) for _ in range(2)]
    shards = [list(range(r, 20, 2)) for r in range(2)], [list(range(r, 20, 2)) for r in range(2)]
    for r, metric in enumerate(ranks):  # rank r holds the indices r::2 of both sets
        metric.update(real[shards[0][r]], real=True)
        metric.update(fake[shards[1][r]], real=False)
    ranks[0].merge_state(ranks[1])  # what the "cat" reduction gathers (KID: subsets of all rows, any order)
    single.update(torch.cat([real[s] for s in shards[0]]), real=True)
    single.update(torch.cat([fake[s] for s in shards[1]]), real=False)
    merged, expected = ranks[0].compute(), single.compute()
    assert merged["fid"] == pytest.approx(float(expected["fid"]), rel=1e-12)
    assert merged["fid"] == pytest.approx(fid_from_features(real, fake), rel=1e-9)
    assert merged["kid"] == pytest.approx(float(expected["kid"]), rel=1e-12) and merged["kid"] > 0
    ranks[0].reset()
    assert ranks[0].real_features == [] and ranks[0].fake_features == []


def _gloo_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = FeatureDistances(kid_subsets=10, kid_subset_size=8)
        metric.update(_features(0, 20)[rank::world], real=True)
        metric.update(_features(1, 17, shift=0.5)[rank::world], real=False)  # uneven shards: 9 and 8
        values = metric.compute()
        if rank == 0:
            torch.save({k: float(v) for k, v in values.items()}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_feature_distances_gather_over_two_processes(tmp_path) -> None:
    out = tmp_path / "values.pt"
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    values = torch.load(out, weights_only=True)
    assert values["fid"] == pytest.approx(
        fid_from_features(_features(0, 20), _features(1, 17, shift=0.5)), rel=1e-9
    )


def test_callback_logs_fid_kid_dice_in_tiny_fit(tmp_path) -> None:
    overrides = [
        *TINY_2D,
        "model.conditioning=[mask]",
        "callbacks=with_metrics",
        "callbacks.metrics.extractor=random_conv",
        "callbacks.metrics.every_n_epochs=1",
        "callbacks.metrics.num_samples=4",
        "callbacks.metrics.steps=[1,2]",
        "callbacks.metrics.kid_subsets=5",
        "callbacks.sample_grid.num_samples=2",
        "callbacks.sample_grid.steps=1",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
    ]
    result = train(compose_config("train", overrides, tmp_path))
    metrics = result["metrics"]
    for k in (1, 2):
        assert {f"val/fid@steps={k}", f"val/kid@steps={k}", f"val/dice@steps={k}"} <= set(metrics)
        assert metrics[f"val/fid@steps={k}"] > 0 and 0 <= metrics[f"val/dice@steps={k}"] <= 1
    logged = (tmp_path / "csv").rglob("metrics.csv")
    assert any("val/fid@steps=1" in p.read_text().splitlines()[0] for p in logged)


def test_callback_rejects_bad_arguments_and_missing_extractor(tmp_path) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        MetricsCallback(num_samples=1)
    callback = MetricsCallback(extractor="clip", extractor_kwargs={"model_path": str(tmp_path / "none")})

    class Module:
        spec = type("Spec", (), {"spatial_dims": 2})()

    with pytest.raises(ExtractorUnavailable):
        callback.setup(None, Module(), "fit")
