"""Non-finite losses and gradients: skipped with a counter, abort after K in a row, never saved."""

import functools

import lightning as L
import pytest
import torch

from motfm.data.datamodule import MotfmDataModule
from motfm.data.phantom import EchoPhantom
from motfm.lit.module import GenerativeModule
from motfm.nn.velocity import build_velocity_net

TINY = dict(channels=(8, 16), num_res_blocks=1, attention_levels=(False, True), head_dim=8, norm_groups=4)


class InfGrad(torch.autograd.Function):
    """Zero in the forward pass, an infinite gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x * 0

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


SGD = functools.partial(torch.optim.SGD, lr=0.1)  # not fused: the host reads the flag and drops the gradients
FUSED_ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)  # skips on the device (found_inf)


def make(tmp_path, bad_steps, kind="loss", max_nonfinite=3, max_steps=6, optimizer=SGD):
    dm = MotfmDataModule(
        functools.partial(EchoPhantom, size=32, num_samples={"train": 32, "val": 4, "test": 4}), batch_size=4
    )
    net = build_velocity_net(dm.spec, **TINY)
    module = GenerativeModule(net, dm.spec, optimizer, max_nonfinite_steps=max_nonfinite)
    real_loss = module.objective.loss

    def loss(net, batch, generator=None, train=True):
        value, logs = real_loss(net, batch, generator, train)
        if train and module.global_step in bad_steps:
            if kind == "loss":
                return value * float("nan"), logs
            return value + InfGrad.apply(
                next(module.net.parameters()).sum()
            ), logs  # finite loss, inf gradient
        return value, logs

    module.objective.loss = loss
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    return dm, module, trainer


@pytest.mark.parametrize("optimizer", [SGD, FUSED_ADAMW], ids=["sgd", "fused_adamw"])
@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, kind, optimizer):
    dm, module, trainer = make(tmp_path, bad_steps={2}, kind=kind, optimizer=optimizer)
    snapshots = {}

    class Snap(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots[trainer.global_step] = [p.detach().clone() for p in pl_module.net.parameters()]

    trainer.callbacks.append(Snap())
    trainer.fit(module, dm)
    assert module.nonfinite_total == 1
    # the bad step changed no weight; the good ones did
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    if optimizer is FUSED_ADAMW:  # the skipped step is not counted in Adam's bias correction either
        state = trainer.optimizers[0].state[next(module.net.parameters())]
        assert int(state["step"]) == trainer.global_step - 1


def test_consecutive_nonfinite_steps_abort_with_message(tmp_path):
    dm, module, trainer = make(tmp_path, bad_steps={1, 2, 3, 4, 5}, kind="gradient", max_nonfinite=3)
    with pytest.raises(
        FloatingPointError, match=r"3 consecutive steps with a non-finite loss or gradient \(last at step 3"
    ):
        trainer.fit(module, dm)


def test_nonfinite_model_is_never_saved(tmp_path):
    dm, module, _ = make(tmp_path, bad_steps=set())
    with torch.no_grad():
        next(module.net.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="refusing to save"):
        module.on_save_checkpoint({})
