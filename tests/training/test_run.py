"""The run scaffold: counted steps with --stop-after and --resume, checkpointed epochs that refuse
other settings, and one epoch of augmented training batches."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from skipvit.training.data.augment import AugmentConfig
from skipvit.training.data.base import ArrayData, DatasetInfo
from skipvit.training.run import Progress, RunContext, train_batches


def test_progress_stops_after_n_steps_and_resumes_where_it_stopped(capsys):
    p = Progress(5, 2, "epoch", "checkpoint in d")
    for step in p:
        rec = p.record({"epoch": step + 1})
        assert rec["epoch"] == step + 1 and rec["elapsed_s"] >= 0
    assert [h["epoch"] for h in p.history] == [1, 2] and p.done == 2 and not p.finished()
    assert "stopped after epoch 2/5; continue with --resume (checkpoint in d)" in capsys.readouterr().out
    later = Progress(5, None, "generation", "state in d")
    later.resume(2, p.elapsed, list(p.history))
    for step in later:
        later.record({"epoch": step + 1})
    assert later.done == 5 and len(later.history) == 5 and later.finished()
    done = Progress(3, 4, "epoch", "x")
    done.resume(3, 0.0, [])
    assert list(done) == [] and done.finished()


def _ctx(tmp_path, **kw) -> RunContext:
    args = argparse.Namespace(device="cpu", seed=0, ckpt_dir=str(tmp_path), resume=False, stop_after=None)
    for k, v in kw.items():
        setattr(args, k, v)
    return RunContext.start(args, "unused")


def _train(ctx: RunContext, config: dict) -> tuple[nn.Module, list[dict]]:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = ctx.epochs(model, opt, 3, config)
    for epoch in runner:
        x = torch.randn(8, 3, generator=runner.g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        runner.step += 1
        runner.end_epoch_with({"epoch": epoch + 1, "loss": loss.item()})
    return (model if runner.finished() else None), runner.history


def test_epochs_resume_to_the_same_weights_and_refuse_other_settings(tmp_path, capsys):
    whole, history = _train(_ctx(tmp_path / "a"), {"lr": 0.1})
    assert _train(_ctx(tmp_path / "b", stop_after=2), {"lr": 0.1})[0] is None
    assert "stopped after epoch 2/3" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"other settings \(lr\).*Hint"):
        _train(_ctx(tmp_path / "b", resume=True), {"lr": 0.2})
    resumed, again = _train(_ctx(tmp_path / "b", resume=True), {"lr": 0.1})
    assert "resumed from" in capsys.readouterr().out
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
    assert [h["loss"] for h in again] == [h["loss"] for h in history]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _train(_ctx(tmp_path / "none", resume=True), {"lr": 0.1})


def test_train_batches_cover_the_data_once_in_a_seeded_order():
    data = ArrayData(
        torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).clone(), torch.arange(10)
    )
    info = DatasetInfo("t", tuple("abcdefghij"), 4, 1, (0.0,), (1.0,), hflip=False)
    plain = AugmentConfig(crop_padding=0, hflip=False, erase_prob=0.0)

    def labels(seed):
        g = torch.Generator().manual_seed(seed)
        batches = list(train_batches(data, info, 4, plain, g, torch.device("cpu"), "t"))
        assert [len(y) for _, y in batches] == [4, 4, 2]
        for x, y in batches:  # no augmentation: each image is its label's value, normalised
            assert x.shape[1:] == (1, 4, 4) and torch.allclose(x[:, 0, 0, 0], y.float() / 255)
        return torch.cat([y for _, y in batches]).tolist()

    assert sorted(labels(0)) == list(range(10)) and labels(0) == labels(0) != labels(1)
