"""Measurements run in fp32, the precision the service serves in, whatever autocast surrounds them.

On CUDA, training runs under bf16 autocast (training.device.autocast). The figures written to a
bundle (evaluate), the NSGA search's selections (score) and the DyCE search's recorded confidences
(backbone_features) must not: an enclosing bf16 autocast on the CPU stands in for it here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skipvit.model.gates import SkipAgent
from skipvit.model.policy import StaticPolicy
from skipvit.training.backbone import backbone_features
from skipvit.training.data.base import ArrayData
from skipvit.training.evaluate import evaluate
from skipvit.training.search.nsga_scoring import score

MEAN, STD = (0.3,), (0.3,)


def _data(n: int = 24) -> ArrayData:
    g = torch.Generator().manual_seed(0)
    return ArrayData(torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8), torch.zeros(n))


def _head_dtypes(model) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model.head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_evaluate_measures_in_fp32_under_autocast(tiny_model):
    seen = _head_dtypes(tiny_model)
    data = _data()
    plain = evaluate(tiny_model, data, MEAN, STD, StaticPolicy())
    with _bf16():
        inside = evaluate(tiny_model, data, MEAN, STD, StaticPolicy())
    assert seen and set(seen) == {torch.float32}
    assert torch.equal(plain.predictions, inside.predictions)


def test_nsga_scores_in_fp32_under_autocast(tiny_model):
    cfg = tiny_model.cfg
    tiny_model.attach_agent(SkipAgent(cfg.dim, cfg.depth, init_bias=0.0))
    seen = _head_dtypes(tiny_model)
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(16, dtype=torch.long)
    genes = np.array([[0.5, 0.5, -1, 0.5], [0, 0, 0, 0]])
    plain = score(tiny_model, x, y, genes)
    with _bf16():
        inside = score(tiny_model, x, y, genes)
    assert seen and set(seen) == {torch.float32}
    assert all(torch.equal(a, b) for a, b in zip(plain, inside, strict=True))


def test_exit_features_are_recorded_in_fp32_under_autocast(tiny_model):
    data = _data()
    feats, logits = backbone_features(tiny_model, data, MEAN, STD, [1, 2])
    with _bf16():
        feats_in, logits_in = backbone_features(tiny_model, data, MEAN, STD, [1, 2])
    # bf16 keeps 8 bits of mantissa: any bf16 matmul on the way would change these.
    assert torch.equal(feats, feats_in) and torch.equal(logits, logits_in)


@pytest.mark.gpu
def test_evaluate_on_cuda_matches_fp32(tiny_model):
    data = _data(64)
    cpu = evaluate(tiny_model, data, MEAN, STD, StaticPolicy())
    model = tiny_model.cuda()
    seen = _head_dtypes(model)
    gpu = evaluate(model, data, MEAN, STD, StaticPolicy(), device="cuda")
    assert set(seen) == {torch.float32}
    assert (gpu.predictions == cpu.predictions).float().mean() > 0.95
